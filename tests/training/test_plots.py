"""Evaluation plots: real PNG files of the promised size, logged with a registered run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.image import imread

from models.artifacts import save_artifacts
from training.errors import MetricUndefinedError
from training.plots import (
    HISTOGRAM_FILE,
    PR_FILE,
    ROC_FILE,
    evaluation_plots,
    pr_plot,
    roc_plot,
    score_histogram,
)
from training.registry import InMemoryRegistry

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def make_scores() -> Callable[..., tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
    def build(
        n: int = 2000, seed: int = 0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        rng = np.random.default_rng(seed)
        labels = (rng.random(n) < 0.05).astype(np.int64)
        return labels, np.clip(rng.normal(0.2 + 0.5 * labels, 0.15), 0, 1)

    return build


def test_each_plot_is_a_png_of_its_figure_size(
    make_scores: Callable[..., tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]],
    tmp_path: Path,
) -> None:
    labels, scores = make_scores()
    for draw, size in (
        (roc_plot, (500, 500)),
        (pr_plot, (500, 500)),
        (score_histogram, (400, 600)),
    ):
        path = draw(labels, scores, tmp_path / "sub" / f"{draw.__name__}.png")
        assert path.read_bytes().startswith(PNG)
        image = imread(path)
        assert image.shape[:2] == size
        # Not a blank canvas: a curve or bars were drawn.
        assert np.unique(image.reshape(-1, image.shape[2]), axis=0).shape[0] > 10


def test_evaluation_plots_feed_a_registration(
    make_scores: Callable[..., tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]],
    tmp_path: Path,
) -> None:
    labels, scores = make_scores()
    plots = evaluation_plots(labels, scores, tmp_path / "plots")
    assert [p.name for p in plots] == [ROC_FILE, PR_FILE, HISTOGRAM_FILE]
    bundle = tmp_path / "bundle"
    save_artifacts(bundle, "engine", {"engine.json": ("json", b"{}")})
    registry = InMemoryRegistry()
    version = registry.register(bundle, {"auc_roc": 0.9}, {}, "h", plots=plots)
    assert registry.plot_names(version) == sorted([ROC_FILE, PR_FILE, HISTOGRAM_FILE])


def test_constant_scores_still_plot_and_one_class_is_refused(tmp_path: Path) -> None:
    path = score_histogram([0, 1, 0], [0.5, 0.5, 0.5], tmp_path / "flat.png")
    assert path.read_bytes().startswith(PNG)
    for draw in (roc_plot, pr_plot):
        with pytest.raises(MetricUndefinedError):
            draw([0, 0], [0.1, 0.2], tmp_path / "one-class.png")
