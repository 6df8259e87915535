"""Batch decoding of raw Kafka values with validation.

Faust's ``Record`` costs microseconds per event; the agents take raw bytes in
micro-batches and call :func:`decode_batch`, which validates with msgspec (~1 µs per
message) and returns, for each message it rejects, the reason and the original bytes so
the caller can dead-letter it. Nothing raises on bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import msgspec

from fraudstream.wire.pan import letters_digest, mask_pans
from fraudstream.wire.schemas import SCHEMA_VERSION, DeadLetter, RejectKind, Transaction

T = TypeVar("T", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Rejected:
    """One message that did not decode: its position in the batch, why, and its bytes."""

    index: int
    kind: RejectKind
    reason: str
    raw: bytes


@dataclass(slots=True)
class DecodedBatch(Generic[T]):
    """The good messages (with their positions in the input) and the rejected ones."""

    items: list[T] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class _VersionOnly(msgspec.Struct):
    schema_version: object = None


_version_decoder = msgspec.json.Decoder(_VersionOnly)


class BatchDecoder(Generic[T]):
    """Decodes batches of JSON values into ``struct_type``; reusable and cheap per call."""

    def __init__(
        self,
        struct_type: type[T],
        *,
        max_bytes: int,
        known_versions: frozenset[int] = frozenset({SCHEMA_VERSION}),
        ingress: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._decoder = msgspec.json.Decoder(struct_type)
        # Applied to every message first (card numbers -> tokens), so neither a decoded
        # item nor a rejected message's kept bytes hold a card number in clear.
        self._ingress = ingress
        self._max_bytes = max_bytes
        self._known_versions = known_versions

    def decode(self, raws: Sequence[bytes | None]) -> DecodedBatch[T]:
        out: DecodedBatch[T] = DecodedBatch()
        decode = self._decoder.decode
        for index, received in enumerate(raws):
            if received is None:
                out.rejected.append(
                    Rejected(index, "malformed_json", "empty message (tombstone)", b"")
                )
                continue
            raw = received if self._ingress is None else self._ingress(received)
            if len(raw) > self._max_bytes:
                out.rejected.append(
                    Rejected(
                        index,
                        "oversize",
                        f"{len(raw)} bytes exceeds the {self._max_bytes}-byte limit",
                        raw,
                    )
                )
                continue
            try:
                item = decode(raw)
            except msgspec.ValidationError as exc:
                out.rejected.append(self._classify(index, raw, str(exc)))
                continue
            except msgspec.DecodeError as exc:
                out.rejected.append(Rejected(index, "malformed_json", str(exc), raw))
                continue
            out.items.append(item)
            out.indices.append(index)
        return out

    def _classify(self, index: int, raw: bytes, message: str) -> Rejected:
        """A validation failure is an unknown version when the version is the culprit."""
        try:
            version = _version_decoder.decode(raw).schema_version
        except (msgspec.ValidationError, msgspec.DecodeError):
            version = None
        is_int = isinstance(version, int) and not isinstance(version, bool)
        if is_int and version not in self._known_versions:
            known = ", ".join(str(v) for v in sorted(self._known_versions))
            return Rejected(
                index,
                "unknown_version",
                f"schema_version {version} is not one of: {known}",
                raw,
            )
        return Rejected(index, "schema_violation", message, raw)


def transaction_decoder(
    max_bytes: int, ingress: Callable[[bytes], bytes] | None = None
) -> BatchDecoder[Transaction]:
    return BatchDecoder(Transaction, max_bytes=max_bytes, ingress=ingress)


_encoder = msgspec.json.Encoder()

# The most of a rejected input a dead letter carries (base64: ~342 KiB of JSON, well
# under Kafka's default 1 MiB message limit).
ORIGINAL_KEPT_BYTES = 256 * 1024


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    kind: RejectKind,
    reason: str,
    original: bytes,
    received_at: datetime,
) -> bytes:
    """The encoded dead letter for one rejected input: where it came from, why (capped
    at the schema's 1,024 characters) and its bytes. Every consumer builds them here.

    Any card number still in the bytes is masked first (the scoring agent's ingress has
    already tokenized those of transactions; other topics' inputs come here raw). An
    input over :data:`ORIGINAL_KEPT_BYTES` keeps its head, its size and its SHA-256:
    inlined whole (base64, a third larger) it could exceed the broker's message size,
    and a dead letter that cannot be produced would stop the stream on one message."""
    original = mask_pans(original)
    truncated = len(original) > ORIGINAL_KEPT_BYTES
    letter = DeadLetter(
        schema_version=SCHEMA_VERSION,
        source_topic=topic,
        partition=partition,
        offset=offset,
        kind=kind,
        reason=reason[:1024],
        original=original[:ORIGINAL_KEPT_BYTES],
        received_at=received_at,
        original_truncated=truncated,
        original_size=len(original) if truncated else None,
        original_sha256=letters_digest(original) if truncated else None,
    )
    return _encoder.encode(letter)


class SourceMessage(Protocol):
    """A consumed message as every consumer of ours sees it."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


def dead_letter_record(
    message: SourceMessage,
    kind: RejectKind,
    reason: str,
    received_at: datetime,
    original: bytes | None = None,
) -> tuple[bytes | None, bytes]:
    """(key, value) to produce for a rejected ``message``: its key masked, the dead letter
    of ``original`` (default: the message's bytes as received)."""
    letter = dead_letter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        kind=kind,
        reason=reason,
        original=(message.value or b"") if original is None else original,
        received_at=received_at,
    )
    return dead_letter_key(message.key), letter


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The key a dead letter is produced with: its input's, card numbers masked (an
    upstream keyed by card number must not see it in clear on the dead-letter topic)."""
    return None if key is None else mask_pans(key)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)
