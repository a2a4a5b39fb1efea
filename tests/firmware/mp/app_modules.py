"""Pure application modules on MicroPython (run by tests/firmware/test_app_modules.py).

    micropython app_modules.py <scratch dir>

Prints ``ok <what>`` lines and a few ``hb <hex>`` / ``ack <json>`` lines the host
compares with CPython; any assertion failure exits with code 1.
"""

import gc
import os
import sys

from app import commands, config, desired, heartbeat
from app.log import Log, Uptime
from app.store import Store

scratch = sys.argv[1]


class Rec:
    def __init__(self):
        self.lines = []

    def warn(self, t):
        self.lines.append(t)

    info = error = warn


# --- config ---------------------------------------------------------------------------
d = config.defaults()
assert d["hb_s"] == 300 and d["keepalive_s"] == 600 and d["checkin_suspended_s"] == (600, 3600)
assert d["relay_on_suspend"] == "keep" and d["mains_poll_ms"] == 500 and d["broker_port"] == 1883
assert d["checkin_sleep_s"] == (77760, 95040) and d["checkin_deep_sleep_s"] == (544320, 665280)
assert d["checkin_delinked_s"] == (544320, 665280) and d["checkin_wait_s"] == 5
assert d["ack_timeout_s"] == 20 and d["backoff_min_s"] == 2 and d["backoff_max_s"] == 600
assert d["broker_host"] == "127.0.0.1"
r = Rec()
c = config.merge(
    {
        "hb_s": 2,
        "checkin_suspended_s": [1, 2.5],
        "bogus": 1,
        "broker_port": "x",
        "relay_on_suspend": "maybe",
        "mains_poll_ms": 100,
        "keepalive_s": True,
        "checkin_sleep_s": [5, 1],
    },
    r,
)
assert c["hb_s"] == 2 and c["checkin_suspended_s"] == (1, 2.5) and c["mains_poll_ms"] == 100
assert c["broker_port"] == 1883 and c["relay_on_suspend"] == "keep" and c["keepalive_s"] == 600
assert c["checkin_sleep_s"] == (77760, 95040)
assert "bogus" not in c
assert any("unknown key 'bogus'" in x for x in r.lines), r.lines
assert sum(1 for x in r.lines if x.startswith("bad value")) == 4, r.lines
assert config.merge(None) == config.defaults()
r = Rec()
assert config.merge([1], r) == config.defaults() and r.lines
assert config.defaults() is not config.defaults()  # fresh dict every time
os.mkdir(scratch + "/cfg")
st = Store(scratch + "/cfg")
st.save("config.json", {"hb_s": 7})
assert config.load(st)["hb_s"] == 7
assert config.checkin_range(config.defaults(), "sleep") == (77760, 95040)
print("ok config")

# --- heartbeat ------------------------------------------------------------------------
hb = heartbeat.Heartbeat((0, 1, 0))
buf = hb.pack(5231, "suspended", 12, True, False, True, 21.5, -71, 123456)
assert len(buf) == 25 and buf is hb.buf
print(f"hb {buf.hex()}")
buf = hb.pack(0x1FFFFFFFF, 4, 0, False, True, False, None, None, 7)
print(f"hb {buf.hex()}")
buf = hb.pack(1, "active", 1, False, False, False, -40.04, -200, 1)
print(f"hb {buf.hex()}")
d = heartbeat.unpack(bytes(buf))
assert d["seq"] == 3 and d["temp"] == -40.0 and d["signal"] == -127 and d["mode"] == 0
assert [heartbeat.mode_code(m) for m in desired.MODES] == [0, 1, 2, 3, 4]
# no allocation per heartbeat (ints only; the board's float temperature is its own)
gc.collect()
a0 = gc.mem_alloc()
for i in range(200):
    hb.pack(i, 1, 5, True, True, True, None, -71, 1000)
a1 = gc.mem_alloc()
assert a1 - a0 == 0, a1 - a0
hb.seq = 0xFFFFFFFF
hb.pack(1, 0, 0, 0, 0, 0, None, None, 0)
assert hb.seq == 0
print("ok heartbeat")

