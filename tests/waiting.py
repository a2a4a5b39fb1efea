"""Polling for asynchronous outcomes in tests: one implementation for every suite.

`poll` returns the predicate's first truthy value (or a falsy one at the deadline, after a
last look); `wait_until` raises with a readable message instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(pred: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return pred()


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    value = poll(pred, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value
