"""The whole flow on virtual units: heartbeats, suspend at zero balance, resume on top-up.

Everything is real except time: intervals are scaled down (heartbeat every 2 s,
suspended check-in every 4–8 s instead of 10–60 minutes) so the demo ends in well
under two minutes. The same scaled config is what the integration tests use.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cloud_stub.run import serve
from cloud_stub.service import CloudEvent
from provisioning.virtual.fleet import Fleet

# Time scaled down for the demo and the tests; the protocol and the code paths are the real ones.
SCALED_CONFIG: dict[str, Any] = {
    "hb_s": 2,
    "keepalive_s": 10,
    "ack_timeout_s": 4,
    "backoff_min_s": 0.5,
    "backoff_max_s": 4,
    "checkin_suspended_s": [4, 8],
    "checkin_wait_s": 2,
    "mains_poll_ms": 200,
}
SCALED_HB_S = 2.0


@dataclass
class UnitReport:
    device_id: str
    heartbeats: int = 0
    modes_applied: list[str] = field(default_factory=list)
    converge_s: dict[str, float] = field(default_factory=dict)  # phase -> seconds from publish to ack


@dataclass
class DemoResult:
    ok: bool
    workdir: Path
    units: list[UnitReport]
    failures: list[str]
    duration_s: float


class _Recorder:
    """Collects cloud events from the MQTT thread for the live view and the summary."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: deque[str] = deque(maxlen=8)
        self.desired_acks: dict[str, list[tuple[float, int, str]]] = {}

    def __call__(self, ev: CloudEvent) -> None:
        with self.lock:
            d = ev.data
            if ev.kind == "ack" and "dv" in d:
                if d.get("ok"):
                    self.desired_acks.setdefault(ev.device_id or "?", []).append((time.monotonic(), d["dv"], d["mode"]))
                verdict = f"ok {d.get('mode')}" if d.get("ok") else f"refused: {d.get('err')}"
                self.log.append(f"{ev.device_id}: ack desired v{d['dv']} {verdict}")
            elif ev.kind == "ack":
                verdict = f"ok {d.get('res')}" if d.get("ok") else f"refused: {d.get('err')}"
                self.log.append(f"{ev.device_id}: ack command {d.get('id')} {verdict}")
            elif ev.kind == "status":
                self.log.append(f"{ev.device_id}: {d.get('old')} → {d.get('status')}")
            elif ev.kind == "alert":
                self.log.append(f"{ev.device_id}: alert {d}")

    def first_ack_after(self, device_id: str, t0: float, version: int) -> float | None:
        with self.lock:
            for at, dv, _mode in self.desired_acks.get(device_id, []):
                if dv >= version and at >= t0:
                    return at - t0
        return None


def _table(devices: list[dict[str, Any]], phase: str) -> Table:
    t = Table(title=f"simsock demo — {phase}", expand=False)
    for col in ("device", "status", "desired state", "unit has", "hb", "seq", "relay", "mains", "temp °C", "signal"):
        t.add_column(col)
    for d in devices:
        flags = d.get("hb_flags") or 0
        t.add_row(
            d["device_id"],
            d["status"],
            f"v{d.get('desired_version') or '-'} {d.get('desired_mode') or ''}",
            f"v{d['applied_version']} " + ("[green]✓[/green]" if d["converged"] else "[yellow]pending[/yellow]"),
            str(d.get("hb_count") or 0),
            str(d.get("last_seq") if d.get("last_seq") is not None else "-"),
            "on" if flags & 1 else "off",
            "yes" if flags & 2 else "no",
            f"{d['hb_temperature_c']:.1f}" if d.get("hb_temperature_c") is not None else "-",
            str(d.get("hb_signal_dbm") or "-"),
        )
    return t


