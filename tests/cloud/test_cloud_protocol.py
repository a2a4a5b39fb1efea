"""The cloud's decoders against payloads packed on the host exactly as docs/protocol.md lays them out."""

from __future__ import annotations

import json
import struct

import pytest

from cloud_stub import protocol as p


def packed(**kw: int) -> bytes:
    """A heartbeat packed field by field at the documented offsets (not via protocol.encode_heartbeat)."""
    f = dict(fmt=1, seq=7, major=1, minor=4, patch=2, uptime=3600, mode=0, dv=12, flags=0b101,
             temp=215, signal=-71, heap=81234)
    f.update(kw)
    buf = bytearray(25)
    buf[0] = f["fmt"]
    buf[1:5] = f["seq"].to_bytes(4, "big")
    buf[5:8] = bytes([f["major"], f["minor"], f["patch"]])
    buf[8:12] = f["uptime"].to_bytes(4, "big")
    buf[12] = f["mode"]
    buf[13:17] = f["dv"].to_bytes(4, "big")
    buf[17] = f["flags"]
    buf[18:20] = f["temp"].to_bytes(2, "big", signed=True)
    buf[20:21] = f["signal"].to_bytes(1, "big", signed=True)
    buf[21:25] = f["heap"].to_bytes(4, "big")
    return bytes(buf)


def test_heartbeat_layout_is_the_documented_struct() -> None:
    assert p.HEARTBEAT_SIZE == 25 == struct.calcsize(">BIBBBIBIBhbI")
    assert packed() == struct.pack(">BIBBBIBIBhbI", 1, 7, 1, 4, 2, 3600, 0, 12, 0b101, 215, -71, 81234)


def test_decode_heartbeat_fields() -> None:
    hb = p.decode_heartbeat(packed())
    assert (hb.seq, hb.fw, hb.fw_version, hb.uptime_s) == (7, (1, 4, 2), "1.4.2", 3600)
    assert (hb.mode, hb.desired_version, hb.free_heap) == ("active", 12, 81234)
    assert hb.relay_on and not hb.mains_present and hb.clock_valid
    assert hb.temperature_c == pytest.approx(21.5)
    assert hb.signal_dbm == -71
    d = hb.to_dict()
    assert d["fw"] == "1.4.2" and d["relay_on"] is True and d["mains_present"] is False


@pytest.mark.parametrize("code,name", list(enumerate(["active", "suspended", "sleep", "deep_sleep", "delinked"])))
def test_mode_codes(code: int, name: str) -> None:
    assert p.decode_heartbeat(packed(mode=code)).mode == name
    assert p.mode_code(name) == code and p.mode_name(code) == name


def test_unknown_and_extreme_values() -> None:
    hb = p.decode_heartbeat(packed(temp=-32768, signal=-128, seq=0xFFFFFFFF, dv=0, flags=0))
    assert hb.temperature_c is None and hb.signal_dbm is None
    assert hb.seq == 0xFFFFFFFF and hb.desired_version == 0 and not hb.relay_on
    assert p.decode_heartbeat(packed(temp=-105)).temperature_c == pytest.approx(-10.5)


@pytest.mark.parametrize("payload", [b"", packed()[:24], packed() + b"\x00", packed(fmt=2), packed(fmt=0),
                                     packed(mode=5), packed(mode=255)])
