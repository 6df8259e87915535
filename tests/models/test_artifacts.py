from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.errors import ArtifactDigestError, UnsafeArtifactError
from models.artifacts import (
    FORMATS,
    MANIFEST_NAME,
    json_bytes,
    load_artifacts,
    looks_like_pickle,
    manifest_digest,
    npz_bytes,
    parse_npz,
    save_artifacts,
)


def _files() -> dict[str, tuple[str, bytes]]:
    return {
        "params.json": ("json", json_bytes({"a": 1, "b": [1.5, 2.5]})),
        "arrays.npz": ("npz", npz_bytes({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})),
        "rules.toml": ("toml", b'[rule]\nname = "x"\n'),
    }


def test_round_trip_returns_the_written_bytes(tmp_path: Path) -> None:
    files = _files()
    save_artifacts(tmp_path, "demo", files)
    loaded = load_artifacts(tmp_path, "demo")
    assert loaded == {name: data for name, (_, data) in files.items()}
    np.testing.assert_array_equal(
        parse_npz(loaded["arrays.npz"])["w"], np.arange(6, dtype=np.float32).reshape(2, 3)
    )


def test_digest_mismatch_names_the_file_and_both_digests(tmp_path: Path) -> None:
    save_artifacts(tmp_path, "demo", _files())
    (tmp_path / "params.json").write_bytes(json_bytes({"a": 2, "b": [1.5, 2.5]}))
    with pytest.raises(ArtifactDigestError) as info:
        load_artifacts(tmp_path, "demo")
    assert info.value.path.endswith("params.json")
    assert info.value.expected != info.value.actual


def test_manifest_digest_pins_every_file(tmp_path: Path) -> None:
    save_artifacts(tmp_path / "a", "demo", _files())
    changed = _files() | {"rules.toml": ("toml", b'[rule]\nname = "y"\n')}
    save_artifacts(tmp_path / "b", "demo", changed)
    save_artifacts(tmp_path / "c", "demo", _files())
    assert manifest_digest(tmp_path / "a") != manifest_digest(tmp_path / "b")
    assert manifest_digest(tmp_path / "a") == manifest_digest(tmp_path / "c")


def test_wrong_kind_is_refused(tmp_path: Path) -> None:
    save_artifacts(tmp_path, "xgboost", _files())
    with pytest.raises(UnsafeArtifactError, match="xgboost"):
        load_artifacts(tmp_path, "iforest")


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("model.pkl", "json"),
        ("model.joblib", "npz"),
        ("weights.pt", "npz"),
        ("model.bin", "pickle"),
        ("model.json", "onnx"),
        ("../escape.json", "json"),
        ("/abs.json", "json"),
        ("sub/../x.json", "json"),
    ],
)
def test_unsafe_names_and_formats_are_never_written(tmp_path: Path, name: str, fmt: str) -> None:
    with pytest.raises(UnsafeArtifactError):
        save_artifacts(tmp_path, "demo", {name: (fmt, b"{}")})
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_a_failed_save_leaves_no_manifest_so_nothing_half_written_loads(tmp_path: Path) -> None:
    files = {"a.json": ("json", b"{}"), "b.json": ("json", pickle.dumps({}))}
    with pytest.raises(UnsafeArtifactError):
        save_artifacts(tmp_path, "demo", files)
    assert (tmp_path / "a.json").exists()
    with pytest.raises(UnsafeArtifactError, match="manifest"):
        load_artifacts(tmp_path, "demo")


@settings(max_examples=40, deadline=None)
@given(
    protocol=st.integers(min_value=2, max_value=5),
    payload=st.recursive(
        st.none() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    ),
    fmt=st.sampled_from(sorted(FORMATS)),
)
def test_pickles_are_refused_whatever_format_they_claim(
    tmp_path_factory: pytest.TempPathFactory, protocol: int, payload: object, fmt: str
) -> None:
    data = pickle.dumps(payload, protocol=protocol)
    assert looks_like_pickle(data)
    name = "model" + FORMATS[fmt][0]
    with pytest.raises(UnsafeArtifactError):
        save_artifacts(tmp_path_factory.mktemp("p"), "demo", {name: (fmt, data)})


@pytest.mark.parametrize("protocol", [0, 1])
def test_old_protocol_pickles_fail_the_format_check(tmp_path: Path, protocol: int) -> None:
    data = pickle.dumps({"a": [1, 2]}, protocol=protocol)
    for fmt in ("json", "npz", "onnx", "xgboost-ubj"):
        with pytest.raises(UnsafeArtifactError):
            save_artifacts(tmp_path, "demo", {"m" + FORMATS[fmt][0]: (fmt, data)})


def test_torch_style_zip_with_a_pickle_inside_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
        archive.writestr("archive/version", "3")
    data = buffer.getvalue()
    assert looks_like_pickle(data)
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        save_artifacts(tmp_path, "demo", {"weights.npz": ("npz", data)})


def test_npz_with_object_arrays_cannot_be_written_or_read(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        npz_bytes({"x": np.array([{"a": 1}], dtype=object)})
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object))
    # A zip of .npy members passes the container check; parsing refuses the pickle.
    save_artifacts(tmp_path, "demo", {"a.npz": ("npz", buffer.getvalue())})
    with pytest.raises(UnsafeArtifactError, match="NPZ"):
        parse_npz(load_artifacts(tmp_path, "demo")["a.npz"])


def test_symlinked_files_are_refused(tmp_path: Path) -> None:
    save_artifacts(tmp_path / "m", "demo", _files())
    outside = tmp_path / "outside.json"
    outside.write_bytes((tmp_path / "m" / "params.json").read_bytes())
    (tmp_path / "m" / "params.json").unlink()
    (tmp_path / "m" / "params.json").symlink_to(outside)
    with pytest.raises(UnsafeArtifactError, match="regular file"):
        load_artifacts(tmp_path / "m", "demo")


@pytest.mark.parametrize(
    "manifest",
    [b"not json", b"[]", json_bytes({"manifest_version": 99, "kind": "demo", "files": []})],
)
def test_malformed_manifests_are_refused(tmp_path: Path, manifest: bytes) -> None:
    save_artifacts(tmp_path, "demo", _files())
    (tmp_path / MANIFEST_NAME).write_bytes(manifest)
    with pytest.raises(UnsafeArtifactError):
        load_artifacts(tmp_path, "demo")


def test_json_bytes_are_deterministic_and_reject_nan() -> None:
    assert json_bytes({"b": 1, "a": 2}) == json_bytes({"a": 2, "b": 1})
    assert json.loads(json_bytes({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(ValueError):
        json_bytes({"a": float("nan")})
