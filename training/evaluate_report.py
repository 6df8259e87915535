"""Evaluation results as tables: markdown for ``benchmarks/results/`` and rich for the
terminal. Both show the same rows: the full engine, each layer alone, the engine without
each layer, mean ± std over folds; the handbook's published bar beside them."""

from __future__ import annotations

from rich.table import Table

from training.evaluate import VARIANTS
from training.evaluate_protocols import HANDBOOK_PUBLISHED, EvaluationResult

HEADERS = {
    "auc_roc": "AUC ROC",
    "average_precision": "AP",
    "card_precision_at_100": "CP@100",
    "recall_at_fpr_1pct": "recall@1%FPR",
}


def header(metric: str) -> str:
    if metric in HEADERS:
        return HEADERS[metric]
    return "recall@1%FPR " + metric.removeprefix("recall_at_fpr_1pct_")


def cell(summary: dict[str, float], metric: str) -> str:
    mean, std = summary.get(f"{metric}_mean"), summary.get(f"{metric}_std")
    if mean is None or std is None:
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}"


def rows(result: EvaluationResult) -> list[list[str]]:
    return [
        [name, *(cell(result.summary[name], m) for m in result.columns)]
        for name in VARIANTS
        if name in result.summary
    ]


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def markdown(result: EvaluationResult, command: str) -> str:
    folds = len(result.windows)
    lines = [
        f"# Evaluation: {result.protocol} protocol ({result.folds} folds)",
        "",
        f"Command: `{command}`",
        "",
        *(f"- {line}" for line in result.ran),
        f"- windows: {', '.join(result.windows)}",
        "",
        f"## Ablation (mean ± std over {folds} folds)",
        "",
        *_md_table(["engine", *(header(m) for m in result.columns)], rows(result)),
        "",
        "*alone*: the layer's own score; *without*: the meta model's fallback stacker "
        "fitted without that layer (what the engine runs when its breaker is open).",
    ]
    lines += _per_fold(result)
    lines += _ceilings(result)
    if result.protocol == "handbook":
        lines += [
            "",
            "## The handbook's published results (prequential test folds)",
            "",
            *_md_table(
                ["model", "AUC ROC", "AP", "CP@100"],
                [[m, f"{a:.3f}", f"{p:.3f}", f"{c:.3f}"] for m, a, p, c in HANDBOOK_PUBLISHED],
            ),
        ]
    if result.grid:
        lines += [
            "",
            "## Hyperparameter grid (full engine, validation folds)",
            "",
            *_md_table(
                ["XGBoost", "AP", "AUC ROC", "CP@100"],
                [
                    [
                        g.label + (" (chosen)" if g.label == result.chosen else ""),
                        f"{g.ap_mean:.3f} ± {g.ap_std:.3f}",
                        f"{g.auc_mean:.3f}",
                        f"{g.cp_mean:.3f}",
                    ]
                    for g in result.grid
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


PER_FOLD_METRICS = ("auc_roc", "average_precision", "card_precision_at_100")


def _per_fold(result: EvaluationResult) -> list[str]:
    """The full engine fold by fold, to four decimals: a three-decimal mean hides
    whether a result one thousandth above the published bar is really above it."""
    folds = result.per_fold.get("engine", [])
    if not folds or len(folds) != len(result.windows):
        return []
    body = [
        [window, *(f"{fold.get(m, float('nan')):.4f}" for m in PER_FOLD_METRICS)]
        for window, fold in zip(result.windows, folds, strict=True)
    ]
    body.append(
        [
            "**mean**",
            *(f"**{sum(f.get(m, float('nan')) for f in folds) / len(folds):.4f}**"
              for m in PER_FOLD_METRICS),
        ]
    )  # fmt: skip
    return [
        "",
        "## The full engine, fold by fold",
        "",
        *_md_table(["window", *(header(m) for m in PER_FOLD_METRICS)], body),
    ]


def ceiling_rows(result: EvaluationResult) -> list[list[str]]:
    """Per window: the engine's CP@100, the knowable and the perfect ceilings, and the
    share of the knowable one reached; then the means."""
    folds = result.per_fold.get("engine", [])
    if not result.ceilings or len(result.ceilings) != len(folds):
        return []
    cp = [f.get("card_precision_at_100", float("nan")) for f in folds]
    body = [
        [w, f"{e:.4f}", f"{c.knowable:.4f}", f"{c.perfect:.4f}", _share(e, c.knowable)]
        for w, e, c in zip(result.windows, cp, result.ceilings, strict=True)
    ]
    mean_cp = sum(cp) / len(cp)
    knowable = sum(c.knowable for c in result.ceilings) / len(cp)
    perfect = sum(c.perfect for c in result.ceilings) / len(cp)
    body.append(
        ["mean", f"{mean_cp:.4f}", f"{knowable:.4f}", f"{perfect:.4f}", _share(mean_cp, knowable)]
    )
    return body


def _share(value: float, ceiling: float) -> str:
    # A fold without one knowable fraud has nothing to reach.
    return f"{value / ceiling:.0%}" if ceiling > 0 else "n/a"


CEILING_HEAD = ["window", "engine", "knowable ceiling", "perfect ceiling", "engine / knowable"]


def _ceilings(result: EvaluationResult) -> list[str]:
    body = ceiling_rows(result)
    if not body:
        return []
    return [
        "",
        "## How much CP@100 can be reached",
        "",
        *_md_table(CEILING_HEAD, body),
        "",
        "*perfect*: the ground truth itself as the score. *knowable*: the same, except "
        "that frauds at a compromised terminal within the 7-day label delay of its first "
        "fraud score as legitimate payments: nothing known at decision time tells them "
        "apart (`training/ceilings.py`).",
    ]


def rich_tables(result: EvaluationResult) -> list[Table]:
    main = Table(title=f"{result.protocol} protocol, {result.folds} folds: mean ± std")
    main.add_column("engine")
    for metric in result.columns:
        main.add_column(header(metric), justify="right")
    for row in rows(result):
        main.add_row(*row)
    tables = [main]
    if result.protocol == "handbook":
        bar = Table(title="handbook's published results (prequential test)")
        for name in ("model", "AUC ROC", "AP", "CP@100"):
            bar.add_column(name, justify="left" if name == "model" else "right")
        for m, a, p, c in HANDBOOK_PUBLISHED:
            bar.add_row(m, f"{a:.3f}", f"{p:.3f}", f"{c:.3f}")
        tables.append(bar)
    if reachable := ceiling_rows(result):
        reach = Table(title="CP@100 reachable: knowable (labels 7 days late) and perfect")
        for name in CEILING_HEAD:
            reach.add_column(name, justify="left" if name == "window" else "right")
        for row in reachable:
            reach.add_row(*row)
        tables.append(reach)
    if result.grid:
        grid = Table(title="XGBoost grid on the validation folds (full engine)")
        for name in ("XGBoost", "AP", "AUC ROC", "CP@100"):
            grid.add_column(name, justify="left" if name == "XGBoost" else "right")
        for g in result.grid:
            chosen = " (chosen)" if g.label == result.chosen else ""
            grid.add_row(
                g.label + chosen,
                f"{g.ap_mean:.3f} ± {g.ap_std:.3f}",
                f"{g.auc_mean:.3f}",
                f"{g.cp_mean:.3f}",
            )
        tables.append(grid)
    return tables
