# Encode/decode round trips of firmware/mqtt/packet.py; runs under MicroPython and CPython.
# Prints "<name> <hex>" per encoded packet, then "OK": tests/firmware/test_mqtt_packet.py
# runs it on both interpreters and requires identical output.
from mqtt import packet as pk


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def body_of(pkt):
    first, start, end = pk.split(pkt)
    check(end == len(pkt), "split length")
    return first, pkt[start:end]


def vectors():
    out = []
    will = ("simsock/v1/d1/status", b"offline", 1, True)
    c = pk.connect("d1", 600, False, will, "user", "pa55")
    out.append(("connect_full", c))
    first, body = body_of(c)
    check(first == pk.CONNECT, "connect type")
    d = pk.parse_connect(body)
    check(d["client_id"] == "d1" and d["keepalive"] == 600 and not d["clean_session"], "connect fields")
    check(d["will"] == ("simsock/v1/d1/status", b"offline", 1, True), "connect will")
    check(d["user"] == "user" and d["password"] == b"pa55", "connect creds")
    c = pk.connect("d2", 0, True)
    out.append(("connect_min", c))
    d = pk.parse_connect(body_of(c)[1])
    check(d["clean_session"] and d["will"] is None and d["user"] is None, "connect min")

    for sp, code in ((False, 0), (True, 0), (False, 5)):
        p = pk.connack(sp, code)
        out.append((f"connack_{int(sp)}_{code}", p))
        check(pk.parse_connack(body_of(p)[1]) == (sp, code), "connack")

    for size in (0, 25, 120, 200, 20000):
        for qos, retain, dup in ((0, False, False), (1, True, False), (1, False, True)):
            payload = bytes(i & 0xFF for i in range(size))
            p = pk.publish("simsock/v1/d1/hb", payload, qos, retain, dup, 4660 if qos else 0)
            if size <= 200:
                out.append((f"publish_{size}_{qos}{int(retain)}{int(dup)}", p))
            else:
                out.append((f"publish_{size}_{qos}{int(retain)}{int(dup)}_head", p[:24]))
            first, body = body_of(p)
            t, pl, q, r, du, pid = pk.parse_publish(first, body)
            check((t, q, r, du, pid) == ("simsock/v1/d1/hb", qos, retain, dup, 4660 if qos else 0), "publish hdr")
            check(pl == payload, "publish payload")
            # the client's zero-copy header matches the whole-packet encoder
            hdr = bytearray(7)
            n = pk.publish_header(hdr, 16, size, qos, retain, dup)
            check(bytes(hdr[:n]) == p[:n], "publish_header")

    hdr = bytearray(7)
    n = pk.publish_header(hdr, 16, 2100000, 1, False, False)  # 4-byte remaining length
    out.append(("publish_header_2100000", bytes(hdr[:n])))
    check(n == 7 and pk.get_varint(hdr, 1) == (2 + 16 + 2 + 2100000, 5), "publish_header 4-byte varint")

    for pid in (1, 255, 256, 65535):
        p = pk.puback(pid)
        out.append((f"puback_{pid}", p))
        first, body = body_of(p)
        check(first == pk.PUBACK and pk.parse_pid(body) == pid, "puback")

    s = pk.subscribe(7, (("simsock/v1/d1/desired", 1), ("simsock/v1/d1/cmd", 1), ("a/#", 0)))
    out.append(("subscribe", s))
    first, body = body_of(s)
    check(first == 0x82, "subscribe flags")
    pid, topics = pk.parse_subscribe(body)
    check(pid == 7 and topics == [("simsock/v1/d1/desired", 1), ("simsock/v1/d1/cmd", 1), ("a/#", 0)], "subscribe")
    s = pk.suback(7, (1, 1, 0x80))
    out.append(("suback", s))
    check(pk.parse_suback(body_of(s)[1]) == (7, b"\x01\x01\x80"), "suback")
    u = pk.unsubscribe(9, ("a/#",))
    out.append(("unsubscribe", u))
    check(body_of(u)[0] == 0xA2, "unsubscribe flags")
    out.append(("unsuback", pk.unsuback(9)))
    out.append(("pingreq", pk.PINGREQ_PKT))
    out.append(("pingresp", pk.PINGRESP_PKT))
    out.append(("disconnect", pk.DISCONNECT_PKT))

    for n in (0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455):
        buf = bytearray(5)
        end = pk.put_varint(buf, 0, n)
        check(end == pk.varint_len(n), "varint len")
        check(pk.get_varint(buf, 0) == (n, end), "varint")
        out.append((f"varint_{n}", bytes(buf[:end])))
    for bad in (b"\xff\xff\xff\xff\x01", b"\x80"):
        try:
            pk.get_varint(bad, 0)
            check(False, "bad varint accepted")
        except ValueError:
            pass
    check(pk.split(b"\x30") is None and pk.split(b"\x30\x05abc") is None, "split incomplete")
    return out


def main():
    for name, data in vectors():
        print(name, "".join(f"{b:02x}" for b in data))
    print("OK")


main()
