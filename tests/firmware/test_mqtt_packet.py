"""firmware/mqtt/packet.py: spec byte vectors (CPython) and identical behaviour on MicroPython."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import FIRMWARE, run_micropython

VECTORS = Path(__file__).parent / "mp" / "mqtt_packet_vectors.py"


@pytest.fixture(scope="module")
def pk() -> ModuleType:
    spec = importlib.util.spec_from_file_location("simsock_fw_mqtt_packet", FIRMWARE / "mqtt" / "packet.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_connect_bytes_match_the_spec(pk: ModuleType) -> None:
    # MQTT 3.1.1 section 3.1: protocol name, level 4, flags, keepalive, then the payload fields
    assert pk.connect("d1", 60, True) == bytes.fromhex("100e00044d5154540402003c00026431")
    will = ("w", b"x", 1, True)
    got = pk.connect("d1", 600, False, will, "u", "p")
    # fixed header, protocol name, level, flags, keepalive, client id, will topic, will message, user, password
    parts = ["101a", "00044d515454", "04", "ec", "0258", "00026431", "000177", "000178", "000175", "000170"]
    want = bytes.fromhex("".join(parts))
    assert got == want  # flags 0xec: user, password, will retain, will QoS 1, will flag; no clean session


def test_fixed_packets_and_acks(pk: ModuleType) -> None:
    assert pk.PINGREQ_PKT == b"\xc0\x00"
    assert pk.PINGRESP_PKT == b"\xd0\x00"
    assert pk.DISCONNECT_PKT == b"\xe0\x00"
    assert pk.puback(0x1234) == b"\x40\x02\x12\x34"
    assert pk.connack(True, 0) == b"\x20\x02\x01\x00"
    assert pk.parse_connack(b"\x00\x04") == (False, 4)
    assert pk.subscribe(1, [("a/b", 1)]) == bytes.fromhex("820800010003612f6201")
    assert pk.parse_suback(b"\x00\x01\x01\x80") == (1, b"\x01\x80")


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"), (2097151, "ffff7f"),
     (2097152, "80808001"), (268435455, "ffffff7f")],
)  # fmt: skip
def test_remaining_length_varint(pk: ModuleType, n: int, encoded: str) -> None:
    buf = bytearray(4)
    end = pk.put_varint(buf, 0, n)
    assert bytes(buf[:end]).hex() == encoded
    assert pk.get_varint(bytes.fromhex(encoded) + b"tail") == (n, len(encoded) // 2)


def test_bad_input_is_refused(pk: ModuleType) -> None:
    with pytest.raises(ValueError):
        pk.put_varint(bytearray(5), 0, 268435456)
    with pytest.raises(ValueError):
        pk.get_varint(b"\x80\x80\x80\x80\x01")
    with pytest.raises(ValueError):
        pk.publish("t", b"x", qos=1)  # QoS 1 without a packet id
    with pytest.raises(ValueError):
        pk.parse_publish(0x36, b"\x00\x01t\x00\x01")  # QoS 3
    with pytest.raises(ValueError):
        pk.parse_publish(0x32, b"\x00\x09t")  # topic longer than the packet


def test_publish_round_trip_and_zero_copy_header(pk: ModuleType) -> None:
    p = pk.publish("simsock/v1/d1/hb", b"\x01" * 25, qos=1, retain=False, dup=True, pid=7)
    first, start, end = pk.split(p)
    assert first == 0x3A and end == len(p)  # PUBLISH | DUP | QoS 1
    assert pk.parse_publish(first, p[start:end]) == ("simsock/v1/d1/hb", b"\x01" * 25, 1, False, True, 7)
    hdr = bytearray(7)
    n = pk.publish_header(hdr, len("simsock/v1/d1/hb"), 25, 1, False, True)
    assert bytes(hdr[:n]) == p[:n] and n == 4


def test_same_bytes_on_micropython_and_cpython() -> None:
    mp = run_micropython(VECTORS, timeout=30)
    assert mp.returncode == 0, mp.stdout + mp.stderr
    env = dict(os.environ, PYTHONPATH=str(FIRMWARE))
    cp = subprocess.run([sys.executable, str(VECTORS)], capture_output=True, text=True, env=env, timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert mp.stdout.splitlines()[-1] == "OK"
    assert mp.stdout == cp.stdout
