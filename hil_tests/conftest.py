"""Hardware-in-the-loop fixtures: a real unit on a serial port, driven through its raw REPL.

Without `--port` every test here skips with the reason; the same checks run on
virtual units in tests/ so CI exercises them.
"""

from __future__ import annotations

from collections.abc import Iterator

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
