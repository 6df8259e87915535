"""Settings of the authorization service; the keys belong under ``[authorize]``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Not imported from fraudstream.wire.jsonschema: settings load this module, and that one
# needs the settings' project root (an import cycle).
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schemas"


class AuthorizeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Its own consumer group: the payment pipeline reads decisions independently of
    # reconciliation and of any other consumer.
    group_id: str = Field(default="fraudstream-authorize", min_length=1)
    max_batch: int = Field(default=500, ge=1, le=100_000)
    poll_timeout_ms: int = Field(default=200, ge=1, le=60_000)
    # Transaction ids remembered to drop redelivered decisions (most recent first out).
    dedupe_size: int = Field(default=100_000, ge=1)
    # The published contract, and nothing else, decides what a valid decision is.
    decision_schema: Path = SCHEMA_DIR / "decisions.v1.json"
