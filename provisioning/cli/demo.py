"""`simsock demo`: the whole flow on virtual units, no hardware, no servers to start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provisioning.cli import app


@app.command()
def demo(
    units: Annotated[int, typer.Option(min=1, max=50, help="how many virtual units")] = 3,
    broker: Annotated[str, typer.Option(help="embedded (amqtt in-process) or mosquitto")] = "embedded",
    workdir: Annotated[Path | None, typer.Option(help="unit files, logs, database (default: temp dir)")] = None,
    no_live: Annotated[bool, typer.Option("--no-live", help="no live table (for logs and CI)")] = False,
) -> None:
    """Start a broker, the cloud and virtual units; suspend and resume an account; print a summary."""
    from provisioning.demo import run_demo

    if broker not in ("embedded", "mosquitto"):
        raise typer.BadParameter("embedded or mosquitto", param_hint="--broker")
    result = run_demo(units=units, broker=broker, workdir=workdir, live=not no_live)
    raise typer.Exit(0 if result.ok else 1)