def test_decoder_refuses_unknown_payloads(payload: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_heartbeat(payload)


def test_encode_heartbeat_round_trip() -> None:
    raw = p.encode_heartbeat(9, fw=(2, 0, 1), uptime_s=77, mode="sleep", desired_version=3, relay_on=True,
                             mains_present=False, clock_valid=True, temperature_c=-3.2, signal_dbm=-90, free_heap=5)
    assert raw == packed(seq=9, major=2, minor=0, patch=1, uptime=77, mode=2, dv=3, flags=0b101, temp=-32,
                         signal=-90, heap=5)
    hb = p.decode_heartbeat(raw)
    assert (hb.mode, hb.temperature_c, hb.signal_dbm) == ("sleep", pytest.approx(-3.2), -90)
    unknown = p.decode_heartbeat(p.encode_heartbeat(1))
    assert unknown.temperature_c is None and unknown.signal_dbm is None and unknown.mains_present


def test_topics() -> None:
    assert p.topic("dev-1", "hb") == "simsock/v1/dev-1/hb"
    assert p.subscription("ack") == "simsock/v1/+/ack"
    assert p.parse_topic("simsock/v1/dev-1/status") == ("dev-1", "status")
    for bad in ("simsock/v2/dev-1/hb", "simsock/v1/dev-1/nope", "simsock/v1/hb", "x/v1/d/hb", "simsock/v1/a/b/hb"):
        with pytest.raises(p.ProtocolError):
            p.parse_topic(bad)
    for bad_id in ("", "a/b", "a+", "#", " x", "a" * 65):
        with pytest.raises(p.ProtocolError):
            p.topic(bad_id, "hb")


def test_status() -> None:
    assert [p.parse_status(s) for s in (b"online", b"offline", b"dormant\n")] == ["online", "offline", "dormant"]
    with pytest.raises(p.ProtocolError):
        p.parse_status(b"ONLINE")


def test_desired_encoding() -> None:
    assert p.encode_desired(12, "suspended") == b'{"v":12,"mode":"suspended"}'
    assert p.parse_desired(b'{"v":3,"mode":"active","x":1}') == (3, "active")
    for v, mode in ((0, "active"), (1, "party"), (True, "active")):
        with pytest.raises(p.ProtocolError):
            p.encode_desired(v, mode)  # type: ignore[arg-type]


def test_command_encoding() -> None:
    assert json.loads(p.encode_command("c-1", "relay", "on")) == {"id": "c-1", "op": "relay", "arg": "on"}
    assert json.loads(p.encode_command("c-2", "status", exp=1700000000)) == {"id": "c-2", "op": "status",
                                                                            "exp": 1700000000}
    cid = p.new_command_id()
    assert p.valid_command_id(cid) and cid.startswith("c-")
    for args in (("", "status"), ("x" * 33, "status"), ("c", "fly"), ("c", "relay"), ("c", "relay", "dim"),
                 ("c", "reboot", "now")):
        with pytest.raises(p.ProtocolError):
            p.encode_command(*args)
    with pytest.raises(p.ProtocolError):
        p.encode_command("c", "status", exp=-1)


def test_ack_parsing() -> None:
    a = p.parse_ack(b'{"id": "c-81f2", "ok": true, "res": {"relay": true}}')
    assert a == p.CommandAck("c-81f2", True, {"relay": True}, None)
    a = p.parse_ack(b'{"id": "c-81f2", "ok": false, "err": "suspended: remote relay control is off"}')
    assert isinstance(a, p.CommandAck) and not a.ok and a.err.startswith("suspended")
    assert p.parse_ack(b'{"dv": 12, "ok": true, "mode": "suspended"}') == p.DesiredAck(12, True, "suspended")
    assert p.parse_ack(b'{"dv": 13, "ok": false, "err": "bad mode \'party\'"}').err == "bad mode 'party'"
    for bad in (b"nope", b"[1]", b'{"ok": true}', b'{"id": "c", "ok": 1}', b'{"dv": -1, "ok": true}',
                b'{"id": "", "ok": true}', b'{"id": "c", "ok": true, "pad": "' + b"x" * 600 + b'"}'):
        with pytest.raises(p.ProtocolError):
            p.parse_ack(bad)


def test_alert_parsing() -> None:
    assert p.parse_alert(b'{"t": "mains", "on": false, "up": 5231}')["on"] is False
    with pytest.raises(p.ProtocolError):
        p.parse_alert(b'{"on": false}')
