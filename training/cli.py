"""``fraudstream train``, ``fraudstream evaluate`` and ``fraudstream models``.

The root CLI hooks them in with ``register(app)``; every command gets the settings the
root loaded (``settings_from``) and imports the heavy parts (polars, torch, mlflow) only
when it runs.
"""

from __future__ import annotations

import getpass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from fraudstream.settings import Settings
    from training.registry import ModelRegistry, ModelVersion, PromotionRecord

console = Console()
err_console = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    # Imported here, not at the top: `python -m fraudstream.cli` runs that module as
    # __main__, and a top-level import of it from a subcommand module would load it twice.
    from fraudstream.cli import settings_from

    return settings_from(ctx)


models_app = typer.Typer(
    help="List, promote and roll back registered engines.", no_args_is_help=True
)
KEY_METRICS = ("auc_roc", "average_precision", "card_precision_at_100")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate`` and ``models`` to the root ``fraudstream`` app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.add_typer(models_app, name="models")


def _date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint=option) from None


class _Steps:
    """A rich spinner whose text is the latest progress message (also printed)."""

    def __init__(self) -> None:
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        )
        self._task = self._progress.add_task("starting", total=None)

    def __enter__(self) -> Callable[[str], None]:
        self._progress.start()

        def say(message: str) -> None:
            self._progress.console.log(message)
            self._progress.update(self._task, description=message)

        return say

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()


# --- train -----------------------------------------------------------------------------


def train(
    ctx: typer.Context,
    *,
    data: Annotated[
        Path | None,
        typer.Option(help="Handbook parquet (default: settings data.handbook_path)."),
    ] = None,
    simulate: Annotated[bool, typer.Option(help="Train on a seeded simulation instead.")] = False,
    start: Annotated[str | None, typer.Option(help="First day of data, YYYY-MM-DD.")] = None,
    layers_until: Annotated[str | None, typer.Option(help="End of the layers period.")] = None,
    ensemble_until: Annotated[
        str | None, typer.Option(help="End of the meta-ensemble period; the test starts here.")
    ] = None,
    test_until: Annotated[str | None, typer.Option(help="End of the test period.")] = None,
    small: Annotated[bool, typer.Option(help="Small, fast training (tests, demos).")] = False,
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 7,
    cards: Annotated[int, typer.Option(help="Simulated cards.")] = 2000,
    terminals: Annotated[int, typer.Option(help="Simulated terminals.")] = 800,
    fraud_rate: Annotated[float, typer.Option(help="Simulated fraud rate.")] = 0.02,
    out: Annotated[Path | None, typer.Option(help="Also keep the bundle here.")] = None,
) -> None:
    """Train the engine, assess it on a later test period, register one model version."""
    from training.train_run import TrainRequest, default_dates, train_and_register

    settings = _settings(ctx)
    source: Literal["handbook", "simulated"] = "simulated" if simulate else "handbook"
    path = data or settings.data.handbook_path
    if source == "handbook" and not path.is_file():
        _missing_handbook(path, "pass --data PATH or use --simulate")
    first, layers, ensemble, test = default_dates(source, _date(start, "--start"))
    try:
        request = TrainRequest(
            source=source,
            start=first,
            layers_until=_date(layers_until, "--layers-until") or layers,
            ensemble_until=_date(ensemble_until, "--ensemble-until") or ensemble,
            test_until=_date(test_until, "--test-until") or test,
            data_path=path if source == "handbook" else None,
            small=small,
            seed=seed,
            cards=cards,
            terminals=terminals,
            fraud_rate=fraud_rate,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    from fraudstream.errors import FraudstreamError

    try:
        with _Steps() as say:
            outcome = train_and_register(settings, request, out_dir=out, say=say)
    except (FraudstreamError, ValueError) as exc:
        _refuse(exc, "training failed")
    table = Table(title=f"registered version {outcome.version} ({outcome.trained.version})")
    table.add_column("metric (test period)")
    table.add_column("value", justify="right")
    for name, value in sorted(outcome.metrics.items()):
        if "." not in name:
            table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"definitions hash {outcome.trained.definitions_hash}")
    typer.echo(f"version {outcome.version}")


