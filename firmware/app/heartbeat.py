"""The 25-byte binary heartbeat (docs/protocol.md), struct ``>BIBBBIBIBhbI``.

`Heartbeat(version)` allocates its buffer once; `pack(...)` fills it in place with
`struct.pack_into` and returns that same bytearray, so a heartbeat allocates nothing
besides the ints it is given (and the float the board returns for temperature).
The returned buffer is reused by the next `pack` — a QoS 1 retransmission of an old
heartbeat therefore carries the newest values, which is harmless.
"""

import struct

FORMAT = ">BIBBBIBIBhbI"
SIZE = 25
FMT_VERSION = 1

# Mode codes: index in this tuple.
MODES = ("active", "suspended", "sleep", "deep_sleep", "delinked")

FLAG_RELAY = 1
FLAG_MAINS = 2
FLAG_CLOCK = 4

TEMP_UNKNOWN = -32768
SIGNAL_UNKNOWN = -128


def mode_code(mode):
    try:
        return MODES.index(mode)
    except ValueError:
        return 0


class Heartbeat:
    def __init__(self, version):
        self.buf = bytearray(SIZE)
        self.version = version
        self.seq = 0

    def pack(self, uptime_s, mode, dv, relay, mains, clock_valid, temp_c, signal_dbm, free_heap):
        """Fill the buffer; `mode` is a name or a code. Advances `seq` (wraps at 2**32)."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        if type(mode) is str:
            mode = mode_code(mode)
        flags = 0
        if relay:
            flags |= FLAG_RELAY
        if mains:
            flags |= FLAG_MAINS
        if clock_valid:
            flags |= FLAG_CLOCK
        if temp_c is None:
            t = TEMP_UNKNOWN
        else:
            t = int(temp_c * 10 + (0.5 if temp_c >= 0 else -0.5))
            if t > 32767:
                t = 32767
            elif t < -32767:
                t = -32767
        if signal_dbm is None:
            s = SIGNAL_UNKNOWN
        else:
            s = signal_dbm
            if s > 127:
                s = 127
            elif s < -127:
                s = -127
        if free_heap > 0xFFFFFFFF:
            free_heap = 0xFFFFFFFF
        v = self.version
        struct.pack_into(
            FORMAT, self.buf, 0,
            FMT_VERSION, self.seq, v[0], v[1], v[2], uptime_s & 0xFFFFFFFF,
            mode, dv & 0xFFFFFFFF, flags, t, s, free_heap,
        )
        return self.buf


def unpack(data):
    """Decode a heartbeat into a dict (tests, tools). Raises ValueError on a bad one."""
    if len(data) != SIZE or data[0] != FMT_VERSION:
        raise ValueError("unknown heartbeat")
    f = struct.unpack(FORMAT, data)
    return {
        "seq": f[1], "fw": (f[2], f[3], f[4]), "up": f[5], "mode": f[6], "dv": f[7],
        "relay": bool(f[8] & FLAG_RELAY), "mains": bool(f[8] & FLAG_MAINS),
        "clock": bool(f[8] & FLAG_CLOCK),
        "temp": None if f[9] == TEMP_UNKNOWN else f[9] / 10,
        "signal": None if f[10] == SIGNAL_UNKNOWN else f[10], "heap": f[11],
    }
