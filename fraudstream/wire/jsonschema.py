"""Generate ``config/schemas/<topic>.v<N>.json`` from the msgspec definitions.

The files are committed so that teams consuming our topics (in any language) read the
contract without installing fraudstream; a test fails when they drift from the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from fraudstream.settings import PROJECT_ROOT
from fraudstream.wire.schemas import SCHEMA_VERSION, TOPIC_SCHEMAS

SCHEMA_DIR = PROJECT_ROOT / "config" / "schemas"


def schema_for(topic_key: str) -> dict[str, Any]:
    struct = TOPIC_SCHEMAS[topic_key]
    schema: dict[str, Any] = msgspec.json.schema(struct)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"fraudstream:{topic_key}:v{SCHEMA_VERSION}"
    return schema


def rendered() -> dict[str, str]:
    """File name -> exact file content for every topic schema."""
    return {
        f"{key}.v{SCHEMA_VERSION}.json": json.dumps(schema_for(key), indent=2, sort_keys=True)
        + "\n"
        for key in sorted(TOPIC_SCHEMAS)
    }


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in rendered().items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from the code."""
    stale = []
    for name, content in rendered().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            stale.append(name)
    return stale
