"""Options shared by tests/ and hil_tests/ (a root conftest, so `pytest hil_tests` alone sees them)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--port", default=None, help="serial port of a real unit for hil_tests (e.g. /dev/ttyUSB0)")
    parser.addoption("--baud", default=115200, type=int, help="serial baud rate for --port")
