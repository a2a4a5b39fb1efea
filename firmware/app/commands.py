"""Commands (``cmd`` topic, never retained): parse, check, execute, ack payloads.

    {"id": "c-81f2", "op": "relay", "arg": "on"}     arg: on | off | toggle
    {"id": "c-81f3", "op": "status"}
    {"id": "c-81f4", "op": "reboot"}                 optional "exp": Unix seconds

`parse(payload) -> (cmd, cid, err)`: a `Command` and its id, or an error and the id
when one could be recovered (``cid is None`` -> drop with a log line).
`check(cmd, mode, clock_valid, now) -> err | None`: expiry (only when the clock is
valid), then mode: outside ``active`` every command is refused — relay commands
with ``"<mode>: remote relay control is off"``, others with
``"<mode>: unit is dormant"``.
`execute(cmd, board, status)`: runs it, returns the ``res`` dict (``reboot`` only
returns ``{"reboot": true}``; the unit resets after its ack is delivered).
`ack_ok(cid, res)` / `ack_err(cid, err)`: the exact ack bytes of docs/protocol.md.
"""

import json

from app.desired import MAX_SIZE, value_at

OPS = ("relay", "status", "reboot")
ARGS = ("on", "off", "toggle")


class Command:
    __slots__ = ("id", "op", "arg", "exp")

    def __init__(self, cid, op, arg=None, exp=None):
        self.id = cid
        self.op = op
        self.arg = arg
        self.exp = exp


def _valid_id(x):
    return type(x) is str and 1 <= len(x) <= 32


def scan_id(payload):
    """Find ``"id": "<1-32 chars>"`` in raw bytes (for error acks of unparsable payloads)."""
    i = value_at(payload, b"id")
    if i < 0 or payload[i] != 34:  # '"'
        return None
    i += 1
    j = payload.find(b'"', i)
    if j < 0 or j - i > 32 * 4 or payload.find(b"\\", i, j) >= 0:
        return None
    try:
        cid = str(payload[i:j], "utf-8")
    except Exception:  # noqa: BLE001
        return None
    return cid if _valid_id(cid) else None


def parse(payload):
    if len(payload) > MAX_SIZE:
        return None, scan_id(payload), "too large"
    try:
        obj = json.loads(payload)
    except Exception:  # noqa: BLE001 - ValueError, UnicodeError
        return None, scan_id(payload), "bad json"
    if type(obj) is not dict:
        return None, None, "not an object"
    cid = obj.get("id")
    if not _valid_id(cid):
        return None, None, "bad id"
    op = obj.get("op")
    if op not in OPS:
        return None, cid, "bad op %s" % _short(op)
    arg = obj.get("arg")
    if op == "relay":
        if arg not in ARGS:
            return None, cid, "bad arg %s" % _short(arg)
    exp = obj.get("exp")
    if exp is not None and type(exp) is not int and type(exp) is not float:
        return None, cid, "bad exp"
    return Command(cid, op, arg if op == "relay" else None, exp), cid, None


def _short(x):
    if type(x) is str:
        if len(x) > 16:
            x = x[:16] + "..."
        return "'%s'" % x
    return "%r" % (x,)


def check(cmd, mode, clock_valid, now):
    if cmd.exp is not None and clock_valid and now > cmd.exp:
        return "expired"
    if mode != "active":
        if cmd.op == "relay":
            return "%s: remote relay control is off" % mode
        return "%s: unit is dormant" % mode
    return None


def execute(cmd, board, status=None):
    """Run a checked command; returns its ``res`` dict."""
    if cmd.op == "relay":
        if cmd.arg == "toggle":
            on = not board.relay_get()
        else:
            on = cmd.arg == "on"
        board.relay_set(on)
        return {"relay": board.relay_get()}
    if cmd.op == "status":
        return status() if status is not None else {"relay": board.relay_get()}
    return {"reboot": True}


def ack_ok(cid, res):
    return b'{"id":%s,"ok":true,"res":%s}' % (json.dumps(cid).encode(), json.dumps(res, separators=(",", ":")).encode())


def ack_err(cid, err):
    return b'{"id":%s,"ok":false,"err":%s}' % (json.dumps(cid).encode(), json.dumps(err).encode())


def desired_ack_ok(v, mode):
    return b'{"dv":%d,"ok":true,"mode":%s}' % (v, json.dumps(mode).encode())


def desired_ack_err(v, err):
    return b'{"dv":%d,"ok":false,"err":%s}' % (v, json.dumps(err).encode())
