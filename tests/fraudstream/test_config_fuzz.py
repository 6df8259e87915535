"""Fuzzing the configuration files ops edit by hand — the settings file
(``config/fraudstream.toml``) and the rollout file (``config/rollout.toml``): whatever
they contain is data. Each generated file is either loaded or rejected with the
project's configuration error naming the file; meanwhile an audit hook watches for code
being compiled or executed and processes being started, and a sentinel file the
payloads try to create must never appear. (The rule file has its own fuzz tests:
``tests/models/test_rules_fuzz.py``.)"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudstream.errors import ConfigError, RolloutFileError
from fraudstream.settings import Settings, load_settings
from streams.rollout import parse_rollout
from tests.code_watch import CodeWatch, seen

SENTINEL = Path(tempfile.gettempdir()) / f"fraudstream-config-fuzz-{uuid.uuid4().hex}"
PAYLOADS = [
    f"__import__('os').system('touch {SENTINEL}')",
    f"!!python/object/apply:os.system ['touch {SENTINEL}']",
    f"$(touch {SENTINEL})",
    f"`touch {SENTINEL}`",
    "${env:HOME}",
    "{{ 7 * 7 }}",
    "eval('1')",
    "lambda: 1",
    "file:///etc/passwd",
    "sqlite:///../../etc/passwd",
    "\x00\x1b[2J",
]
SECTIONS = [*Settings.model_fields, "x", "kafka.topics", "__class__"]
KEYS = sorted(
    {key for section in Settings.model_fields for key in getattr(Settings(), section).__dict__}
    | {"__init__", "__globals__", "canary_share", "shadow", "x"}
)

scalars = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for these characters
    return repr(value)


@st.composite
def toml_documents(draw: st.DrawFn) -> bytes:
    """Well-formed TOML with known and unknown sections and keys, hostile values; or
    arbitrary text."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
    lines = [
        f"{key} = {toml_value(draw(values))}"
        for key in draw(st.sets(st.sampled_from(KEYS), max_size=3))
    ]
    for section in draw(st.sets(st.sampled_from(SECTIONS), max_size=3)):
        lines.append(f"[{section}]")
        for key in draw(st.sets(st.sampled_from(KEYS), max_size=4)):
            lines.append(f"{key} = {toml_value(draw(values))}")
    return "\n".join(lines).encode()


@pytest.fixture(scope="module", autouse=True)
def _warm_up_and_check_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # pydantic and tomllib finish importing themselves on first use: do that unwatched.
    path = tmp_path_factory.mktemp("warm") / "f.toml"
    path.write_text("[scoring]\nreview_threshold = 0.4\n")
    load_settings(path, {})
    parse_rollout(b"canary_share = 0.1\n", "warm")
    yield
    assert not SENTINEL.exists(), "a config file created the sentinel file"


def test_the_watch_sees_code_execution() -> None:
    with CodeWatch():
        eval("1 + 1")
    assert any(event == "exec" for event, _ in seen)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=toml_documents())
def test_a_settings_file_is_data_loaded_or_rejected_naming_the_file(
    document: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-settings.toml"
    path.write_bytes(document)
    with CodeWatch():
        try:
            loaded = load_settings(path, {})
        except ConfigError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(loaded, Settings)
    assert seen == [], f"{document!r} triggered {seen}"


@settings(max_examples=300, deadline=None)
@given(document=toml_documents())
def test_a_rollout_file_is_data_loaded_or_rejected_naming_the_file(document: bytes) -> None:
    with CodeWatch():
        try:
            loaded = parse_rollout(document, "config/rollout.toml")
        except RolloutFileError as exc:
            assert "config/rollout.toml" in str(exc)
        else:
            assert 0.0 <= loaded.plan.canary_share <= 1.0
    assert seen == [], f"{document!r} triggered {seen}"
