"""MQTT 3.1.1 packets: pure encode/decode functions, no I/O, no module state.

Encoders return bytes (except `publish_header`, which fills a caller-owned buffer
so the publish path allocates nothing). Decoders take the packet *body* (what
follows the fixed header) plus the first byte's flags where they matter.
Runs under MicroPython and CPython (the host tests import it directly).
"""

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x80
SUBACK = 0x90
UNSUBSCRIBE = 0xA0
UNSUBACK = 0xB0
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

PINGREQ_PKT = b"\xc0\x00"
PINGRESP_PKT = b"\xd0\x00"
DISCONNECT_PKT = b"\xe0\x00"

MAX_REMAINING = 268435455  # 4-byte varint limit


def _b(s):
    if isinstance(s, str):
        return s.encode()
    return bytes(s)


def varint_len(n):
    if n < 0 or n > MAX_REMAINING:
        raise ValueError("remaining length out of range")
    k = 1
    while n > 127:
        n >>= 7
        k += 1
    return k


def put_varint(buf, off, n):
    """Write remaining length `n` into buf at off; return the offset after it."""
    if n < 0 or n > MAX_REMAINING:
        raise ValueError("remaining length out of range")
    while True:
        d = n & 0x7F
        n >>= 7
        if n:
            buf[off] = d | 0x80
            off += 1
        else:
            buf[off] = d
            return off + 1


def get_varint(buf, off=0):
    """Decode a remaining length at buf[off:]; return (value, next offset).

    Raises ValueError for a malformed (more than 4 bytes) or truncated varint."""
    n = 0
    shift = 0
    for _ in range(4):
        if off >= len(buf):
            raise ValueError("truncated remaining length")
        d = buf[off]
        off += 1
        n |= (d & 0x7F) << shift
        if not d & 0x80:
            return n, off
        shift += 7
    raise ValueError("malformed remaining length")


def _packet(first, body):
    n = len(body)
    hdr = bytearray(1 + varint_len(n))
    hdr[0] = first
    put_varint(hdr, 1, n)
    return bytes(hdr) + body


def _str(s):
    s = _b(s)
    if len(s) > 65535:
        raise ValueError("string too long")
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


def _u16(n):
    return bytes((n >> 8 & 0xFF, n & 0xFF))


def _get_u16(body, off):
    if off + 2 > len(body):
        raise ValueError("truncated packet")
    return body[off] << 8 | body[off + 1]


def _get_str(body, off):
    n = _get_u16(body, off)
    off += 2
    if off + n > len(body):
        raise ValueError("truncated string")
    return bytes(body[off : off + n]), off + n


def split(data, off=0):
    """Find one packet in a byte stream: (first byte, body start, body end) or None if incomplete."""
    if len(data) - off < 2:
        return None
    try:
        n, start = get_varint(data, off + 1)
    except ValueError:
        if len(data) - off >= 5:
            raise
        return None
    if start + n > len(data):
        return None
    return data[off], start, start + n


# -- CONNECT / CONNACK ---------------------------------------------------------


def connect(client_id, keepalive=0, clean_session=True, will=None, user=None, password=None):
    """CONNECT. will: None or (topic, payload, qos, retain)."""
    flags = 0x02 if clean_session else 0
    tail = _str(client_id)
    if will is not None:
        wt, wp, wq, wr = will
        if wq not in (0, 1, 2):
            raise ValueError("bad will qos")
        flags |= 0x04 | wq << 3 | (0x20 if wr else 0)
        tail += _str(wt) + _str(wp)
    if user is not None:
        flags |= 0x80
        tail += _str(user)
    if password is not None:
        if user is None:
            raise ValueError("password without user")
        flags |= 0x40
        tail += _str(password)
    if not 0 <= keepalive <= 65535:
        raise ValueError("bad keepalive")
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + _u16(keepalive) + tail
    return _packet(CONNECT, body)