def _command_line(ctx: typer.Context, name: str) -> str:
    """The command as run: ``name`` and every option given a non-default value."""
    import shlex

    parts = [name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value == param.default or value is False:
            continue
        flag = "--" + (param.name or "").replace("_", "-")
        parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


# --- evaluate --------------------------------------------------------------------------


def evaluate(
    ctx: typer.Context,
    *,
    protocol: Annotated[str, typer.Option(help="handbook or simulated.")] = "handbook",
    folds: Annotated[str, typer.Option(help="handbook: test or validation folds.")] = "test",
    quick: Annotated[bool, typer.Option(help="Small training (TrainingParams.small).")] = False,
    n_folds: Annotated[int, typer.Option(help="Folds per set (the protocol: 4 / 3).")] = 0,
    threads: Annotated[int, typer.Option(help="Training threads.")] = 2,
    out: Annotated[Path | None, typer.Option(help="Markdown file for the tables.")] = None,
    seed: Annotated[int, typer.Option(help="simulated: seed.")] = 11,
    cards: Annotated[int, typer.Option(help="simulated: cards.")] = 3000,
    terminals: Annotated[int, typer.Option(help="simulated: terminals.")] = 1000,
    fraud_rate: Annotated[float, typer.Option(help="simulated: fraud rate.")] = 0.02,
    train_days: Annotated[int, typer.Option(help="simulated: training days.")] = 7,
    layers_days: Annotated[int, typer.Option(help="Training days that train the layers.")] = 4,
    delay_days: Annotated[int, typer.Option(help="simulated: delay days.")] = 7,
    test_days: Annotated[int, typer.Option(help="simulated: test days.")] = 7,
    warmup_days: Annotated[int, typer.Option(help="simulated: warm-up days.")] = 14,
    cross_fit_blocks: Annotated[
        int | None,
        typer.Option(
            help="Cross-fit the training week in this many time blocks (0: layers / meta "
            "split by --layers-days). Default: handbook 3, simulated 0."
        ),
    ] = None,
    cross_fit_scheme: Annotated[
        str, typer.Option(help="Cross-fit blocks: forward (earlier blocks) or blocked (others).")
    ] = "forward",
) -> None:
    """Ablation of the engine on the handbook's prequential folds or on a simulation."""
    from fraudstream.settings import PROJECT_ROOT
    from training.crossfit import CrossFitParams
    from training.evaluate import ScorePool
    from training.evaluate_protocols import (
        HANDBOOK_CROSS_FIT,
        SimulatedProtocol,
        run_handbook,
        run_simulated,
    )
    from training.evaluate_report import markdown, rich_tables

    settings = _settings(ctx)
    if protocol not in ("handbook", "simulated"):
        raise typer.BadParameter("expected handbook or simulated", param_hint="--protocol")
    if folds not in ("test", "validation"):
        raise typer.BadParameter("expected test or validation", param_hint="--folds")
    if cross_fit_scheme not in ("forward", "blocked"):
        raise typer.BadParameter("expected forward or blocked", param_hint="--cross-fit-scheme")
    if cross_fit_blocks is None:
        cross = HANDBOOK_CROSS_FIT if protocol == "handbook" else CrossFitParams()
    else:
        cross = CrossFitParams(
            blocks=cross_fit_blocks,
            scheme="forward" if cross_fit_scheme == "forward" else "blocked",
        )
    rules = settings.scoring.rules_file
    path = settings.data.handbook_path
    if protocol == "handbook" and not path.is_file():
        _missing_handbook(path, "set data.handbook_path")
    pool = ScorePool()
    with _Steps() as say:
        if protocol == "handbook":
            result = run_handbook(
                path,
                rules,
                folds="validation" if folds == "validation" else "test",
                quick=quick,
                n_folds=n_folds or 4,
                layers_days=layers_days,
                threads=threads,
                cross_fit=cross,
                pool=pool,
                say=say,
            )
        else:
            sim = SimulatedProtocol(
                seed=seed,
                cards=cards,
                terminals=terminals,
                fraud_rate=fraud_rate,
                n_folds=n_folds or 3,
                warmup_days=warmup_days,
                train_days=train_days,
                layers_days=layers_days,
                delay_days=delay_days,
                test_days=test_days,
            )
            result = run_simulated(
                rules, sim, quick=quick, threads=threads, cross_fit=cross, pool=pool, say=say
            )
    for table in rich_tables(result):
        console.print(table)
    target = out or PROJECT_ROOT / "benchmarks" / "results" / f"evaluation_{protocol}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    command = _command_line(ctx, "fraudstream evaluate")
    report = markdown(result, command)
    if pool.labels:  # the test folds' rows, pooled: precision-recall of each model alone
        from training.plots import pr_curves_plot

        png = target.with_name(f"{target.stem}_pr.png")
        names = [n for n in result.summary if not n.startswith(("without", "rules"))]
        pr_curves_plot(pool.pooled(names), png, f"Precision-recall, {protocol} test folds")
        report += f"\n![precision-recall curves, test folds pooled]({png.name})\n"
    target.write_text(report, encoding="utf-8")
    console.print(f"wrote {target}")


# --- models ----------------------------------------------------------------------------


def _registry(ctx: typer.Context) -> ModelRegistry:
    from training.train_run import registry_for

    return registry_for(_settings(ctx))


def _actor(actor: str | None) -> str:
    return actor or getpass.getuser()


def _metric(version: ModelVersion, name: str) -> str:
    value = version.metrics.get(name)
    return "" if value is None else f"{value:.4f}"


def versions_table(versions: Iterator[ModelVersion] | list[ModelVersion]) -> Table:
    table = Table(title="registered engines")
    for name in ("version", "aliases", "AUC", "AP", "CP@100", "definitions", "created"):
        table.add_column(name, no_wrap=True)
    table.add_column("promoted (by, why)", overflow="fold")
    for v in versions:
        promoted = ""
        if "promotion.by" in v.tags:
            promoted = (
                f"{v.tags.get('promotion.action', '')} {v.tags.get('promotion.at', '')[:16]} "
                f"by {v.tags['promotion.by']}: {v.tags.get('promotion.reason', '')}"
            )
        table.add_row(
            str(v.version),
            ", ".join(v.aliases),
            *(_metric(v, m) for m in KEY_METRICS),
            v.definitions_hash.removeprefix("sha256:")[:12],
            v.tags.get("created", "")[:16],
            promoted,
        )
    return table


def _missing_handbook(path: Path, hint: str) -> NoReturn:
    err_console.print(
        f"handbook data not found at {path}: get it as ../shared/data/handbook/README.md "
        f"says (Fraud-Detection-Handbook/simulated-data-raw), then {hint}",
        soft_wrap=True,
        markup=False,
    )
    raise typer.Exit(2)


def _refuse(exc: Exception, what: str = "refused") -> NoReturn:
    from rich.markup import escape

    err_console.print(f"[red]{what}:[/red] {escape(str(exc))}")
    raise typer.Exit(1)


def _print_record(record: PromotionRecord) -> None:
    was = f" (was {record.previous_version})" if record.previous_version else ""
    forced = " [forced]" if record.forced and record.action == "promote" else ""
    console.print(
        f"{record.action}: {record.alias} -> version {record.version}{was}{forced} "
        f"by {record.actor}: {record.reason}"
    )


@models_app.command("list")
def list_models(ctx: typer.Context) -> None:
    """Every registered version with its aliases, metrics and promotion trail."""
    console.print(versions_table(_registry(ctx).list_versions()))


@models_app.command("promote")
def promote(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="The model version to promote.")],
    *,
    reason: Annotated[str, typer.Option(help="Why (kept on the version and in history).")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
    force: Annotated[bool, typer.Option(help="Promote even if the metric gate refuses.")] = False,
    actor: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Point champion (gated on the metrics) or challenger at a version."""
    from training.errors import RegistryError

    try:
        record = _registry(ctx).promote(
            version, alias, actor=_actor(actor), reason=reason, force=force
        )
    except (RegistryError, ValueError) as exc:
        _refuse(exc)
    _print_record(record)


@models_app.command("rollback")
def rollback(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (kept on the version and in history).")],
    actor: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Make the previous champion champion again."""
    from training.errors import RegistryError

    try:
        record = _registry(ctx).rollback(actor=_actor(actor), reason=reason)
    except (RegistryError, ValueError) as exc:
        _refuse(exc)
    _print_record(record)


__all__ = ["register"]
