"""The canary split (stable, share respected, monotone) and the hot-reloaded rollout file."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from fraudstream.errors import ConfigError, RolloutFileError
from streams.rollout import (
    RolloutFile,
    RolloutPlan,
    canary_bucket,
    canary_mask,
    in_canary,
    load_rollout_file,
    parse_rollout,
)

IDS = [f"tx-{i:07d}" for i in range(100_000)]


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def write_rollout(tmp_path: Path) -> Callable[[str], Path]:
    """``write_rollout(text)``: (re)write the rollout file of this test."""
    path = tmp_path / "rollout.toml"

    def write(text: str) -> Path:
        path.write_text(text, encoding="utf-8")
        return path

    return write


# --- the canary split ----------------------------------------------------------------


def test_the_bucket_of_an_id_never_changes_and_is_in_the_unit_interval() -> None:
    assert canary_bucket("tx-1") == canary_bucket("tx-1")
    assert canary_bucket("tx-1") != canary_bucket("tx-2")
    assert all(0.0 <= canary_bucket(i) < 1.0 for i in IDS[:1000])
    # The documented rule: first 8 bytes of blake2b(id), big-endian, over 2**64.
    import hashlib

    raw = hashlib.blake2b(b"tx-1", digest_size=8).digest()
    assert canary_bucket("tx-1") == int.from_bytes(raw, "big") / 2**64


@pytest.mark.parametrize("share", [0.01, 0.10, 0.5])
def test_the_share_is_respected_within_statistical_bounds(share: float) -> None:
    chosen = sum(canary_mask(IDS, share))
    n = len(IDS)
    sigma = math.sqrt(n * share * (1 - share))
    assert abs(chosen - n * share) < 5 * sigma  # ~1 in 3.5 million to fail by chance


def test_zero_and_one_choose_none_and_all() -> None:
    assert not any(canary_mask(IDS[:1000], 0.0))
    assert all(canary_mask(IDS[:1000], 1.0))
    assert not in_canary("tx-1", 0.0) and in_canary("tx-1", 1.0)


def test_raising_the_share_only_adds_ids() -> None:
    one = {i for i, c in zip(IDS, canary_mask(IDS, 0.01), strict=True) if c}
    ten = {i for i, c in zip(IDS, canary_mask(IDS, 0.10), strict=True) if c}
    everything = {i for i, c in zip(IDS, canary_mask(IDS, 1.0), strict=True) if c}
    assert one and one < ten < everything
    assert everything == set(IDS)


def test_the_split_is_the_same_in_any_batch_order() -> None:
    batch = IDS[:500]
    forward = dict(zip(batch, canary_mask(batch, 0.3), strict=True))
    backward = dict(zip(batch[::-1], canary_mask(batch[::-1], 0.3), strict=True))
    assert forward == backward


# --- the rollout file ----------------------------------------------------------------


def test_the_shipped_file_is_valid_and_starts_with_no_canary() -> None:
    from fraudstream.settings import load_settings

    plan = load_rollout_file(load_settings(None, {}).models.rollout_file, missing_ok=False).plan
    assert plan == RolloutPlan(canary_share=0.0, shadow=True)


def test_a_missing_file_means_no_canary_and_shadow_on(tmp_path: Path) -> None:
    assert RolloutFile(tmp_path / "absent.toml").plan == RolloutPlan()


@pytest.mark.parametrize(
    ("text", "key", "line", "says"),
    [
        ("shadow = true\ncanary_share = 1.5\n", "canary_share", 2, "less than or equal to 1"),
        ("canary_share = -0.1\n", "canary_share", 1, "greater than or equal to 0"),
        ("canary_share = '10%'\n", "canary_share", 1, "valid number"),
        ("canary_share = 0.1\nshadow = 'yes'\n", "shadow", 2, "valid boolean"),
        ("canary_share = 0.1\ncanary_shares = 0.2\n", "canary_shares", 2, "Extra inputs"),
        ("canary_share = = 0.1\n", "-", 1, "invalid TOML"),
    ],
)
def test_an_invalid_file_is_rejected_naming_file_line_and_field(
    write_rollout: Callable[[str], Path], text: str, key: str, line: int, says: str
) -> None:
    path = write_rollout(text)
    with pytest.raises(RolloutFileError) as info:
        parse_rollout(path.read_bytes(), str(path))
    error = info.value
    assert isinstance(error, ConfigError)
    assert (error.source, error.key, error.line) == (str(path), key, line)
    assert says in error.reason
    assert str(error).startswith(f"{path}:{line}: {key}: ")


def test_an_integer_share_is_accepted(write_rollout: Callable[[str], Path]) -> None:
    path = write_rollout("canary_share = 1\n")
    assert parse_rollout(path.read_bytes(), str(path)).plan.canary_share == 1.0


def test_a_bad_file_at_start_stops_start_up(write_rollout: Callable[[str], Path]) -> None:
    with pytest.raises(RolloutFileError):
        RolloutFile(write_rollout("canary_share = 2\n"))


def test_moving_the_canary_needs_no_restart(write_rollout: Callable[[str], Path]) -> None:
    path = write_rollout("canary_share = 0.01\nshadow = true\n")
    clock, reloaded = ManualClock(), []
    rollout = RolloutFile(path, reload_interval_s=1.0, clock=clock, on_reload=reloaded.append)
    assert rollout.current().canary_share == 0.01
    for share in (0.10, 1.0):
        write_rollout(f"canary_share = {share}\nshadow = true\n")
        clock.now += 1.0
        assert rollout.current().canary_share != share  # seen once: not used yet
        clock.now += 1.0
        assert rollout.current().canary_share == share  # read the same twice: in force
    assert [p.canary_share for p in reloaded] == [0.10, 1.0]


def test_a_change_is_not_read_before_the_interval(write_rollout: Callable[[str], Path]) -> None:
    path = write_rollout("canary_share = 0.01\n")
    clock = ManualClock()
    rollout = RolloutFile(path, reload_interval_s=5.0, clock=clock)
    write_rollout("canary_share = 0.5\n")
    for _ in range(3):
        clock.now += 1.0
        assert rollout.current().canary_share == 0.01


def test_an_invalid_edit_keeps_the_last_good_rollout_and_is_reported_once(
    write_rollout: Callable[[str], Path],
) -> None:
    path = write_rollout("canary_share = 0.1\nshadow = false\n")
    errors: list[RolloutFileError] = []
    rollout = RolloutFile(path, reload_interval_s=0.0, on_error=errors.append)
    write_rollout("canary_share = 0.2\nshadow = false\ncanary = 3\n")
    for _ in range(4):
        assert rollout.current() == RolloutPlan(canary_share=0.1, shadow=False)
    assert len(errors) == 1
    assert (errors[0].key, errors[0].line) == ("canary", 3)
    assert rollout.last_error is errors[0]
    # Fixed: used (after reading the same twice), and the error clears.
    write_rollout("canary_share = 0.2\nshadow = false\n")
    rollout.check()
    assert rollout.check()
    assert rollout.plan == RolloutPlan(canary_share=0.2, shadow=False)
    assert rollout.last_error is None


def test_a_half_written_file_is_not_used(write_rollout: Callable[[str], Path]) -> None:
    path = write_rollout("canary_share = 0.01\nshadow = true\n")
    rollout = RolloutFile(path, reload_interval_s=0.0)
    write_rollout("canary_share = 0.5\n")  # caught mid-rewrite once...
    rollout.check()
    write_rollout("canary_share = 0.05\nshadow = true\n")  # ...then finished differently
    rollout.check()
    assert rollout.plan.canary_share == 0.01  # neither version read twice yet
    rollout.check()
    assert rollout.plan.canary_share == 0.05


def test_deleting_the_file_goes_back_to_the_default(write_rollout: Callable[[str], Path]) -> None:
    path = write_rollout("canary_share = 0.3\n")
    rollout = RolloutFile(path, reload_interval_s=0.0)
    path.unlink()
    assert rollout.check()
    assert rollout.plan == RolloutPlan()
