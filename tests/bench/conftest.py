"""One cloud stack per test module for the bench tests (provisioning/virtual/bench_kit.py), the factory build and
blank FlashableUnits: an enforcing embedded broker (credentials are
issued through it), Cloud on SQLite, the HTTP API on uvicorn, a token per role; and `hw()`, fresh valid
hardware ids (hex uid, Luhn IMEI and ICCID) per call."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioning.api_client import ApiClient
from provisioning.build import BuildResult
from provisioning.demo import SCALED_CONFIG
from provisioning.virtual.bench_kit import BenchStack, UnitMaker, factory_build
from provisioning.virtual.bench_kit import bench_stack as start_bench_stack
from provisioning.virtual.console_unit import VirtualConsoleUnit
from provisioning.virtual.flashable_unit import FlashableUnit
from provisioning.virtual.unit import luhn_check_digit

MakeUnit = Callable[..., FlashableUnit]

_counter = itertools.count(1)


def make_hw(n: int, tag: int = 0) -> dict[str, str]:
    """Valid, distinct hardware ids for (tag, n)."""
    imei = f"35{tag:04d}{n:08d}"
    iccid = f"8949{tag:04d}{n:010d}"
    return {"uid": f"{tag:04x}{n:08x}", "imei": imei + luhn_check_digit(imei), "iccid": iccid + luhn_check_digit(iccid)}


@pytest.fixture(scope="module")
def bench_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    with start_bench_stack(tmp_path_factory.mktemp("bench")) as stack:
        yield stack


@pytest.fixture(scope="module")
def fw_build(bench_stack: BenchStack, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """Built once per module: the firmware + the factory config (this cloud's broker) in the littlefs image,
    merged with a fabricated MicroPython .bin (as in tests/build)."""
    return factory_build(tmp_path_factory.mktemp("fwbuild"), bench_stack.broker.host, bench_stack.broker.port)


@pytest.fixture
def make_unit(tmp_path: Path) -> Iterator[MakeUnit]:
    """Blank FlashableUnits (ROM loader on their pty), powered off at the end of the test."""
    maker = UnitMaker(tmp_path)
    yield maker
    maker.close()


@pytest.fixture
def bench_api(bench_stack: BenchStack) -> Iterator[ApiClient]:
    with bench_stack.client("bench") as c:
        yield c


@pytest.fixture
def hw() -> Callable[[], dict[str, str]]:
    """Fresh hardware ids on each call (unique within the test session)."""
    return lambda: make_hw(next(_counter), tag=7)


@pytest.fixture
def bench_tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def make_console_unit(bench_stack: BenchStack, tmp_path: Path) -> Iterator[Callable[..., VirtualConsoleUnit]]:
    """Units as they wait at the bench: firmware running, unprovisioned, console on a pty."""
    made: list[VirtualConsoleUnit] = []

    def make(name: str = "factory", **kw: Any) -> VirtualConsoleUnit:
        name = f"{name}-{len(made)}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        u = VirtualConsoleUnit(tmp_path / name, name, broker_host=bench_stack.broker.host,
                               broker_port=bench_stack.broker.port, config=SCALED_CONFIG, **kw)
        made.append(u)
        u.start()
        u.wait_log(r"unit: unprovisioned: waiting for registration", 15)
        return u

    yield make
    for u in made:
        u.close()
