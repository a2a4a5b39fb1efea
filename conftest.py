"""Options shared by tests/ and hil_tests/ (a root conftest, so `pytest hil_tests` alone sees them)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--port", default=None, help="serial port of a real unit for hil_tests (e.g. /dev/ttyUSB0)")
    parser.addoption("--baud", default=115200, type=int, help="serial baud rate for --port")
    parser.addoption("--virtual", action="store_true", default=False,
                     help="run hil_tests' bench flow against virtual units (FlashableUnit) instead of --port")
    parser.addoption("--image", default=".build/out/flash.bin",
                     help="merged image (simsock build) that hil_tests' bench flow flashes onto the --port unit")
