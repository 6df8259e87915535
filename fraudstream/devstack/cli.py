"""``fraudstream devstack up|down|status|fetch``.

Heavy imports happen inside the commands so that ``fraudstream --help`` stays fast.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from fraudstream.devstack import DevStack

devstack_app = typer.Typer(
    help="Run a local Kafka broker and Redis from the project's own files (no Docker).",
    no_args_is_help=True,
)
_progress = Console(stderr=True, highlight=False, soft_wrap=True)


def _stack(ctx: typer.Context) -> DevStack:
    from fraudstream.cli import settings_from
    from fraudstream.devstack import DevStack

    return DevStack(settings_from(ctx).devstack, report=_progress.print)


@devstack_app.command()
def up(ctx: typer.Context) -> None:
    """Start Kafka and Redis (what is not running yet) and wait until both answer."""
    stack = _stack(ctx)
    began = time.monotonic()
    info = stack.up()
    state = "already running" if info.already_running else f"up in {time.monotonic() - began:.1f} s"
    typer.echo(f"dev stack {state}")
    typer.echo(f"  kafka  {info.kafka_bootstrap}  (pid {info.kafka_pid})")
    typer.echo(f"  redis  {info.redis_url}  (pid {info.redis_pid})")


@devstack_app.command()
def down(
    ctx: typer.Context,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the broker's data and the logs.")
    ] = False,
) -> None:
    """Stop exactly the processes `up` started (by pid). Data is kept unless --purge."""
    stack = _stack(ctx)
    stopped = stack.down(purge=purge)
    typer.echo(f"dev stack down (stopped: {', '.join(stopped) or 'nothing was running'})")


@devstack_app.command()
def status(ctx: typer.Context) -> None:
    """Report Kafka and Redis: running or not, pid, address, whether they answer.
    Exit status 0 when both run and answer, 3 otherwise."""
    from rich.table import Table

    stack = _stack(ctx)
    report = stack.status()
    table = Table(title=f"fraudstream dev stack ({stack.home})")
    for column in ("service", "state", "pid", "address", "answers", "detail"):
        table.add_column(column)
    for svc in report.services:
        state = "[green]running[/green]" if svc.running else "[red]stopped[/red]"
        answers = {True: "yes", False: "[red]no[/red]", None: "-"}[svc.answers]
        pid = str(svc.pid) if svc.pid is not None else "-"
        table.add_row(svc.name, state, pid, svc.address, answers, svc.detail)
    out = Console()
    if not out.is_terminal:
        out.width = 120
    out.print(table)
    raise typer.Exit(0 if report.all_running else 3)


@devstack_app.command()
def fetch(ctx: typer.Context) -> None:
    """Check Java and resolve the Kafka jars from Maven Central (once per machine)."""
    stack = _stack(ctx)
    began = time.monotonic()
    lib = stack.fetch()
    typer.echo(f"kafka jars in {lib} ({time.monotonic() - began:.1f} s)")
