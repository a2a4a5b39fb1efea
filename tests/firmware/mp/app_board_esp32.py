"""board/esp32.py on the unix port with fake machine/network/esp32 modules.

    micropython app_board_esp32.py      (the fakes are on MICROPYPATH, written by the test)

The fakes only stand in for hardware absent here; this checks the AT dialogue,
parsing and pin logic, not the real modem or PPP.
"""

import asyncio

import machine
from board.esp32 import Board, csq_to_dbm

assert csq_to_dbm(0) == -113 and csq_to_dbm(31) == -51 and csq_to_dbm(99) is None
b = Board()
b.configure({"relay_pin": 5, "mains_pin": 6, "apn": "iot.example", "unknown": 1})
assert b.name == "esp32" and b.storage_root() == "/"
assert b.unique_id() == "a1b2c3d4e5f6"
assert b.modem_ids() == ("", "") and b.signal_dbm() is None
b.relay_set(True)
assert b.relay_get() is True and machine.PINS[5].v == 1
b.configure({"relay_active_low": True})
assert b.relay_get() is True and machine.PINS[5].v == 0  # state kept across re-configure
b.relay_set(False)
assert machine.PINS[5].v == 1 and b.relay_get() is False
machine.PINS[6].v = 0
assert b.mains_present() is False
machine.PINS[6].v = 1
assert b.mains_present() is True
assert b.temperature_c() == 42.0  # esp32.mcu_temperature()
asyncio.run(b.link_up())
assert b.modem_ids() == ("356938035643809", "89445001021983048265"), b.modem_ids()
assert b.signal_dbm() == -73
assert b.clock_valid()
assert machine.UART.LAST.sent.count('AT+CGDCONT=1,"IP","iot.example"') == 1
assert machine.RTC.SET[0][:3] == (2026, 11, 21), machine.RTC.SET
assert machine.RTC.SET[0][4] == 9  # 10:00 local at +04 quarter hours (+1 h) is 09:00 UTC
asyncio.run(b.link_down())
print("ok esp32")
