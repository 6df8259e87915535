"""Subcommands owned by the streaming edge: ``worker`` (and later authorize, replay, demo)."""

from __future__ import annotations

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
