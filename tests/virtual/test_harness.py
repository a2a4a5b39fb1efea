"""The virtual-unit harness, exercised with a stand-in firmware (tests/virtual/fixtures)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from provisioning.virtual import store_file
from provisioning.virtual.fleet import Fleet
from provisioning.virtual.unit import VirtualUnit, fake_hw_ids, luhn_check_digit, luhn_valid, unit_processes

from .conftest import STANDIN, UnitFactory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- identity and files --------------------------------------------------------------------


def test_luhn_known_values() -> None:
    assert luhn_check_digit("49015420323751") == "8"  # IMEI 490154203237518 (3GPP example)
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


@pytest.mark.parametrize("device_id", ["vu-0001", "vu-0002", "slot-ä", "x"])
def test_fake_hw_ids_are_plausible_and_stable(device_id: str) -> None:
    hw = fake_hw_ids(device_id)
    assert hw == fake_hw_ids(device_id)
    assert re.fullmatch(r"[0-9a-f]{12}", hw["uid"])
    assert re.fullmatch(r"\d{15}", hw["imei"]) and luhn_valid(hw["imei"])
    assert re.fullmatch(r"89\d{17,18}", hw["iccid"]) and luhn_valid(hw["iccid"])


def test_fake_hw_ids_differ_between_units() -> None:
    ids = [fake_hw_ids(f"vu-{i:04d}") for i in range(200)]
    for key in ("uid", "imei", "iccid"):
        assert len({hw[key] for hw in ids}) == len(ids)


def test_provision_writes_the_unit_directory(tmp_path: Path) -> None:
    hw = {"uid": "a1b2c3d4e5f6", "imei": "490154203237518", "iccid": "8949000000000000003"}
    u = VirtualUnit(
        tmp_path / "u",
        "slot-7",
        broker_host="10.0.0.5",
        broker_port=1884,
        config={"hb_s": 2},
        hw=hw,
        serial="SN-1",
        mqtt_pass="pw",
        identity={"extra": 1},
    )
    u.provision()
    assert store_file.read(tmp_path / "u" / "identity.json") == {
        "device_id": "slot-7",
        "serial": "SN-1",
        "mqtt_user": "slot-7",
        "mqtt_pass": "pw",
        "extra": 1,
    }
    cfg = store_file.read(tmp_path / "u" / "config.json")
    assert cfg == {"broker_host": "10.0.0.5", "broker_port": 1884, "hb_s": 2}
    assert json.loads((tmp_path / "u" / "sim" / "hw.json").read_text()) == hw
    assert set(json.loads((tmp_path / "u" / "sim" / "in.json").read_text())) == {"mains", "temp_c", "signal_dbm"}
    assert not u.relay() and u.state() is None and u.console() == ""
    u.set_inputs(temp_c=31)
    u.provision()  # re-provisioning keeps the inputs a test has set
    assert u.inputs()["temp_c"] == 31.0
    u.write_config(hb_s=5)
    assert store_file.read(tmp_path / "u" / "config.json")["hb_s"] == 5
    assert not list((tmp_path / "u").glob("**/*.tmp*")) and not list((tmp_path / "u").glob("**/*.new"))


def test_command_line_and_environment(tmp_path: Path) -> None:
    u = VirtualUnit(tmp_path / "u", "vu-1", heapsize="64K")
    cmd = u.command()
    assert cmd[1:3] == ["-X", "heapsize=64K"] and cmd[-1].endswith("firmware/main.py")
    env = u._environ()
    assert env["SIMSOCK_ROOT"] == str(tmp_path / "u")
    assert env["MICROPYPATH"].endswith("firmware:.frozen")


# --- process life ----------------------------------------------------------------------------


def test_start_wait_log_stop(standin_unit: UnitFactory) -> None:
    u = standin_unit(heapsize="256K")
    assert not u.is_running and u.pid is None and u.returncode is None
    u.start()  # provisions on first start
    m = u.wait_log(r"boot (\d+) device=(\S+) serial=(\S+)", 10)
    assert m.groups() == ("1", "vu-1", u.serial)
    assert u.is_running and u.returncode is None and u.pid is not None
    u.wait_log(r"WARN standin: stderr line", 5)  # stderr lands in the console too
    u.start()  # already running: no second process
    assert u.starts == 1
    pid = u.pid
    u.stop()
    assert not u.is_running and u.returncode == -signal.SIGTERM and not _alive(pid)
    assert u.reboots == 0


def test_exit_42_is_a_reboot(standin_unit: UnitFactory) -> None:
    u = standin_unit(standin={"reboot_at": [1, 2]})
    u.start()
    u.wait_log(r"boot 3 ", 10)
    assert u.reboots == 2 and u.starts == 3 and u.is_running
    assert len(re.findall(r"rebooting", u.console())) == 2
    u.stop()


def test_other_exit_codes_stay_down(standin_unit: UnitFactory) -> None:
    u = standin_unit(standin={"exit": 3})
    u.start()
    assert u.wait_exit(10) == 3
    time.sleep(0.3)
    assert not u.is_running and u.reboots == 0 and u.starts == 1 and u.returncode == 3


def test_kill9_is_a_power_cut_and_start_boots_again(standin_unit: UnitFactory) -> None:
    u = standin_unit()
    u.start()
    u.wait_log(r"inputs mains=True", 10)
    u.kill9()
    assert u.returncode == -signal.SIGKILL and not u.is_running
    time.sleep(0.3)
    assert not u.is_running and u.reboots == 0  # a power cut is not a reboot
    mark = u.mark()
    u.start()
    u.wait_log(r"boot 2 ", 10, since=mark)


def test_restart_is_a_power_cycle(standin_unit: UnitFactory) -> None:
    u = standin_unit()
    u.start()
    u.wait_log(r"boot 1 ", 10)
    pid = u.pid
    mark = u.mark()
    u.restart()
    u.wait_log(r"boot 2 ", 10, since=mark)
    assert u.pid != pid and not _alive(pid) and u.is_running and u.reboots == 0 and u.starts == 2
    u.stop()


class _DeafUnit(VirtualUnit):
    """A "firmware" that ignores SIGTERM (MicroPython scripts cannot set signal handlers)."""

    def command(self) -> list[str]:
        code = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('deaf', flush=True); time.sleep(60)"
        )
        return [sys.executable, "-c", code]


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    with _DeafUnit(tmp_path / "deaf", "deaf-1") as u:
        u.start()
        u.wait_log(r"^deaf$", 10)
        t0 = time.monotonic()
        u.stop(timeout=0.5)
        assert u.returncode == -signal.SIGKILL and not u.is_running
        assert 0.4 < time.monotonic() - t0 < 5


def test_stop_while_rebooting_in_a_loop_leaves_nothing(standin_unit: UnitFactory, tmp_path: Path) -> None:
    u = standin_unit(standin={"reboot_at": list(range(1, 10_000))})
    u.start()
    u.wait_reboots(5, 20)
    u.stop()
    reboots = u.reboots
    time.sleep(0.3)
    assert u.reboots == reboots and not u.is_running
    assert unit_processes(tmp_path) == []


# --- console -----------------------------------------------------------------------------------


def test_wait_log_waits_for_the_next_occurrence(standin_unit: UnitFactory) -> None:
    u = standin_unit()
    u.start()
    first = u.wait_log(r"inputs mains=(\w+)", 10)
    assert first.group(1) == "True"
    assert u.wait_log(r"inputs mains=", 1).group(0) == "inputs mains="  # since=None: from the start
    mark = u.mark()
    with pytest.raises(TimeoutError) as e:
        u.wait_log(r"inputs mains=", 0.5, since=mark)
    msg = str(e.value)
    assert "inputs mains=" in msg and "last console lines" in msg and "boot 1 " in msg  # the tail is shown
    u.set_inputs(mains=False)
    assert u.wait_log(r"inputs mains=(\w+)", 10, since=mark).group(1) == "False"
    # chaining: what comes after the line just matched
    after = u.last_offset
    u.set_inputs(signal_dbm=-90)
    assert u.wait_log(r"inputs mains=(\w+) .*signal_dbm=(\S+)", 10, since=after).groups() == ("False", "-90")
    u.stop()


def test_wait_log_timeout_shows_the_last_20_lines(standin_unit: UnitFactory) -> None:
    u = standin_unit(standin={"spam": 50, "exit": 0})
    u.start()
    u.wait_exit(10)
    with pytest.raises(TimeoutError) as e:
        u.wait_log(r"never printed", 0.1)
    tail = str(e.value).split("last console lines", 1)[1].splitlines()[1:]
    assert len(tail) == 20 and "exiting 0" in tail[-1] and "returncode=0" in str(e.value)


def test_wait_log_gives_up_at_once_when_the_unit_is_down(standin_unit: UnitFactory) -> None:
    u = standin_unit(standin={"exit": 1})
    u.start()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="before the unit went down") as e:
        u.wait_log(r"never printed", 30)
    assert time.monotonic() - t0 < 5 and "exiting 1" in str(e.value)
    assert u.wait_log(r"exiting (\d)", 30).group(1) == "1"  # what is there is still found


def test_wait_log_keeps_waiting_across_a_reboot(standin_unit: UnitFactory) -> None:
    u = standin_unit(standin={"reboot_at": [1, 2, 3]})
    u.start()
    assert u.wait_log(r"boot (4) ", 10).group(1) == "4"
    u.stop()


# --- simulated I/O -----------------------------------------------------------------------------


def test_set_inputs_relay_and_state(standin_unit: UnitFactory) -> None:
    u = standin_unit()
    assert u.relay() is False and u.state() is None
    u.start()
    u.wait_log(r"inputs mains=True", 10)
    assert u.relay() is True
    assert u.state() == {"boot": 1, "relay": True}
    mark = u.mark()
    u.set_inputs(mains=False, temp_c=-3.5)
    u.wait_log(r"inputs mains=False temp_c=-3.5 signal_dbm=-71", 10, since=mark)
    assert u.relay() is False and u.state() == {"boot": 1, "relay": False}
    assert u.inputs() == {"mains": False, "temp_c": -3.5, "signal_dbm": -71}
    u.set_inputs(unknown=("temp_c", "signal_dbm"))
    u.wait_log(r"inputs mains=False temp_c=None signal_dbm=None", 10, since=mark)
    with pytest.raises(ValueError):
        u.set_inputs(unknown=("mains",))
    u.stop()


def test_set_inputs_is_atomic_under_fast_updates(standin_unit: UnitFactory) -> None:
    u = standin_unit()
    u.start()
    u.wait_log(r"inputs mains=True", 10)
    for i in range(200):
        u.set_inputs(mains=bool(i % 2), signal_dbm=-50 - i % 40)
    mark_ok = u.mark()
    u.set_inputs(mains=True, signal_dbm=-42)
    u.wait_log(r"signal_dbm=-42", 10, since=mark_ok)
    assert u.is_running  # never read a torn file
    u.stop()


# --- fleet -----------------------------------------------------------------------------------------


def test_fleet_starts_and_stops_all(tmp_path: Path) -> None:
    with Fleet(tmp_path / "fleet", 4, main=STANDIN, broker_port=1999) as fleet:
        assert [u.device_id for u in fleet] == ["vu-0001", "vu-0002", "vu-0003", "vu-0004"]
        assert fleet["vu-0003"] is fleet[2] and len(fleet) == 4
        extra = fleet.add("special", heapsize="128K")
        assert extra.root == (tmp_path / "fleet" / "special").resolve() and extra.heapsize == "128K"
        with pytest.raises(ValueError):
            fleet.add("special")
        fleet.start_all()
        fleet.wait_all_log(r"broker 127\.0\.0\.1:1999", 10)
        assert len(fleet.running()) == 5
        assert len({u.hw["imei"] for u in fleet}) == 5
        fleet.stop_all()
        assert fleet.running() == [] and all(u.returncode == -signal.SIGTERM for u in fleet)


def test_fleet_kills_everything_when_the_test_fails(tmp_path: Path) -> None:
    base = tmp_path / "fleet"
    with pytest.raises(RuntimeError, match="boom"), Fleet(base, 3, main=STANDIN) as fleet:
        fleet.start_all()
        fleet.wait_all_log(r"boot 1 ", 10)
        assert len(unit_processes(base)) == 3
        raise RuntimeError("boom")
    assert unit_processes(base) == []
    assert all(not u.is_running for u in fleet)
