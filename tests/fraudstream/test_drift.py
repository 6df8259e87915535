"""The population stability index and its sliding window of scores."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fraudstream.drift import EMPTY_BIN_FRACTION, ReferenceHistogram, ScoreWindow, psi

fractions = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12).filter(lambda f: sum(f) > 0)


def normalised(values: list[float]) -> list[float]:
    total = sum(values)
    return [v / total for v in values]


def test_psi_by_hand() -> None:
    expected = [0.5, 0.5]
    actual = [0.8, 0.2]
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, actual) == pytest.approx(0.3 * math.log(4.0))


def test_an_empty_bin_counts_as_a_small_fraction_not_infinity() -> None:
    value = psi([0.5, 0.5], [1.0, 0.0])
    e = EMPTY_BIN_FRACTION
    assert value == pytest.approx(0.5 * math.log(2.0) + (e - 0.5) * math.log(e / 0.5))


@given(fractions, fractions)
def test_psi_is_never_negative_symmetric_and_zero_only_on_itself(
    a: list[float], b: list[float]
) -> None:
    if len(a) != len(b):
        b = (b * len(a))[: len(a)]
        if sum(b) == 0:
            b[0] = 1.0
    a, b = normalised(a), normalised(b)
    assert psi(a, b) >= 0
    assert psi(a, b) == pytest.approx(psi(b, a))
    assert psi(a, a) == 0


def test_psi_needs_the_same_bins() -> None:
    with pytest.raises(ValueError, match="2 expected bins but 3 actual"):
        psi([0.5, 0.5], [0.2, 0.3, 0.5])


def test_reference_from_scores_and_binning_at_the_edges() -> None:
    ref = ReferenceHistogram.from_scores([0.0, 0.05, 0.15, 0.99, 1.0], bins=10)
    assert ref.bins == 10
    assert ref.fractions[0] == pytest.approx(2 / 5)
    assert ref.fractions[1] == pytest.approx(1 / 5)
    assert ref.fractions[9] == pytest.approx(2 / 5)
    assert ref.bin_of(-3.0) == 0 and ref.bin_of(7.0) == 9 and ref.bin_of(0.1) == 1
    # What the trainer stores in the bundle is plain JSON.
    assert ReferenceHistogram.model_validate_json(ref.model_dump_json()) == ref


@pytest.mark.parametrize(
    ("edges", "fractions_", "field"),
    [
        ((0.0, 0.5, 1.0), (0.5, 0.3, 0.2), "one value per bin"),
        ((0.0, 0.5, 0.5), (0.5, 0.5), "strictly increasing"),
        ((0.0, 0.5, 1.0), (0.6, 0.6), "sum to 1"),
    ],
)
def test_an_inconsistent_reference_is_rejected(
    edges: tuple[float, ...], fractions_: tuple[float, ...], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        ReferenceHistogram(edges=edges, fractions=fractions_)


def test_the_window_keeps_only_the_latest_scores() -> None:
    ref = ReferenceHistogram(edges=(0.0, 0.5, 1.0), fractions=(0.5, 0.5))
    window = ScoreWindow(ref, size=4)
    assert window.psi() is None
    window.add([0.1, 0.9, 0.2, 0.8])
    assert window.psi() == pytest.approx(0.0)
    window.add([0.9, 0.9, 0.9, 0.9])  # the low scores fall out of the window
    assert len(window) == 4
    assert window.fractions() == [0.0, 1.0]
    assert window.psi() == pytest.approx(psi([0.5, 0.5], [0.0, 1.0]))
