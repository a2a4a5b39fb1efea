"""The board layer on real hardware: ids readable, relay obeys, sensors in range."""

from __future__ import annotations

import re
from typing import Any


def remote(repl: Any, expr: str) -> Any:
    return repl.eval(expr)


def test_board_is_esp32(unit_repl: Any) -> None:
    unit_repl.exec("import board; b = board.load()")
    assert remote(unit_repl, "b.name") == "esp32"


def test_unique_id_is_hex(unit_repl: Any) -> None:
    assert re.fullmatch(r"[0-9a-f]{12,16}", remote(unit_repl, "b.unique_id()"))


def test_relay_follows_commands(unit_repl: Any) -> None:
    before = remote(unit_repl, "b.relay_get()")
    try:
        unit_repl.exec("b.relay_set(True)")
        assert remote(unit_repl, "b.relay_get()") is True
        unit_repl.exec("b.relay_set(False)")
        assert remote(unit_repl, "b.relay_get()") is False
    finally:
        unit_repl.exec(f"b.relay_set({before})")


def test_temperature_plausible(unit_repl: Any) -> None:
    t = remote(unit_repl, "b.temperature_c()")
    assert t is None or -40.0 <= t <= 125.0
