"""`simsock bench run`: flash → register → verify → label on many ports at once.

    cfg = RunConfig(image=Path(".build/out/flash.bin"), station="bench-1", operator="ann", out=Path("run1"))
    run = BenchRun(cfg, api_factory=lambda: ApiClient(url, token), cancel=threading.Event())
    run.start("/dev/ttyUSB0"); run.start("/dev/ttyUSB1")
    run.wait()                       # or: set run.cancel (Ctrl-C) and wait: units in flight fail "interrupted"
    report, paths = run.finish()     # out/report.json, units.csv, summary.csv; labels in out/labels/

One thread per port; each port's unit goes through the steps in order and stops at the first
failure — one failing unit never stops the others. What each port is doing is in `run.states`
(port, serial, step, progress %, result) for a live table (`status_table`). Every unit ends as
one `UnitOutcome` (report.py): PASS only when flash, register, verify and label all succeeded
and no cancel came before the end; a cancel makes every unit still in flight a FAIL
"interrupted at <step>", and a unit whose verify was waiting is recorded in the cloud as verify
failed (never left looking good).

Cloud records: the `flash` step is posted once registration gave the unit a serial (a blank
unit has none); register, verify and label record themselves (register.py, verify.py, the label
step here). `watch_ports` polls serial.tools.list_ports for new ports matching a USB VID/PID and
starts a unit on each (a port that goes away and comes back is a new unit).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.api_client import ApiClient, ApiError
from provisioning.bench.flash import DEFAULT_OFFSET, FlashError, FlashProgress, FlashResult, flash_unit
from provisioning.bench.label import label_info, write_label
from provisioning.bench.register import RegisterError, register_unit
from provisioning.bench.report import UnitOutcome, build_report, write_report
from provisioning.bench.verify import VerifyResult, verify_unit

STEPS = ("flash", "register", "verify", "label")
# share of the progress column per step (flash dominates a real unit's time)
_SPAN = {"flash": (0, 70), "register": (70, 85), "verify": (85, 98), "label": (98, 100)}


@dataclass
class RunConfig:
    image: Path
    station: str
    operator: str
    out: Path
    offset: int = DEFAULT_OFFSET
    chip: str = "esp32"
    baud: int = 921600
    stub: bool = True
    connect_mode: str = "default-reset"
    connect_attempts: int = 7
    after: str = "hard-reset"
    expect_flash_size: int | None = None
    register_timeout: float = 20.0  # the unit boots the fresh firmware first
    settle: float = 2.0  # seconds after the flash's reset before the console is opened (the unit boots)
    ready: Callable[[str], None] | None = None  # instead of `settle`: returns once the unit on port booted
    register_baud: int = 115200
    verify_timeout: float = 60.0
    bundle_hash: str | None = None


@dataclass
class PortState:
    """One unit on one port, as the live table shows it."""

    port: str
    step: str = "waiting"
    progress: float = 0.0  # percent of the whole flow
    result: str = ""  # "" while running, PASS or FAIL
    serial: str | None = None
    device_id: str | None = None
    reason: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None


class Interrupted(Exception):
    def __init__(self, step: str) -> None:
        super().__init__(f"interrupted at {step} (bench stopped): not a good unit")
        self.step = step


class _StepFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


def _strip_port(port: str, message: str) -> str:
    return message[len(port) + 2:] if message.startswith(port + ": ") else message


class BenchRun:
    """Runs units on ports in parallel threads; see the module doc."""

    def __init__(self, cfg: RunConfig, api_factory: Callable[[], ApiClient], *,
                 cancel: threading.Event | None = None, verify_slice: float = 1.0) -> None:
        self.cfg = cfg
        self.api_factory = api_factory
        self.cancel = cancel or threading.Event()
        self.verify_slice = verify_slice
        self.states: list[PortState] = []  # every unit started, in order
        self.outcomes: list[UnitOutcome] = []
        self.flash_results: dict[int, FlashResult] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # --- public ---------------------------------------------------------------------------

    def start(self, port: str) -> PortState | None:
        """Start a unit on `port` (not after a cancel)."""
        if self.cancel.is_set():
            return None
        st = PortState(port)
        with self._lock:
            self.states.append(st)
        t = threading.Thread(target=self._one, args=(st,), name=f"bench {port}", daemon=True)
        self._threads.append(t)
        t.start()
        return st

    def busy(self, port: str) -> bool:
        with self._lock:
            return any(s.port == port and not s.result for s in self.states)

    def running(self) -> int:
        with self._lock:
            return sum(1 for s in self.states if not s.result)

    def wait(self, timeout: float | None = None) -> bool:
        """Join every unit's thread; True when all ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._threads):
            while t.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                t.join(0.2 if left is None else min(0.2, left))
        return True

    def report(self) -> dict[str, Any]:
        with self._lock:
            return build_report(list(self.outcomes))

    def finish(self) -> tuple[dict[str, Any], list[Path]]:
        """Write the report (report.json, units.csv, summary.csv) into cfg.out."""
        rep = self.report()
        return rep, write_report(rep, self.cfg.out)

    # --- one unit -------------------------------------------------------------------------

    def _set(self, st: PortState, step: str, frac: float = 0.0) -> None:
        lo, hi = _SPAN.get(step, (st.progress, st.progress))
        st.step, st.progress = step, round(lo + (hi - lo) * max(0.0, min(1.0, frac)), 1)

    def _check(self, step: str) -> None:
        if self.cancel.is_set():
            raise Interrupted(step)

    def _one(self, st: PortState) -> None:
        t0 = time.monotonic()
        steps: dict[str, float] = {}
        ok, failed_step, reason = False, None, None
        api: ApiClient | None = None
        try:
            api = self.api_factory()
            step_t = time.monotonic()
            self._set(st, "flash")
            self._check("flash")
            res = self._flash(st)
            steps["flash"] = round(time.monotonic() - step_t, 3)

            step_t = time.monotonic()
            self._set(st, "register")
            self._check("register")
            self._settle(st)
            self._register(st, api, res)
            steps["register"] = round(time.monotonic() - step_t, 3)

            step_t = time.monotonic()
            self._set(st, "verify")
            self._check("verify")
            self._verify(st, api)
            steps["verify"] = round(time.monotonic() - step_t, 3)

            step_t = time.monotonic()
            self._set(st, "label")
            self._check("label")
            self._label(st, api)
            steps["label"] = round(time.monotonic() - step_t, 3)
            self._check("label")  # a cancel during the last step: still not counted as good
            ok = True
        except Interrupted as exc:
            failed_step, reason = exc.step, str(exc)
        except _StepFailed as exc:
            failed_step, reason = exc.step, exc.reason
        except Exception as exc:  # a bug must not stop the other ports, nor count as a good unit
            failed_step, reason = st.step, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            if api is not None:
                api.close()
        st.finished = time.time()
        st.started = st.finished - (time.monotonic() - t0)
        st.reason = reason
        if ok:
            st.step, st.progress = "done", 100.0
        outcome = UnitOutcome(port=st.port, ok=ok, started=st.started, finished=st.finished, serial=st.serial,
                              device_id=st.device_id, failed_step=failed_step, reason=reason, steps=steps)
        with self._lock:
            self.outcomes.append(outcome)
            st.result = "PASS" if ok else "FAIL"

    def _flash(self, st: PortState) -> FlashResult:
        c = self.cfg

        def progress(p: FlashProgress) -> None:
            if p.phase == "write" and p.total:
                self._set(st, "flash", 0.05 + 0.85 * p.done / p.total)
            elif p.phase in ("verify", "reset"):
                self._set(st, "flash", 0.95)

        try:
            res = flash_unit(st.port, c.image, offset=c.offset, chip=c.chip, baud=c.baud, stub=c.stub,
                             connect_mode=c.connect_mode, connect_attempts=c.connect_attempts, after=c.after,
                             expect_flash_size=c.expect_flash_size, progress=progress, cancel=self.cancel)
        except FlashError as exc:
            if self.cancel.is_set() and exc.message.startswith("interrupted"):
                raise Interrupted("flash") from None
            raise _StepFailed("flash", f"{exc.step}: {exc.message}") from None
        with self._lock:
            self.flash_results[id(st)] = res
        return res

    def _settle(self, st: PortState) -> None:
        """Let the freshly flashed unit boot before its console gets a Ctrl-C: a break sent while the
        firmware is still starting (before MicroPython handles it) can stop the boot."""
        if self.cfg.ready is not None:
            self.cfg.ready(st.port)
        elif self.cfg.settle > 0 and self.cancel.wait(self.cfg.settle):
            raise Interrupted("register")

    def _register(self, st: PortState, api: ApiClient, flashed: FlashResult) -> None:
        c = self.cfg
        try:
            reg = register_unit(st.port, api, c.station, c.operator, bundle_hash=c.bundle_hash,
                                timeout=c.register_timeout, baud=c.register_baud,
                                progress=lambda _s: self._set(st, "register", 0.5))
        except RegisterError as exc:
            st.serial = exc.serial
            if exc.serial:
                self._record_flash(api, exc.serial, flashed)
            raise _StepFailed("register", f"{exc.step}: {_strip_port(st.port, exc.message)}") from None
        st.serial, st.device_id = reg.serial, reg.device_id
        self._record_flash(api, reg.serial, flashed)

    def _record_flash(self, api: ApiClient, serial: str, flashed: FlashResult) -> None:
        with contextlib.suppress(ApiError):  # best effort: the flash was verified by MD5; this is the record
            api.unit_result(serial, "flash", True, detail=flashed.detail(), station=self.cfg.station,
                            operator=self.cfg.operator)

    def _verify(self, st: PortState, api: ApiClient) -> None:
        """verify_unit in short unrecorded slices (so a cancel is seen within one), then recorded once."""
        c = self.cfg
        assert st.serial is not None
        t0 = time.monotonic()
        deadline = t0 + c.verify_timeout
        last: VerifyResult | None = None
        while True:
            left = deadline - time.monotonic()
            sl = max(0.05, min(self.verify_slice, left))
            last = verify_unit(api, st.serial, timeout=sl, record=False)
            self._set(st, "verify", (time.monotonic() - t0) / max(c.verify_timeout, 0.001))
            if last.ok:
                final = verify_unit(api, st.serial, timeout=5.0, station=c.station, operator=c.operator)
                if not final.ok:
                    raise _StepFailed("verify", final.reason or "verify failed")
                return
            waiting = (last.reason or "").startswith("no heartbeat")
            if not waiting:  # not registered, unknown, void...: record that reason as verify_unit words it
                final = verify_unit(api, st.serial, timeout=0.05, station=c.station, operator=c.operator)
                raise _StepFailed("verify", final.reason or last.reason or "verify failed")
            if self.cancel.is_set():
                self._record_verify_fail(api, st.serial, "interrupted while waiting for the first heartbeat "
                                                         "(bench stopped)")
                raise Interrupted("verify")
            if time.monotonic() >= deadline:
                reason = (last.reason or "").replace(f"within {sl:g}s", f"within {c.verify_timeout:g}s")
                self._record_verify_fail(api, st.serial, reason)
                raise _StepFailed("verify", reason)

    def _record_verify_fail(self, api: ApiClient, serial: str, reason: str) -> None:
        with contextlib.suppress(ApiError):
            api.unit_result(serial, "verify", False, station=self.cfg.station, operator=self.cfg.operator,
                            detail={"error": reason, "timeout_s": self.cfg.verify_timeout})

    def _label(self, st: PortState, api: ApiClient) -> None:
        assert st.serial is not None
        try:
            info = label_info(api, st.serial)
            path, digest = write_label(info, self.cfg.out / "labels")
            api.unit_result(st.serial, "label", True, station=self.cfg.station, operator=self.cfg.operator,
                            detail={"file": path.name, "sha256": digest, "qr": info.qr_text, "fw": info.fw})
        except (ApiError, OSError) as exc:
            raise _StepFailed("label", f"label not written or not recorded: {exc}") from None