# --- desired --------------------------------------------------------------------------
P = desired.parse
assert P(b'{"v": 12, "mode": "suspended"}') == (12, "suspended", None)
assert P(b'{"v":1,"mode":"active","future":[1,2]}') == (1, "active", None)
assert P(b'{"v": 13, "mode": "party"}') == (13, None, "bad mode 'party'")
assert P(b'{"v": 13}') == (13, None, "bad mode None")
assert P(b'{"v": 14, "mode":') == (14, None, "bad json")
assert P(b"nonsense") == (None, None, "bad json")
assert P(b"[1]") == (None, None, "not an object")
assert P(b'{"v": 0, "mode": "active"}')[0] is None
assert P(b'{"v": true, "mode": "active"}')[0] is None
assert P(b'{"v": 1.5, "mode": "active"}')[0] is None
assert P(b'{"v": "3", "mode": "active"}')[0] is None
big = b'{"v": 20, "mode": "active", "x": "' + b"y" * 600 + b'"}'
assert P(big) == (20, None, "too large")
assert P(b"\xff\xfe") == (None, None, "bad json")
assert desired.is_newer(3, 2) and not desired.is_newer(2, 2) and not desired.is_newer(1, 2)
print("ok desired")

# --- commands -------------------------------------------------------------------------
C = commands.parse
cmd, cid, err = C(b'{"id": "c-81f2", "op": "relay", "arg": "on"}')
assert err is None and cid == "c-81f2" and cmd.op == "relay" and cmd.arg == "on" and cmd.exp is None
cmd, cid, err = C(b'{"id": "c-1", "op": "status", "exp": 1700000000}')
assert err is None and cmd.exp == 1700000000
assert C(b'{"id": "c-1", "op": "relay", "arg": "maybe"}')[1:] == ("c-1", "bad arg 'maybe'")
assert C(b'{"id": "c-1", "op": "relay"}')[1:] == ("c-1", "bad arg None")
assert C(b'{"id": "c-1", "op": "dance"}')[1:] == ("c-1", "bad op 'dance'")
assert C(b'{"id": "", "op": "status"}')[1:] == (None, "bad id")
assert C(b'{"id": "' + b"x" * 33 + b'", "op": "status"}')[1:] == (None, "bad id")
assert C(b'{"id": 5, "op": "status"}')[1:] == (None, "bad id")
assert C(b'{"id": "c-2", "op": "status", "exp": "soon"}')[1:] == ("c-2", "bad exp")
assert C(b'{"id": "c-3", "op": "rel')[1:] == ("c-3", "bad json")
assert C(b'{"id":"c-4"' + b" " * 600 + b"}")[1:] == ("c-4", "too large")
assert C(b"42")[1:] == (None, "not an object")
assert C(b"")[1:] == (None, "bad json")


class FakeBoard:
    def __init__(self):
        self.relay = False

    def relay_get(self):
        return self.relay

    def relay_set(self, on):
        self.relay = on


b = FakeBoard()
k = commands.check
cmd = C(b'{"id": "a", "op": "relay", "arg": "on"}')[0]
assert k(cmd, "active", True, 100) is None
assert k(cmd, "suspended", True, 100) == "suspended: remote relay control is off"
assert k(cmd, "sleep", True, 100) == "sleep: remote relay control is off"
assert k(C(b'{"id":"a","op":"status"}')[0], "deep_sleep", True, 1) == "deep_sleep: unit is dormant"
exp = C(b'{"id": "a", "op": "relay", "arg": "on", "exp": 1000}')[0]
assert k(exp, "active", True, 1001) == "expired"
assert k(exp, "active", True, 1000) is None
assert k(exp, "active", False, 5000) is None  # clock not valid: no expiry check
assert commands.execute(cmd, b) == {"relay": True} and b.relay
assert commands.execute(C(b'{"id":"a","op":"relay","arg":"toggle"}')[0], b) == {"relay": False}
assert commands.execute(C(b'{"id":"a","op":"relay","arg":"toggle"}')[0], b) == {"relay": True}
assert commands.execute(C(b'{"id":"a","op":"relay","arg":"off"}')[0], b) == {"relay": False}
assert commands.execute(C(b'{"id":"a","op":"status"}')[0], b, lambda: {"x": 1}) == {"x": 1}
assert commands.execute(C(b'{"id":"a","op":"reboot"}')[0], b) == {"reboot": True}
print("ack " + commands.ack_ok("c-81f2", {"relay": True}).decode())
print("ack " + commands.ack_err("c-81f2", "suspended: remote relay control is off").decode())
print("ack " + commands.desired_ack_ok(12, "suspended").decode())
print("ack " + commands.desired_ack_err(13, "bad mode 'party'").decode())
print("ack " + commands.ack_err('q"\\', "x").decode())
print("ok commands")

# --- log ------------------------------------------------------------------------------
up = Uptime()
a = up.ms()
assert a >= 0 and up.ms() >= a
lg = Log("unit", up)
lg.info("connected")
lg("warning", "from the mqtt client")
lg("debug", "hidden")
lg.child("store").warn("child")
print("ok log")
