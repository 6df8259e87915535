"""Evaluation plots logged with a run: ROC, precision-recall, score histograms.

Why pictures next to the numbers: AUC and AP summarise a whole curve, but promotion
decisions are made at one operating point (1 % of good payments flagged, a review
queue of 100 cards); the curves show what a candidate does *there*, and the histogram
shows whether scores are separated or piled up near a threshold.

Figures are built on ``matplotlib.figure.Figure`` and saved as PNG (rendered by Agg),
never through ``pyplot``: no global state, no display needed, safe from worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from training.metrics import auc_roc, average_precision

ROC_FILE = "roc.png"
PR_FILE = "precision_recall.png"
HISTOGRAM_FILE = "score_histogram.png"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _arrays(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]:
    return np.asarray(labels, dtype=np.int8), np.asarray(scores, dtype=np.float64)


def roc_plot(
    labels: npt.ArrayLike, scores: npt.ArrayLike, path: Path, *, max_fpr: float | None = 0.01
) -> Path:
    """ROC curve with its AUC; ``max_fpr`` draws the operating-point budget as a line."""
    y, s = _arrays(labels, scores)
    auc = auc_roc(y, s)  # first: a typed error on one class, before sklearn warns
    fpr, tpr, _ = roc_curve(y, s)
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="random")
    if max_fpr is not None:
        ax.axvline(max_fpr, linestyle="--", color="tab:red", label=f"FPR {max_fpr:g}")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def pr_plot(labels: npt.ArrayLike, scores: npt.ArrayLike, path: Path) -> Path:
    """Precision-recall curve with its AP; the fraud rate is what a random ranking gets."""
    y, s = _arrays(labels, scores)
    ap = average_precision(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", label=f"model (AP {ap:.3f})")
    ax.axhline(float(y.mean()), linestyle=":", color="grey", label=f"fraud rate {y.mean():.4f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    return _save(fig, path)


def pr_curves_plot(
    curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]], path: Path, title: str
) -> Path:
    """Several precision-recall curves on one plot, each with its AP."""
    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.add_subplot()
    rate = 0.0
    for name, (labels, scores) in curves.items():
        y, s = _arrays(labels, scores)
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(recall, precision, where="post", label=f"{name} (AP {average_precision(y, s):.3f})")
        rate = float(y.mean())
    ax.axhline(rate, linestyle=":", color="grey", label=f"fraud rate {rate:.4f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, ylim=(0, 1.02))
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def score_histogram(
    labels: npt.ArrayLike, scores: npt.ArrayLike, path: Path, *, bins: int = 50
) -> Path:
    """Score distributions of genuine and fraudulent payments, each normalised to its
    own count (frauds are <1 % of rows: on a shared count they would be invisible)."""
    y, s = _arrays(labels, scores)
    edges = np.linspace(
        float(s.min()), float(s.max()) if s.max() > s.min() else s.min() + 1, bins + 1
    )
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for value, name, colour in ((0, "genuine", "tab:blue"), (1, "fraud", "tab:red")):
        part = s[y == value]
        if part.size:
            ax.hist(
                part,
                bins=edges.tolist(),
                density=True,
                alpha=0.5,
                color=colour,
                label=f"{name} ({part.size})",
            )
    ax.set(xlabel="score", ylabel="density", title="Scores by label")
    ax.legend(loc="upper center")
    return _save(fig, path)


def evaluation_plots(
    labels: npt.ArrayLike, scores: npt.ArrayLike, out_dir: Path, *, max_fpr: float | None = 0.01
) -> list[Path]:
    """All three plots into ``out_dir``, ready for ``ModelRegistry.register(plots=...)``."""
    return [
        roc_plot(labels, scores, out_dir / ROC_FILE, max_fpr=max_fpr),
        pr_plot(labels, scores, out_dir / PR_FILE),
        score_histogram(labels, scores, out_dir / HISTOGRAM_FILE),
    ]