def run_demo(
    units: int = 3,
    broker: str = "embedded",
    workdir: Path | None = None,
    console: Console | None = None,
    live: bool = True,
    timeout_s: float = 40.0,
) -> DemoResult:
    console = console or Console()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="simsock-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failures: list[str] = []
    rec = _Recorder()
    phase = ["starting"]

    with serve(broker, f"sqlite:///{workdir / 'cloud.db'}", hb_interval=SCALED_HB_S, sweep_interval=0.5) as served:
        cloud = served.cloud
        cloud.add_listener(rec)
        account = cloud.create_account("demo", balance_cents=500)
        host, port = cloud.host, cloud.port
        # every unit gets its own MQTT credentials from the cloud; the broker enforces them (docs/security.md)
        with Fleet(workdir / "units", prefix="sd", broker_host=host, broker_port=port, config=SCALED_CONFIG,
                   issue_credentials=cloud.issue_credentials) as fleet:
            ids = [fleet.add().device_id for _ in range(units)]
            for device_id in ids:
                cloud.add_device(account.id, device_id)

            def view() -> Group:
                log = Text("\n".join(rec.log) or "(waiting for events)", style="dim")
                return Group(_table(cloud.devices(account.id), phase[0]), log)

            def step(name: str, cond: Callable[[], bool], limit: float = timeout_s) -> bool:
                phase[0] = name
                if cloud.wait_for(cond, limit):
                    return True
                failures.append(f"timed out after {limit:.0f}s: {name}")
                return False

            def all_devices(pred: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
                return lambda: all(pred(d) for d in cloud.devices(account.id))

            with Live(view(), console=console, refresh_per_second=4, transient=False) if live else _NoLive() as lv:
                ticker = _Ticker(lambda: lv.update(view()))
                ticker.start()
                try:
                    fleet.start_all()
                    step("units boot, connect and send heartbeats",
                         all_devices(lambda d: d["status"] == "online" and (d.get("hb_count") or 0) >= 3))

                    phase[0] = "relay command to the first unit"
                    cid = cloud.send_command(ids[0], "relay", "on")
                    ack = cloud.wait_ack(cid, timeout=10)
                    if not (ack and ack.get("ok")):
                        failures.append(f"relay command not acknowledged ok: {ack}")

                    # Zero balance: the account suspends and every unit must follow.
                    t_suspend = time.monotonic()
                    change = cloud.charge(account.id, cloud.account(account.id)["balance_cents"], reason="demo")
                    v_suspend = max(d.version for d in change.desired) if change.desired else 0
                    step("balance 0 → account suspended; units apply, ack and go dormant",
                         all_devices(lambda d: d["applied_version"] >= v_suspend and d["status"] == "dormant"))

                    phase[0] = "relay command to a suspended unit (refused at its next check-in)"
                    cid = cloud.send_command(ids[-1], "relay", "toggle")
                    refused = cloud.wait_ack(cid, timeout=20)
                    if not refused or refused.get("ok"):
                        failures.append(f"a suspended unit did not refuse a relay command: {refused}")

                    t_resume = time.monotonic()
                    change = cloud.top_up(account.id, 2000, reason="demo")
                    v_resume = max(d.version for d in change.desired) if change.desired else 0
                    step("top-up → account active; units pick it up at their next check-in",
                         all_devices(lambda d: d["applied_version"] >= v_resume and d["status"] == "online"))
                    step("heartbeats flowing again",
                         lambda: all(cloud.heartbeat_count(i) >= 1 for i in ids), 10)
                    phase[0] = "done"
                    lv.update(view())
                finally:
                    ticker.stop()

            reports = []
            for device_id in ids:
                r = UnitReport(device_id, heartbeats=cloud.heartbeat_count(device_id))
                r.modes_applied = [m for _, _, m in rec.desired_acks.get(device_id, [])]
                for name, t0, v in (("suspend", t_suspend, v_suspend), ("resume", t_resume, v_resume)):
                    took = rec.first_ack_after(device_id, t0, v)
                    if took is not None:
                        r.converge_s[name] = took
                reports.append(r)

    result = DemoResult(not failures, workdir, reports, failures, time.monotonic() - started)
    _summary(console, result)
    return result


def _summary(console: Console, result: DemoResult) -> None:
    t = Table(title="summary")
    for col in ("device", "heartbeats", "modes applied", "suspend → ack", "resume → ack"):
        t.add_column(col)
    for r in result.units:
        t.add_row(
            r.device_id,
            str(r.heartbeats),
            " → ".join(r.modes_applied) or "-",
            f"{r.converge_s['suspend']:.2f} s" if "suspend" in r.converge_s else "-",
            f"{r.converge_s['resume']:.2f} s" if "resume" in r.converge_s else "-",
        )
    console.print(t)
    console.print(
        "Resume is bounded by the suspended check-in interval (scaled here to 4–8 s; 10–60 min in the field)."
    )
    for f in result.failures:
        console.print(f"[red]FAIL[/red] {f}")
    verdict = "[green]demo OK[/green]" if result.ok else "[red]demo FAILED[/red]"
    console.print(f"{verdict} in {result.duration_s:.1f} s — unit files and logs in {result.workdir}")


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _renderable: object) -> None:
        return None


class _Ticker(threading.Thread):
    """Refreshes the live view from the cloud's registry a few times a second."""

    def __init__(self, tick: Callable[[], None], period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self._tick, self._period, self._stop_ev = tick, period, threading.Event()

    def run(self) -> None:
        while not self._stop_ev.wait(self._period):
            self._tick()

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(2)
