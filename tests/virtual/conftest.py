"""Fixtures for the virtual-unit harness tests: a stand-in firmware and a leak check."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioning.virtual.unit import VirtualUnit, unit_processes

STANDIN = Path(__file__).resolve().parent / "fixtures" / "standin_main.py"

UnitFactory = Callable[..., VirtualUnit]


@pytest.fixture(autouse=True)
def no_leaked_units(tmp_path: Path) -> Iterator[None]:
    """Fail a test that leaves a unit process behind under its tmp_path (and kill it)."""
    yield
    leaked = unit_processes(tmp_path)
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"leaked unit processes: {leaked}"


@pytest.fixture
def standin_unit(tmp_path: Path) -> Iterator[UnitFactory]:
    """`standin_unit(device_id="vu-1", standin={...}, **VirtualUnit kwargs)`: a unit running the stand-in."""
    made: list[VirtualUnit] = []

    def make(device_id: str = "vu-1", standin: dict[str, Any] | None = None, **kwargs: Any) -> VirtualUnit:
        config = dict(kwargs.pop("config", None) or {})
        if standin is not None:
            config["standin"] = standin
        unit = VirtualUnit(tmp_path / device_id, device_id, main=STANDIN, config=config, **kwargs)
        made.append(unit)
        return unit

    yield make
    for unit in made:
        unit.kill9()