def parse_connect(body):
    """Decode a CONNECT body into a dict (broker side; used by tests)."""
    name, off = _get_str(body, 0)
    if name != b"MQTT" or off + 4 > len(body):
        raise ValueError("not MQTT 3.1.1")
    level = body[off]
    flags = body[off + 1]
    keepalive = _get_u16(body, off + 2)
    off += 4
    cid, off = _get_str(body, off)
    d = {
        "level": level,
        "client_id": cid.decode(),
        "keepalive": keepalive,
        "clean_session": bool(flags & 0x02),
        "will": None,
        "user": None,
        "password": None,
    }
    if flags & 0x04:
        wt, off = _get_str(body, off)
        wp, off = _get_str(body, off)
        d["will"] = (wt.decode(), wp, flags >> 3 & 3, bool(flags & 0x20))
    if flags & 0x80:
        u, off = _get_str(body, off)
        d["user"] = u.decode()
    if flags & 0x40:
        p, off = _get_str(body, off)
        d["password"] = p
    if off != len(body):
        raise ValueError("trailing bytes in CONNECT")
    return d


def connack(session_present, code):
    return bytes((CONNACK, 2, 1 if session_present else 0, code))


def parse_connack(body):
    """-> (session_present, return code)."""
    if len(body) != 2:
        raise ValueError("bad CONNACK")
    return bool(body[0] & 1), body[1]


# -- PUBLISH / PUBACK -------------------------------------------------------------


def publish_header(buf, topic_len, payload_len, qos=0, retain=False, dup=False):
    """Fill buf (>= 7 bytes) with a PUBLISH fixed header, remaining length and
    topic length; return the byte count. The caller then writes the topic, the
    packet id (2 bytes, QoS > 0 only) and the payload."""
    buf[0] = PUBLISH | (0x08 if dup else 0) | qos << 1 | (1 if retain else 0)
    if topic_len > 65535:
        raise ValueError("topic too long")
    off = put_varint(buf, 1, 2 + topic_len + (2 if qos else 0) + payload_len)
    buf[off] = topic_len >> 8
    buf[off + 1] = topic_len & 0xFF
    return off + 2


def publish(topic, payload, qos=0, retain=False, dup=False, pid=0):
    """A whole PUBLISH packet (tests, brokers; the client writes it in parts)."""
    topic = _b(topic)
    payload = _b(payload)
    if qos and not 0 < pid < 65536:
        raise ValueError("QoS > 0 needs a packet id")
    hdr = bytearray(7)
    n = publish_header(hdr, len(topic), len(payload), qos, retain, dup)
    return bytes(hdr[:n]) + topic + (_u16(pid) if qos else b"") + payload


def parse_publish(first, body):
    """-> (topic: str, payload: bytes, qos, retain, dup, pid)."""
    qos = first >> 1 & 3
    if qos == 3:
        raise ValueError("bad QoS 3")
    topic, off = _get_str(body, 0)
    pid = 0
    if qos:
        pid = _get_u16(body, off)
        off += 2
    return topic.decode(), bytes(body[off:]), qos, bool(first & 1), bool(first & 8), pid


def puback(pid):
    return bytes((PUBACK, 2, pid >> 8 & 0xFF, pid & 0xFF))


def parse_pid(body):
    """Packet id of a PUBACK / UNSUBACK (or the first two bytes of a SUBACK)."""
    return _get_u16(body, 0)


# -- SUBSCRIBE / SUBACK / UNSUBSCRIBE --------------------------------------------


def subscribe(pid, topics):
    """topics: sequence of (topic filter, qos)."""
    body = _u16(pid)
    for t, q in topics:
        body += _str(t) + bytes((q,))
    return _packet(SUBSCRIBE | 2, body)


def parse_subscribe(body):
    """-> (pid, [(topic, qos), ...])."""
    pid = _get_u16(body, 0)
    off = 2
    out = []
    while off < len(body):
        t, off = _get_str(body, off)
        if off >= len(body):
            raise ValueError("truncated SUBSCRIBE")
        out.append((t.decode(), body[off]))
        off += 1
    return pid, out


def suback(pid, codes):
    return _packet(SUBACK, _u16(pid) + bytes(codes))


def parse_suback(body):
    """-> (pid, bytes of return codes: 0..2 granted QoS, 0x80 failure)."""
    return _get_u16(body, 0), bytes(body[2:])


def unsubscribe(pid, topics):
    body = _u16(pid)
    for t in topics:
        body += _str(t)
    return _packet(UNSUBSCRIBE | 2, body)


def unsuback(pid):
    return bytes((UNSUBACK, 2, pid >> 8 & 0xFF, pid & 0xFF))
