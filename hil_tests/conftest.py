"""Hardware-in-the-loop fixtures: a real unit on a serial port, driven through its raw REPL.

Without `--port` every test here skips with the reason; the same checks run on
virtual units in tests/ so CI exercises them. The bench flow (test_bench_flow.py) also runs
against virtual units with `--virtual` (a cloud stack, a factory build and blank FlashableUnits:
provisioning/virtual/bench_kit.py); CI runs `pytest hil_tests --virtual`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def unit_repl(request: pytest.FixtureRequest) -> Iterator[object]:
    port = request.config.getoption("--port")
    if not port:
        pytest.skip("needs a real unit: pass --port /dev/ttyUSB0")
    from mpremote.transport_serial import SerialTransport

    transport = SerialTransport(port, baudrate=request.config.getoption("--baud"))
    # No soft reset: on a unit it would restart the application we want to inspect.
    transport.enter_raw_repl(soft_reset=False)
    try:
        yield transport
    finally:
        transport.exit_raw_repl()
        transport.close()


# --- the bench flow (test_bench_flow.py): a real unit with --port, or virtual ones with --virtual ------


@dataclass
class BenchTarget:
    """What the bench-flow tests drive: a unit to flash and the cloud to register it with."""

    virtual: bool
    image: Path
    api_url: str
    token: str
    flash_opts: dict[str, Any]  # for flash_unit
    new_port: Callable[[], str]  # a blank unit in download mode: its port
    ready: Callable[[str], None]  # returns once the unit on port booted its fresh firmware
    expect_flash_size: int | None = None


@pytest.fixture(scope="module")
def bench_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchTarget]:
    virtual = request.config.getoption("--virtual")
    port = request.config.getoption("--port")
    if not virtual and not port:
        pytest.skip("needs --port /dev/ttyUSB0 (a real unit in download mode, --image, SIMSOCK_API and "
                    "SIMSOCK_TOKEN) or --virtual (virtual units)")
    if virtual:
        from provisioning.virtual.bench_kit import UnitMaker, bench_stack, factory_build

        work = tmp_path_factory.mktemp("hil-virtual")
        with bench_stack(work) as stack:
            built = factory_build(work / "build", stack.broker.host, stack.broker.port)
            maker = UnitMaker(work / "units")
            by_port: dict[str, Any] = {}

            def new_port() -> str:
                u = maker()
                by_port[u.port] = u
                return u.port

            def ready(p: str) -> None:
                by_port[p].wait_booted(15)
                by_port[p].wait_log(r"unit: boot fw=", 15)

            assert built.merged is not None
            try:
                yield BenchTarget(True, built.merged, stack.url, stack.tokens["bench"],
                                  {"stub": False, "after": "soft-reset", "connect_mode": "no-reset",
                                   "connect_attempts": 2, "baud": 460800}, new_port, ready,
                                  int(built.info["fs"]["flash_size"]))
            finally:
                maker.close()
        return
    image = Path(request.config.getoption("--image"))
    url, token = os.environ.get("SIMSOCK_API"), os.environ.get("SIMSOCK_TOKEN")
    if not image.is_file() or not url or not token:
        pytest.skip(f"a real unit needs --image (got {image}: {'found' if image.is_file() else 'missing'}), "
                    "SIMSOCK_API and SIMSOCK_TOKEN (role bench)")
    expect = None
    info_path = image.parent / "build.json"
    if info_path.is_file():
        expect = int(json.loads(info_path.read_text())["fs"]["flash_size"])
    yield BenchTarget(False, image, url, token, {"stub": True, "after": "hard-reset"}, lambda: port,
                      lambda _p: time.sleep(3.0), expect)
