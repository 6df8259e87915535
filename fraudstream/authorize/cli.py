"""``fraudstream authorize``: the authorization service, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def authorize(ctx: typer.Context) -> None:
        """Run the authorization service: decisions in, authorizations out."""
        import asyncio
        import signal

        from fraudstream.authorize.service import run_authorize
        from fraudstream.cli import settings_from

        settings = settings_from(ctx)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            typer.echo(
                f"authorizing decisions from {settings.kafka.topics.decisions} "
                f"to {settings.kafka.topics.authorizations}",
                err=True,
            )
            await run_authorize(settings.kafka, settings.authorize, stop=stop)

        asyncio.run(main())
