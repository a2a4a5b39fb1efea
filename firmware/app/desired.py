"""Desired state (``desired`` topic, retained): parse, validate, newer-version rule.

`parse(payload) -> (v, mode, err)`:

- ``err is None``: a valid desired state, ``v`` int >= 1, ``mode`` a known mode;
- ``err`` set and ``v`` an int: refuse with ``{"dv": v, "ok": false, "err": err}``
  (if `v` is newer than the applied version: acks are sent once, for newer versions);
- ``err`` set and ``v is None``: nothing to answer; drop with a log line.

Unknown keys are ignored. Payloads over `MAX_SIZE` bytes or unparsable JSON still get
an error ack when ``"v": <int>`` can be found in the raw bytes.
"""

import json

MAX_SIZE = 512
MODES = ("active", "suspended", "sleep", "deep_sleep", "delinked")


def is_checkin(mode):
    return mode != "active"


def is_newer(v, applied):
    return v > applied


def value_at(payload, key):
    """Index of the first byte of ``"key"``'s value in raw JSON bytes, or -1.

    Used to answer a payload that does not parse (bad JSON, too large) with an error ack
    that still carries its id or version; shared by commands.scan_id."""
    i = payload.find(b'"' + key + b'"')
    if i < 0:
        return -1
    i += len(key) + 2
    n = len(payload)
    while i < n and payload[i] in b" \t\r\n":
        i += 1
    if i >= n or payload[i] != 58:  # ':'
        return -1
    i += 1
    while i < n and payload[i] in b" \t\r\n":
        i += 1
    return i if i < n else -1


def scan_int(payload, key):
    """Find ``"key": <digits>`` in raw bytes (for error acks of unparsable payloads)."""
    i = value_at(payload, key)
    if i < 0:
        return None
    n = len(payload)
    j = i
    while j < n and j - i < 10 and 48 <= payload[j] <= 57:
        j += 1
    if j == i or (j < n and 48 <= payload[j] <= 57):
        return None
    v = int(payload[i:j])
    return v if v >= 1 else None


def parse(payload):
    if len(payload) > MAX_SIZE:
        return scan_int(payload, b"v"), None, "too large"
    try:
        obj = json.loads(payload)
    except Exception:  # noqa: BLE001 - ValueError, UnicodeError
        return scan_int(payload, b"v"), None, "bad json"
    if type(obj) is not dict:
        return None, None, "not an object"
    v = obj.get("v")
    if type(v) is not int or v < 1 or v > 0xFFFFFFFF:
        return None, None, "bad v %r" % (v,)
    mode = obj.get("mode")
    if type(mode) is not str or mode not in MODES:
        return v, None, "bad mode %s" % _quote(mode)
    return v, mode, None


def _quote(x):
    if type(x) is str:
        if len(x) > 24:
            x = x[:24] + "..."
        return "'%s'" % x
    return "%r" % (x,)
