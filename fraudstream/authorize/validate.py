"""Validate raw decision messages against the published JSON Schema, and only that.

The authorization service stands for the payment pipeline, a team that reads our topics
through ``config/schemas/decisions.v1.json`` and not through fraudstream's own structs;
validating with the schema file keeps that contract honest (a field the code emits but
the schema forbids shows up here). ``fastjsonschema`` compiles it once to Python code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastjsonschema

from fraudstream.wire.decode import Rejected
from fraudstream.wire.schemas import SCHEMA_VERSION


class SchemaValidator:
    def __init__(
        self,
        schema: Mapping[str, Any],
        *,
        max_bytes: int,
        known_versions: frozenset[int] = frozenset({SCHEMA_VERSION}),
    ) -> None:
        self._check = fastjsonschema.compile(dict(schema))
        self._max_bytes = max_bytes
        self._known = known_versions

    @classmethod
    def from_file(cls, path: Path, *, max_bytes: int) -> SchemaValidator:
        return cls(json.loads(path.read_text(encoding="utf-8")), max_bytes=max_bytes)

    def validate(self, index: int, raw: bytes | None) -> dict[str, Any] | Rejected:
        """The decoded document, or why it was rejected (never raises on input)."""
        if raw is None:
            return Rejected(index, "malformed_json", "empty message (tombstone)", b"")
        if len(raw) > self._max_bytes:
            reason = f"{len(raw)} bytes exceeds the {self._max_bytes}-byte limit"
            return Rejected(index, "oversize", reason, raw)
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return Rejected(index, "malformed_json", str(exc), raw)
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        is_int = isinstance(version, int) and not isinstance(version, bool)
        if is_int and version not in self._known:
            known = ", ".join(str(v) for v in sorted(self._known))
            reason = f"schema_version {version} is not one of: {known}"
            return Rejected(index, "unknown_version", reason, raw)
        try:
            self._check(doc)
        except fastjsonschema.JsonSchemaValueException as exc:
            return Rejected(index, "schema_violation", exc.message, raw)
        assert isinstance(doc, dict)  # the schema's top level is an object
        return doc
