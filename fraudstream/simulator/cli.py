"""``fraudstream simulate``: write a seeded simulation to disk and summarise it.

The root CLI hooks it in with ``register(app)``. Heavy imports happen inside the
command so the rest of the CLI stays fast to start.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fraudstream.simulator.generate import SimulatedData

FORMATS = (".parquet", ".jsonl")
COMPANIONS = ("labels", "settlements", "discrepancies", "episodes")


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to the root ``fraudstream`` app."""
    app.command("simulate")(simulate)


def companion_path(out: Path, name: str) -> Path:
    """``runs/sim.parquet`` -> ``runs/sim.labels.parquet`` (same format as ``out``)."""
    return out.with_name(f"{out.stem}.{name}{out.suffix}")


def simulate(
    *,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Transactions file, .parquet or .jsonl (wire format); labels, settlements, "
            "discrepancies and episodes are written beside it with those suffixes.",
        ),
    ],
    seed: Annotated[int, typer.Option(help="Same seed and options, same bytes.")] = 0,
    days: Annotated[int, typer.Option(help="Days of traffic.")] = 10,
    cards: Annotated[int, typer.Option(help="Number of cards.")] = 2000,
    terminals: Annotated[int, typer.Option(help="Number of terminals.")] = 800,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = "2025-01-01",
    fraud_rate: Annotated[float, typer.Option(help="Share of fraudulent transactions.")] = 0.01,
    tx_per_card_day: Annotated[float, typer.Option(help="Mean payments per card and day.")] = 2.0,
) -> None:
    """Generate seeded transactions with labelled attacks, delayed labels and settlements."""
    from pydantic import ValidationError

    from fraudstream.simulator.config import SimulatorConfig
    from fraudstream.simulator.generate import generate

    if out.suffix not in FORMATS:
        raise typer.BadParameter(f"expected a {' or '.join(FORMATS)} file", param_hint="--out")
    try:
        cfg = SimulatorConfig(
            seed=seed,
            days=days,
            n_cards=cards,
            n_terminals=terminals,
            start=date.fromisoformat(start),
            fraud_rate=fraud_rate,
            mean_tx_per_card_day=tx_per_card_day,
        )
    except (ValidationError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    data = generate(cfg)
    written = write(data, out)
    print_summary(data, written)


def write(data: SimulatedData, out: Path) -> list[Path]:
    """Write every frame of ``data`` next to ``out``; returns the paths written."""
    from fraudstream.simulator.encode import to_json_lines

    out.parent.mkdir(parents=True, exist_ok=True)
    frames = {
        "labels": data.labels,
        "settlements": data.settlements,
        "discrepancies": data.injected_discrepancies,
        "episodes": data.episodes,
    }
    written = [out]
    if out.suffix == ".parquet":
        data.transactions.to_parquet(out, index=False)
        for name, frame in frames.items():
            path = companion_path(out, name)
            frame.to_parquet(path, index=False)
            written.append(path)
        return written
    lines = to_json_lines(data.transactions)
    out.write_bytes(b"".join(line + b"\n" for line in lines))
    for name, frame in frames.items():
        path = companion_path(out, name)
        text = frame.to_json(orient="records", lines=True, date_format="iso", date_unit="ms")
        path.write_text(text + ("\n" if text and not text.endswith("\n") else ""))
        written.append(path)
    return written


def print_summary(data: SimulatedData, written: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    from fraudstream.simulator.config import ATTACKS

    tx = data.transactions
    episodes = data.episodes.groupby("attack")["episode"].nunique()
    table = Table(title=f"{len(tx):,} transactions, fraud rate {tx['is_fraud'].mean():.2%}")
    for column in ("attack", "rows", "share", "episodes", "cards", "median amount"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    by_attack = dict(iter(tx.groupby("attack")))
    # Every attack gets a line, so one that a small run left out shows as 0.
    for attack in ATTACKS:
        rows = by_attack.get(attack, tx.iloc[:0])
        table.add_row(
            attack,
            f"{len(rows):,}",
            f"{len(rows) / max(len(tx), 1):.2%}",
            f"{int(episodes.get(attack, 0)):,}" if attack != "none" else "",
            f"{rows['card_id'].nunique():,}",
            f"{rows['amount'].median():,.2f}" if len(rows) else "",
        )
    console = Console()
    console.print(table)
    truth = data.injected_discrepancies["kind"].value_counts().sort_index()
    injected = ", ".join(f"{kind} {count}" for kind, count in truth.items()) or "none"
    console.print(
        f"labels {len(data.labels):,} · settlements {len(data.settlements):,} · "
        f"injected discrepancies: {injected}"
    )
    for path in written:
        console.print(f"wrote {path}")
