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
