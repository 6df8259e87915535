"""The one ``fraudstream`` command. Each package owns its subcommands and registers them
here; this module only loads the settings (once) and wires the tree together."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fraudstream import __version__
from fraudstream.errors import FraudstreamError
from fraudstream.settings import Settings, load_settings

console = Console(stderr=True)
app = typer.Typer(
    name="fraudstream",
    help="Real-time fraud decisions for payment processors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def settings_from(ctx: typer.Context) -> Settings:
    """The settings the root command loaded; subcommands call this, never load their own."""
    root = ctx.find_root()
    assert isinstance(root.obj, Settings), "settings are loaded by the root callback"
    return root.obj


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Settings file (default: config/fraudstream.toml)."),
    ] = None,
) -> None:
    try:
        ctx.obj = load_settings(config, os.environ)
    except FraudstreamError as exc:
        console.print(f"[red]configuration rejected[/red]\n{escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def version() -> None:
    """Print the fraudstream version and the versions of the parts it runs on."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    typer.echo(f"fraudstream {__version__}")
    for dist in ("faust-streaming", "aiokafka", "xgboost", "torch", "torch-geometric", "redis"):
        try:
            typer.echo(f"  {dist} {dist_version(dist)}")
        except PackageNotFoundError:
            typer.echo(f"  {dist} (not installed)")


@app.command()
def schemas(
    check: Annotated[bool, typer.Option(help="Fail if the files differ from the code.")] = False,
) -> None:
    """Write the JSON Schema of every topic into config/schemas/."""
    from fraudstream.wire.jsonschema import SCHEMA_DIR, stale_schemas, write_schemas

    if check:
        stale = stale_schemas()
        if stale:
            typer.echo(f"stale schemas in {SCHEMA_DIR}: {', '.join(stale)}", err=True)
            raise typer.Exit(1)
        typer.echo("schemas up to date")
        return
    for path in write_schemas():
        typer.echo(f"wrote {path}")


def _register_subcommands() -> None:
    # Imported here so that each package owns its commands and `fraudstream version`
    # stays fast; the heavy imports happen inside each command.
    from fraudstream.authorize.cli import register as register_authorize
    from fraudstream.devstack.cli import devstack_app
    from fraudstream.simulator.cli import register as register_simulator
    from streams.cli import register as register_streams
    from training.cli import register as register_training

    app.add_typer(devstack_app, name="devstack")
    register_streams(app)
    register_simulator(app)
    register_authorize(app)
    register_training(app)


_register_subcommands()


def main() -> None:
    try:
        app()
    except FraudstreamError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
