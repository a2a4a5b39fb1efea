"""The unix board against its sim/ files (run by tests/firmware/test_app_modules.py).

micropython app_board_unix.py <unit dir>
"""

import json
import os
import sys
import time

import board
from board.unix import Board

root = sys.argv[1]
sim = root + "/sim"


def replace(name, obj, raw=None):
    tmp = sim + "/" + name + ".tmp"
    with open(tmp, "w") as f:
        f.write(raw if raw is not None else json.dumps(obj))
    os.rename(tmp, sim + "/" + name)


def read(name):
    with open(sim + "/" + name) as f:
        return f.read()


b = board.load()
assert b.name == "unix" and b.storage_root() == root, b.storage_root()
# no sim files yet: defaults, never raises
assert b.mains_present() is True and b.temperature_c() == 21.5 and b.signal_dbm() == -71
assert b.clock_valid() and abs(b.time() - time.time()) < 2
os.mkdir(sim)
b = Board(None, root)
# hw.json in the store format (JSON line + CRC line) and plain JSON
replace("hw.json", None, '{"uid":"a1b2c3d4e5f6","imei":"356938035643809","iccid":"8944500102198304826"}\n1234abcd\n')
assert b.unique_id() == "a1b2c3d4e5f6"
assert b.modem_ids() == ("356938035643809", "8944500102198304826")
b2 = Board(None, root)
replace("hw.json", {"uid": "00ff", "imei": "1", "iccid": "2"})
assert b2.unique_id() == "00ff" and b2.modem_ids() == ("1", "2")
# inputs follow atomic replaces, several within the same second
for i in range(6):
    replace("in.json", {"mains": i % 2 == 0, "temp_c": 20 + i, "signal_dbm": -60 - i})
    assert b.mains_present() is (i % 2 == 0), i
    assert b.temperature_c() == 20 + i and b.signal_dbm() == -60 - i
replace("in.json", {"mains": True, "temp_c": None, "signal_dbm": None})
assert b.temperature_c() is None and b.signal_dbm() is None
replace("in.json", {"mains": False})
assert b.mains_present() is False and b.temperature_c() == 21.5 and b.signal_dbm() == -71
replace("in.json", None, "{torn")
assert b.mains_present() is False  # unreadable: keeps the last values
os.remove(sim + "/in.json")
assert b.mains_present() is True  # gone: defaults
# relay output
assert b.relay_get() is False
b.relay_set(False)
assert read("relay") == "0"  # the first set always writes the output
b.relay_set(True)
assert b.relay_get() is True and read("relay") == "1"
b.relay_set(False)
assert read("relay") == "0"
print("ok board")
b.reset()
print("not reached")
