"""The README's first command must keep working: `simsock demo` end to end."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from provisioning.cli import app
from provisioning.demo import run_demo


def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    result = run_demo(units=3, workdir=tmp_path, console=console, live=False)
    assert result.ok, result.failures
    assert result.duration_s < 120
    for unit in result.units:
        assert unit.heartbeats >= 3
        assert unit.modes_applied[-2:] == ["suspended", "active"]
        assert set(unit.converge_s) == {"suspend", "resume"}
    assert "demo OK" in console.export_text()


def test_demo_refuses_an_unknown_broker_kind() -> None:
    out = CliRunner().invoke(app, ["demo", "--broker", "rabbit"])
    assert out.exit_code != 0
    assert "embedded or mosquitto" in out.output
