"""Hot reload: an edited rule file takes effect without restart; a bad edit does not."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from fraudstream.errors import RuleFileError
from models.rules import RuleBook, RuleSet, RulesScorer
from tests.models.factories_rules import RULE_FEATURES, make_tx, rule_batch, rule_toml


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _book(path: Path, clock: FakeClock, **kwargs: Any) -> RuleBook:
    return RuleBook(path, features=RULE_FEATURES, reload_interval_s=1.0, clock=clock, **kwargs)


BIG = rule_toml("big", "amount > 1000", "decline")
SMALL = rule_toml("small", "amount > 10", "decline")


def test_an_edited_file_is_swapped_in_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(BIG)
    clock = FakeClock()
    reloaded: list[RuleSet] = []
    book = _book(path, clock, on_reload=reloaded.append)
    scorer = RulesScorer(book)
    batch = rule_batch([make_tx(0, amount=50.0)])
    assert scorer.score(batch).tolist() == [0.0]
    first_version = scorer.version

    path.write_text(SMALL)
    clock.now += 0.5  # checks are at most once per interval
    assert scorer.score(batch).tolist() == [0.0]
    clock.now += 0.6  # seen changed once: may still be mid-write
    assert scorer.score(batch).tolist() == [0.0]
    clock.now += 1.0  # read the same again: settled, swapped in
    assert scorer.score(batch).tolist() == [1.0]
    assert scorer.version != first_version
    assert [r.id for r in reloaded[0].rules] == ["small"]
    assert book.last_error is None


def test_a_bad_edit_is_reported_once_and_the_last_good_rules_keep_running(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(BIG)
    clock = FakeClock()
    errors: list[RuleFileError] = []
    book = _book(path, clock, on_error=errors.append)
    scorer = RulesScorer(book)
    batch = rule_batch([make_tx(0, amount=5000.0)])

    path.write_text(BIG + rule_toml("typo", "amout > 5"))
    for _ in range(4):
        clock.now += 1.5
        assert scorer.score(batch).tolist() == [1.0]
    assert len(errors) == 1
    error = book.last_error
    assert error is errors[0]
    assert (error.source, error.key, error.line) == (str(path), "rule[1].when", 10)
    assert [r.id for r in book.current().rules] == ["big"]

    path.write_text(SMALL)
    for _ in range(2):
        clock.now += 1.5
        book.current()
    assert [r.id for r in book.current().rules] == ["small"]
    assert book.last_error is None


def test_a_file_caught_half_written_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    both = BIG + SMALL
    path.write_text(both)
    clock = FakeClock()
    book = _book(path, clock)
    # An in-place rewrite caught after the first rule: valid TOML, one rule missing.
    path.write_text(BIG)
    clock.now += 1.5
    book.current()
    path.write_text(both)
    clock.now += 1.5
    assert [r.id for r in book.current().rules] == ["big", "small"]
    clock.now += 1.5
    assert [r.id for r in book.current().rules] == ["big", "small"]


def test_a_vanished_file_keeps_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(BIG)
    clock = FakeClock()
    book = _book(path, clock)
    path.unlink()
    clock.now += 2
    assert [r.id for r in book.current().rules] == ["big"]
    assert book.last_error is not None and "cannot read" in book.last_error.reason


def test_a_bad_file_at_start_up_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[rule]]\nid = 1\n")
    with pytest.raises(RuleFileError) as caught:
        RuleBook(path)
    assert caught.value.line == 2


def test_readers_see_old_or_new_rules_never_a_mix(tmp_path: Path) -> None:
    # Written atomically (rename), as deploy tools do; the swap itself must be atomic.
    path = tmp_path / "rules.toml"
    two_old = BIG + rule_toml("big2", "amount > 2000", "decline")
    two_new = SMALL + rule_toml("small2", "amount > 20", "decline")
    path.write_text(two_old)
    book = RuleBook(path, features=RULE_FEATURES, reload_interval_s=0.0)
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(tuple(r.id for r in book.current().rules))

    reader = threading.Thread(target=read)
    reader.start()
    for text in (two_new, two_old, two_new):
        staged = tmp_path / "rules.toml.tmp"
        staged.write_text(text)
        staged.replace(path)
        book.check()
        book.check()
    stop.set()
    reader.join()
    assert seen <= {("big", "big2"), ("small", "small2")}