# --- watching for new ports ---------------------------------------------------------------


def port_matches(info: Any, vid: int | None, pid: int | None) -> bool:
    """A serial.tools.list_ports entry with the given USB VID (and PID, when given)."""
    pv, pp = getattr(info, "vid", None), getattr(info, "pid", None)
    if pv is None:
        return False  # not a USB device (a built-in UART, a pty)
    return (vid is None or pv == vid) and (pid is None or pp == pid)


def watch_ports(on_new: Callable[[str], Any], cancel: threading.Event, *, vid: int | None, pid: int | None,
                poll: float = 0.5, comports: Callable[[], Iterable[Any]] | None = None,
                include_present: bool = True, until: Callable[[], bool] | None = None) -> None:
    """Poll the serial ports until `cancel` is set (or `until()` is true); call `on_new(device)` for each
    matching port that appears. A port that vanishes and comes back counts as new (the next unit on
    that jig). `include_present`: also start on matching ports already there when watching starts."""
    if comports is None:
        from serial.tools import list_ports

        comports = list_ports.comports
    seen: set[str] = set()
    first = True
    while not cancel.is_set():
        now = {p.device for p in comports() if port_matches(p, vid, pid)}
        new = now - seen if (include_present or not first) else set()
        for dev in sorted(new):
            on_new(dev)
        seen = now
        first = False
        if until is not None and until():
            return
        cancel.wait(poll)


# --- the live table ---------------------------------------------------------------------------


def status_table(run: BenchRun) -> Any:
    from rich.markup import escape
    from rich.table import Table

    with run._lock:
        states = list(run.states)
        passed = sum(1 for o in run.outcomes if o.ok)
        failed = sum(1 for o in run.outcomes if not o.ok)
    t = Table(title=f"bench run: {passed} PASS, {failed} FAIL, {len(states) - passed - failed} running",
              title_justify="left")
    for col in ("port", "unit", "step", "progress", "result"):
        t.add_column(col, justify="right" if col == "progress" else "left")
    for s in states:
        res = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]"}.get(s.result, "…")
        if s.result == "FAIL" and s.reason:
            res += f" {escape(s.reason[:70])}"
        t.add_row(escape(s.port), escape(s.serial or "-"), escape(s.step), f"{s.progress:.0f}%", res)
    return t


__all__ = ["STEPS", "BenchRun", "Interrupted", "PortState", "RunConfig", "port_matches", "status_table",
           "watch_ports"]
