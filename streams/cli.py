"""Subcommands owned by the streaming edge: ``worker``, ``demo``, ``replay``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(ctx: typer.Context) -> None:
        """Run the scoring worker: transactions in, decisions out."""
        from fraudstream.cli import settings_from
        from streams.worker import run_worker

        run_worker(settings_from(ctx))

    @app.command()
    def demo(
        ctx: typer.Context,
        count: int = typer.Option(500, help="Transactions to replay."),
        seed: int = typer.Option(7, help="Simulator seed."),
    ) -> None:
        """Stack up, worker running, simulated transactions in, decisions printed."""
        from fraudstream.cli import settings_from
        from streams.demo import run_demo

        run_demo(settings_from(ctx), count=count, seed=seed)

    @app.command()
    def replay(
        ctx: typer.Context,
        *,
        data: Annotated[
            Path | None,
            typer.Option(help="A .parquet/.jsonl from `fraudstream simulate`, or the handbook."),
        ] = None,
        simulate: Annotated[bool, typer.Option(help="Replay a fresh simulation.")] = False,
        rate: Annotated[
            float | None, typer.Option(help="Messages per second (default: as fast as possible).")
        ] = None,
        limit: Annotated[int | None, typer.Option(help="At most this many messages.")] = None,
        live: Annotated[
            bool, typer.Option(help="Set each event time to the moment it is produced.")
        ] = False,
        seed: Annotated[int, typer.Option(help="Simulator seed (with --simulate).")] = 0,
        days: Annotated[int, typer.Option(help="Simulated days (with --simulate).")] = 2,
    ) -> None:
        """Produce transactions to the transactions topic at a target rate."""
        import asyncio

        from rich.progress import Progress

        from fraudstream.cli import settings_from
        from streams.replay import load_messages, messages_from_frame, produce
        from streams.topics import ensure_topics

        if (data is None) == (not simulate):
            raise typer.BadParameter("give exactly one of --data PATH or --simulate")
        if data is not None:
            messages = load_messages(data, limit)
        else:
            from fraudstream.simulator import SimulatorConfig, generate

            frame = generate(SimulatorConfig(seed=seed, days=days)).transactions
            messages = messages_from_frame(frame.head(limit) if limit is not None else frame)
        from fraudstream.wire.pan import CardNumberIngress

        settings = settings_from(ctx)
        key = settings.security.pan_token_key
        ingress = CardNumberIngress.from_key(key.get_secret_value().encode() if key else None)
        asyncio.run(ensure_topics(settings.kafka))
        topic = settings.kafka.topics.transactions
        with Progress() as bar:
            task = bar.add_task(f"replay to {topic}", total=len(messages))
            stats = asyncio.run(
                produce(
                    settings.kafka,
                    topic,
                    messages,
                    rate=rate,
                    live=live,
                    on_progress=lambda done: bar.update(task, completed=done),
                    ingress=ingress,
                )
            )
        typer.echo(f"sent {stats.sent:,} messages in {stats.seconds:.1f} s ({stats.rate:,.0f}/s)")

    @app.command()
    def bench(
        quick: Annotated[bool, typer.Option(help="Small runs (minutes, not tens).")] = False,
        only: Annotated[str | None, typer.Option(help="One benchmark, e.g. feature_store.")] = None,
    ) -> None:
        """Run the benchmarks (`make bench`): reports land in benchmarks/results/."""
        import subprocess
        import sys

        from fraudstream.settings import PROJECT_ROOT

        command = [sys.executable, "-m", "benchmarks.run"]
        command += ["--quick"] if quick else []
        command += ["--only", only] if only else []
        raise typer.Exit(subprocess.call(command, cwd=PROJECT_ROOT))
