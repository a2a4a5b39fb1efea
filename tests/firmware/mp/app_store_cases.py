"""Recovery cases of app/store.py on the host filesystem (test_store.py).

    micropython app_store_cases.py <empty dir>

Prints ``ok <case>`` per case; an assertion failure exits with code 1.
"""

import binascii
import os
import sys

from app import store as store_mod
from app.store import Store, encode


class Rec:
    """A logger that remembers its lines."""

    def __init__(self):
        self.lines = []

    def _add(self, level, text):
        self.lines.append(level + " " + text)
        print(f"  log {level} {text}")

    def info(self, t):
        self._add("INFO", t)

    def warn(self, t):
        self._add("WARN", t)

    def error(self, t):
        self._add("ERROR", t)


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


root = sys.argv[1]
log = Rec()
s = Store(root, log)
p = root + "/state.json"

# round trip, format
obj = {"v": 3, "mode": "suspended", "relay": True}
s.save("state.json", obj)
assert s.load("state.json") == obj
with open(p, "rb") as f:
    assert f.read() == encode(obj)
assert not exists(p + ".new")
print("ok roundtrip")

# missing -> default, no log
assert s.load("nothing.json") is None
assert s.load("nothing.json", {"d": 1}) == {"d": 1}
print("ok missing")

# a valid .new with a missing target is promoted (cut between remove and rename on FAT)
os.remove(p)
put(p + ".new", encode({"v": 4}))
assert s.load("state.json") == {"v": 4}
assert exists(p) and not exists(p + ".new")
assert any("recovered" in x for x in log.lines)
print("ok promote")

# a valid .new with a corrupt target is promoted too
put(p, b'{"v":4,"mo')
put(p + ".new", encode({"v": 5}))
assert s.load("state.json") == {"v": 5}
assert not exists(p + ".new")
print("ok promote-over-corrupt")

# valid target + valid .new: the save never returned; old wins, .new deleted
put(p + ".new", encode({"v": 6}))
assert s.load("state.json") == {"v": 5}
assert not exists(p + ".new")
print("ok unfinished-new")

# an invalid .new is deleted, target kept
put(p + ".new", encode({"v": 7})[:-5])
n = len(log.lines)
assert s.load("state.json") == {"v": 5}
assert not exists(p + ".new")
assert any("torn" in x for x in log.lines[n:])
print("ok torn-new")

# corrupt target: defaults with a log line, never raises
for bad in (
    b"",
    b"garbage",
    b'{"v":1}\n00000000\n',
    b'{"v":1}\n',
    b"\xff" * 100,
    b"x" * 5000,
    b"[1,2]\n" + (b"%08x" % 0),
):
    put(p, bad)
    n = len(log.lines)
    assert s.load("state.json", "DEF") == "DEF", bad
    if bad:
        assert any("corrupt" in x for x in log.lines[n:]), bad
print("ok corrupt-target")

# checksum ok but not JSON
body = b"{not json"
put(p, body + b"\n" + (b"%08x" % (binascii.crc32(body) & 0xFFFFFFFF)) + b"\n")
assert s.load("state.json") is None
print("ok crc-ok-bad-json")

# a directory where the file should be: load gives default, never raises
os.mkdir(root + "/dir.json")
assert s.load("dir.json", 1) == 1
print("ok directory")

# FAT behaviour: rename refuses to replace an existing file -> remove, then rename


class FatOs:
    def __init__(self, real):
        self.real = real
        self.renames = 0

    def rename(self, a, b):
        self.renames += 1
        if exists(b):
            raise OSError(17)  # EEXIST
        self.real.rename(a, b)

    def __getattr__(self, name):
        return getattr(self.real, name)


fat = FatOs(os)
store_mod.os = fat
try:
    s.save("state.json", {"v": 8})
    s.save("state.json", {"v": 9})
    assert s.load("state.json") == {"v": 9}
    assert fat.renames >= 3
finally:
    store_mod.os = os
print("ok fat-rename")

# os.sync is called when the port has it


class SyncOs(FatOs):
    synced = 0

    def sync(self):
        SyncOs.synced += 1


store_mod.os = SyncOs(os)
try:
    s.save("state.json", {"v": 10})
finally:
    store_mod.os = os
assert SyncOs.synced == 1
print("ok sync")

# a file written by the host tools (store_file.write) is read back (host checks the other way)
print("ok all")
