"""Registration over a serial port, end to end and under faults: a virtual unit on a pty registered with
`simsock bench register --port <pty>` reboots into the firmware, connects with its new credentials and its
first heartbeat reaches the cloud; idempotent re-registration reads the identity back; --rotate; a unit
that never answers, one that answers garbage, an unreachable cloud and conflicting hardware ids all fail
clearly with nothing recorded as good."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest
from typer.testing import CliRunner

from cloud_stub.broker import free_port
from provisioning.api_client import ApiClient
from provisioning.bench.console import Garbage, NoAnswer, PortError, UnitConsole
from provisioning.bench.register import RegisterError, register_unit
from provisioning.cli import app
from provisioning.virtual.serial_line import SerialLine
from provisioning.virtual.unit import fake_hw_ids

runner = CliRunner()


def _cli(bench_stack, *args: str):
    env = {"SIMSOCK_API": bench_stack.url, "SIMSOCK_TOKEN": bench_stack.tokens["bench"], "COLUMNS": "200"}
    return runner.invoke(app, ["bench", "register", *args], env=env, catch_exceptions=False)


def test_cli_register_then_the_unit_boots_connects_and_its_heartbeat_reaches_the_cloud(bench_stack, make_console_unit):
    unit = make_console_unit()
    assert unit.identity_on_unit() is None
    r = _cli(bench_stack, "--port", unit.port, "--station", "st-e2e", "--operator", "ann", "--bundle-hash", "cd" * 32)
    assert r.exit_code == 0, r.output
    assert "registered SK" in r.output and "new serial" in r.output and "rebooted" in r.output
    ident = unit.identity_on_unit()
    assert ident is not None and set(ident) == {"device_id", "serial", "mqtt_user", "mqtt_pass"}
    assert ident["serial"] in r.output and ident["mqtt_user"] == ident["device_id"]
    # the board reset (exit 42) is the reboot; the firmware comes up provisioned and connects
    unit.wait_reboots(1, 10)
    unit.wait_log(rf"unit: boot fw=\S+ board=unix device_id={ident['device_id']}", 15)
    unit.wait_log(r"unit: connected", 20)
    assert bench_stack.cloud.wait_heartbeats(ident["device_id"], 1, 20), unit.console_tail(20)
    with bench_stack.client("read-only") as ro:
        u = ro.unit(ident["serial"])
    assert u.status == "registered" and u.device_id == ident["device_id"] and u.bundle_hash == "cd" * 32
    assert (u.uid, u.imei, u.iccid) == tuple(unit.hw[k] for k in ("uid", "imei", "iccid"))
    assert [s.step for s in u.steps] == ["allocate", "credentials", "register"]
    assert u.steps[-1].detail["outcome"] == "registered" and u.steps[-1].station == "st-e2e"

    # registering the running unit again: same serial, no new credentials, its identity is read back
    api = bench_stack.client("bench")
    again = register_unit(unit.port, api, "st-e2e", "ann", timeout=5)
    assert (again.serial, again.outcome, again.created) == (ident["serial"], "already registered", False)
    assert unit.identity_on_unit() == ident
    unit.wait_reboots(2, 10)
    unit.wait_log(r"unit: connected", 20, since=unit.last_offset)

    # --rotate: new credentials on the unit, the old password stops working
    rot = register_unit(unit.port, api, "st-e2e", "ann", rotate=True, timeout=5)
    assert rot.outcome == "rotated" and rot.serial == ident["serial"]
    new = unit.identity_on_unit()
    assert new is not None and new["mqtt_pass"] != ident["mqtt_pass"] and new["device_id"] == ident["device_id"]
    unit.wait_reboots(3, 10)
    n = bench_stack.cloud.heartbeat_count(ident["device_id"])
    assert bench_stack.cloud.wait_heartbeats(ident["device_id"], n + 1, 20)
    api.close()


def test_a_unit_whose_identity_is_lost_is_refused_without_rotate(bench_stack, make_console_unit):
    unit = make_console_unit()
    api = bench_stack.client("bench")
    first = register_unit(unit.port, api, "st", "op", timeout=5, reboot=False)
    assert first.outcome == "registered"
    unit.kill9()
    (unit.root / "identity.json").unlink()  # e.g. the filesystem was erased and flashed again
    since = unit.mark()
    unit.start()
    unit.wait_log(r"unprovisioned", 15, since=since)
    with pytest.raises(RegisterError) as e:
        register_unit(unit.port, api, "st", "op", timeout=5)
    assert e.value.step == "check_identity" and "--rotate" in str(e.value) and e.value.recorded
    assert api.unit(first.serial).status == "failed"
    ok = register_unit(unit.port, api, "st", "op", rotate=True, timeout=5, reboot=False)
    assert ok.serial == first.serial and ok.outcome == "rotated" and api.unit(first.serial).status == "registered"
    api.close()


def test_unit_that_never_answers(bench_stack) -> None:
    with SerialLine() as line:  # nothing on the other end: a unit that is off, or not flashed
        t = time.monotonic()
        with pytest.raises(NoAnswer, match="did not answer within 1s"):
            UnitConsole(line.host_path, timeout=1).open()
        assert time.monotonic() - t < 5
        r = _cli(bench_stack, "--port", line.host_path, "--station", "s", "--operator", "o", "--timeout", "1")
        assert r.exit_code == 1 and "did not answer" in r.output and "register failed at console" in r.output


def test_unit_that_answers_garbage(bench_stack) -> None:
    with SerialLine() as line:
        stop = threading.Event()
        fd = os.open(line.unit_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

        def noise() -> None:  # e.g. a modem left in AT mode, or the wrong baud rate
            while not stop.is_set():
                with contextlib.suppress(BlockingIOError):  # nobody reading: the bytes are lost
                    os.write(fd, b"\xf0\x0f AT\r\nERROR\r\n")
                time.sleep(0.05)

        th = threading.Thread(target=noise, daemon=True)
        th.start()
        try:
            with pytest.raises(Garbage, match="no MicroPython raw REPL") as e:
                UnitConsole(line.host_path, timeout=1).open()
            assert "ERROR" in str(e.value)
            with bench_stack.client("bench") as api, pytest.raises(RegisterError) as e2:
                register_unit(line.host_path, api, "s", "o", timeout=1)
            assert e2.value.step == "console" and e2.value.serial is None
        finally:
            stop.set()
            th.join()
            os.close(fd)


def test_missing_port() -> None:
    with pytest.raises(PortError, match="cannot open"):
        UnitConsole("/dev/does-not-exist-simsock", timeout=1).open()


def test_cloud_unreachable_nothing_is_written_or_recorded(bench_stack, make_console_unit) -> None:
    unit = make_console_unit()
    before = len(bench_stack.cloud.registry.units(limit=100_000))
    with ApiClient(f"http://127.0.0.1:{free_port()}", bench_stack.tokens["bench"], timeout=2) as api, \
            pytest.raises(RegisterError) as e:
        register_unit(unit.port, api, "s", "o", timeout=5)
    assert e.value.step == "cloud" and "unreachable" in str(e.value) and e.value.serial is None
    assert unit.identity_on_unit() is None
    assert len(bench_stack.cloud.registry.units(limit=100_000)) == before
    assert unit.is_running and unit.reboots == 0  # left in its REPL, not rebooted


def test_hardware_ids_of_another_unit_are_refused(bench_stack, make_console_unit) -> None:
    a = make_console_unit()
    with bench_stack.client("bench") as api:
        ra = register_unit(a.port, api, "s", "o", timeout=5, reboot=False)
        other = fake_hw_ids("someone-else")
        b = make_console_unit(hw={**other, "imei": a.hw["imei"]})  # a duplicate IMEI
        before = len(bench_stack.cloud.registry.units(limit=100_000))
        with pytest.raises(RegisterError) as e:
            register_unit(b.port, api, "s", "o", timeout=5)
        assert e.value.step == "cloud" and "refused" in str(e.value) and ra.serial in str(e.value)
        assert b.identity_on_unit() is None
        assert len(bench_stack.cloud.registry.units(limit=100_000)) == before
