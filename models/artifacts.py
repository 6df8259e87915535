"""Saving and loading model artefacts safely: a manifest, digests, and no pickles.

Every model directory holds its files plus ``manifest.json``, which names each file,
its format and its sha256 digest. Loading goes through :func:`load_artifacts`, which
hands back the *verified bytes* of every listed file, so a scorer parses exactly what
was checked (no second read a swapped file could slip into). It refuses:

- a directory without a manifest, or a manifest that is not the expected kind;
- a file whose format is not on :data:`FORMATS`, whose name ends like a pickle
  (``.pkl``, ``.joblib``, ``.pt``...), or whose bytes look like a pickle or do not
  start the way their declared format starts (``UnsafeArtifactError``);
- a file whose digest differs from the recorded one (``ArtifactDigestError``).

The manifest is written last, so a half-written directory is refused, not half-loaded.
Pin :func:`manifest_digest` in the model registry to pin the whole directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fraudstream.errors import ArtifactDigestError, UnsafeArtifactError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

# Declared format -> the file-name endings it may carry. Anything else is refused.
FORMATS: dict[str, tuple[str, ...]] = {
    "json": (".json",),
    "toml": (".toml",),
    "npz": (".npz",),
    "xgboost-ubj": (".ubj",),
    "xgboost-json": (".json",),
    "onnx": (".onnx",),
}

# Endings of formats that execute code when loaded (pickle and its wrappers).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".sav", ".dill", ".ckpt")

_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    format: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    kind: str
    files: tuple[ArtifactFile, ...]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifacts(directory: Path, kind: str, files: Mapping[str, tuple[str, bytes]]) -> Manifest:
    """Write ``files`` (name -> (format, bytes)) and then the manifest into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    entries: list[ArtifactFile] = []
    for name, (fmt, data) in sorted(files.items()):
        path = directory / name
        # Saving runs the same checks as loading, so nothing unloadable is ever written.
        _check_entry(path, name, fmt, data)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(ArtifactFile(name, fmt, sha256_hex(data), len(data)))
    manifest = Manifest(kind, tuple(entries))
    (directory / MANIFEST_NAME).write_bytes(_manifest_bytes(manifest))
    return manifest


def load_artifacts(directory: Path, kind: str) -> dict[str, bytes]:
    """The verified bytes of every file the manifest lists, by name."""
    manifest = read_manifest(directory, kind)
    out: dict[str, bytes] = {}
    for entry in manifest.files:
        path = directory / entry.name
        if path.is_symlink() or not path.is_file():
            raise UnsafeArtifactError(str(path), "listed in the manifest but not a regular file")
        data = path.read_bytes()
        _check_entry(path, entry.name, entry.format, data)
        actual = sha256_hex(data)
        if actual != entry.sha256:
            raise ArtifactDigestError(str(path), entry.sha256, actual)
        out[entry.name] = data
    return out


def read_manifest(directory: Path, kind: str) -> Manifest:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise UnsafeArtifactError(str(directory), f"no {MANIFEST_NAME}; refusing an unlisted model")
    try:
        raw = json.loads(path.read_bytes())
        if raw["manifest_version"] != MANIFEST_VERSION:
            raise ValueError(f"manifest_version {raw['manifest_version']!r} is not supported")
        files = tuple(
            ArtifactFile(str(f["name"]), str(f["format"]), str(f["sha256"]), int(f["size"]))
            for f in raw["files"]
        )
        manifest = Manifest(str(raw["kind"]), files)
    except (ValueError, KeyError, TypeError) as exc:
        raise UnsafeArtifactError(str(path), f"malformed manifest: {exc}") from exc
    if manifest.kind != kind:
        raise UnsafeArtifactError(str(directory), f"holds a {manifest.kind!r} model, not {kind!r}")
    if not manifest.files:
        raise UnsafeArtifactError(str(path), "manifest lists no files")
    return manifest


def manifest_digest(directory: Path) -> str:
    """sha256 of the manifest: one value that pins every file of the model."""
    return sha256_hex((directory / MANIFEST_NAME).read_bytes())


def looks_like_pickle(data: bytes) -> bool:
    """Pickle protocol 2+ headers, or a zip (torch.save) that carries a pickle inside."""
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    if data.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return False
        return any(n.endswith((".pkl", "/data.pkl")) for n in names)
    return False


def _check_entry(path: Path, name: str, fmt: str, data: bytes) -> None:
    parts = name.split("/")
    if not all(_SAFE_PART.match(p) for p in parts) or any(p in (".", "..") for p in parts):
        raise UnsafeArtifactError(str(path), f"file name {name!r} is not a plain relative name")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeArtifactError(str(path), "pickle-family files are never loaded")
    suffixes = FORMATS.get(fmt)
    if suffixes is None:
        raise UnsafeArtifactError(str(path), f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    if not name.endswith(suffixes):
        raise UnsafeArtifactError(str(path), f"a {fmt} file must end with {' or '.join(suffixes)}")
    if looks_like_pickle(data):
        raise UnsafeArtifactError(str(path), "content is a pickle")
    if not _starts_like(fmt, data):
        raise UnsafeArtifactError(str(path), f"content does not look like {fmt}")


def _is_json(data: bytes) -> bool:
    return data.lstrip()[:1] in (b"{", b"[")


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def _starts_like(fmt: str, data: bytes) -> bool:
    checks: dict[str, Callable[[bytes], bool]] = {
        "json": _is_json,
        "xgboost-json": _is_json,
        "toml": _is_text,
        "xgboost-ubj": lambda d: d[:1] == b"{",
        # ModelProto field 1 (ir_version, varint) comes first in every serialiser we use.
        "onnx": lambda d: d[:1] == b"\x08",
        "npz": _is_plain_npz,
    }
    check = checks.get(fmt)
    return check is not None and check(data)


def _is_plain_npz(data: bytes) -> bool:
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return False
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return False
    return all(n.endswith(".npy") for n in names)


def _manifest_bytes(manifest: Manifest) -> bytes:
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "kind": manifest.kind,
        "files": [
            {"name": f.name, "format": f.format, "sha256": f.sha256, "size": f.size}
            for f in manifest.files
        ],
    }
    return json_bytes(doc)


# --- helpers for the formats scorers write themselves ---------------------------------


def json_bytes(obj: Any) -> bytes:
    """Deterministic JSON: the same parameters always give the same bytes and digest."""
    return (json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n").encode("utf-8")


def parse_json(data: bytes, name: str = "params.json") -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise UnsafeArtifactError(name, f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise UnsafeArtifactError(name, "expected a JSON object")
    return doc


def npz_bytes(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    for key, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"array {key!r} holds Python objects; store plain numbers or strings")
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def parse_npz(data: bytes, name: str = "arrays.npz") -> dict[str, npt.NDArray[Any]]:
    """Arrays from NPZ bytes; object arrays (which need unpickling) are refused."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise UnsafeArtifactError(name, f"refusing NPZ content: {exc}") from exc
