"""Heartbeats per second that cloud ingest workers write to SQLite and to PostgreSQL.

    python bench/ingest_rate.py [--devices 1000] [--seconds 12] [--only sqlite-1,pg-2]

A private Mosquitto, a private PostgreSQL cluster (cloud_stub.pgserver; fsync on,
synchronous_commit=off: WAL flushed in the background, like SQLite's WAL with
synchronous=NORMAL that the registry uses), and for each configuration a fresh database
and fresh worker processes:

- `sqlite-1` / `pg-1`: one `Cloud` process with plain subscriptions (`simsock/v1/+/hb`);
- `sqlite-2` / `pg-2`: two `Cloud` processes in worker group `ingest`
  (`$share/ingest/simsock/v1/+/hb`, Mosquitto 2 hands each message to one of them).

A paho publisher in this process sends valid 25-byte heartbeats (QoS 1, the units' QoS;
`cloud_stub.protocol.encode_heartbeat`, consecutive sequence numbers per device) for
`--devices` device ids, round after round, keeping at most `--backlog` heartbeats in
flight between the broker and the database (so Mosquitto's per-client queue never
overflows and nothing is dropped). One warm-up round first creates every device, so the
measured heartbeats are the steady state: one transaction per heartbeat (device
check, status row read under lock, heartbeat update). The figure is rows ingested per
second (the sum of `device_status.hb_count`) over `--seconds`, after a 2 s settle.

Everything shares the machine's cores: publisher, broker, PostgreSQL and the workers.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cloud_stub import protocol  # noqa: E402
from cloud_stub.broker import MosquittoBroker  # noqa: E402
from cloud_stub.pgserver import PgServer  # noqa: E402
from cloud_stub.registry import Registry  # noqa: E402

CONFIGS = ("sqlite-1", "pg-1", "sqlite-2", "pg-2")


def worker_main(broker: str, db: str, group: str, publisher: bool) -> None:
    """One ingest worker process: a Cloud until SIGTERM."""
    from cloud_stub.service import Cloud

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    cloud = Cloud(broker, db, hb_interval=3600, sweep_interval=5, worker_group=group or None, publisher=publisher)
    cloud.start(timeout=20)
    print("ready", flush=True)
    stop.wait()
    cloud.close()


def start_workers(n: int, broker_url: str, db_url: str) -> list[subprocess.Popen[str]]:
    group = "ingest" if n > 1 else ""
    procs = []
    for i in range(n):
        p = subprocess.Popen([sys.executable, __file__, "--worker", broker_url, db_url, group, "1" if i == 0 else "0"],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
        procs.append(p)
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker did not start (exit {p.poll()})")
    return procs


def stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


class Load:
    """Heartbeats for `devices` ids, round after round, at most `backlog` not yet in the database."""

    def __init__(self, broker: MosquittoBroker, reg: Registry, devices: int, backlog: int) -> None:
        self.reg = reg
        self.devices = [f"bench-{i:05d}" for i in range(devices)]
        self.topics = [protocol.topic(d, "hb") for d in self.devices]
        self.backlog = backlog
        self.sent = 0
        self.seq = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-load", protocol=mqtt.MQTTv311)
        self.c.max_inflight_messages_set(200)
        self.c.max_queued_messages_set(0)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def ingested(self) -> int:
        return self.reg.heartbeat_count()

    def round(self, deadline: float) -> bool:
        self.seq += 1
        payload = protocol.encode_heartbeat(self.seq, mode="active", desired_version=0, fw=(1, 2, 3),
                                            uptime_s=self.seq * 60, relay_on=True, temperature_c=21.5,
                                            signal_dbm=-70, free_heap=40_000)
        for i, topic in enumerate(self.topics):
            if i % 100 == 0:
                while self.sent - self.ingested() > self.backlog:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.005)
            self.c.publish(topic, payload, qos=1)
            self.sent += 1
        return True

    def drain(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.ingested() < self.sent:
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def run_config(name: str, broker: MosquittoBroker, pg: PgServer | None, tmp: Path, args: argparse.Namespace) -> dict:
    engine, n = name.split("-")
    db_url = f"sqlite:///{tmp / (name + '.db')}" if engine == "sqlite" else pg.create_database()  # type: ignore[union-attr]
    Registry(db_url).close()  # migrate once, before the workers race for it
    procs = start_workers(int(n), broker.url, db_url)
    reg = Registry(db_url)
    load = Load(broker, reg, args.devices, args.backlog)
    try:
        load.round(time.monotonic() + 60)  # warm-up: creates every device
        if not load.drain(60):
            raise RuntimeError("warm-up heartbeats were not all ingested")
        settle_end = time.monotonic() + 2
        while time.monotonic() < settle_end:
            load.round(settle_end)
        t0, c0 = time.monotonic(), load.ingested()
        end = t0 + args.seconds
        while time.monotonic() < end:
            load.round(end)
        t1, c1 = time.monotonic(), load.ingested()
        drained = load.drain(30)
        lost = load.sent - load.ingested()
    finally:
        load.close()
        stop_workers(procs)
        reg.close()
    return {"name": name, "engine": "SQLite" if engine == "sqlite" else "PostgreSQL", "workers": int(n),
            "rate": (c1 - c0) / (t1 - t0), "rows": c1 - c0, "sent": load.sent, "lost": lost, "drained": drained}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--backlog", type=int, default=800, help="heartbeats allowed between publish and database")
    ap.add_argument("--only", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    args = ap.parse_args()
    configs = [c.strip() for c in args.only.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r}: {', '.join(CONFIGS)}")
    console = Console()
    if not MosquittoBroker.available():
        sys.exit("mosquitto is not installed (apt-get install -y mosquitto)")
    need_pg = any(c.startswith("pg") for c in configs)
    if need_pg and (why := PgServer.unavailable()):
        sys.exit(f"PostgreSQL unavailable: {why}")
    kw = {"auth": False} if "auth" in inspect.signature(MosquittoBroker).parameters else {}
    broker = MosquittoBroker(**kw)  # type: ignore[arg-type]
    broker.start()
    pg = PgServer(fast=False, settings={"synchronous_commit": "off"}) if need_pg else None
    results = []
    try:
        if pg:
            pg.start()
        with tempfile.TemporaryDirectory(prefix="simsock-ingest-") as tmp:
            for name in configs:
                console.print(f"[dim]{name}: {args.devices} devices, {args.seconds:g} s …[/dim]")
                results.append(run_config(name, broker, pg, Path(tmp), args))
    finally:
        if pg:
            pg.stop()
        broker.stop()
    table = Table(title=f"heartbeats ingested per second ({args.devices} devices, {os.cpu_count()} cores)")
    for col in ("database", "workers", "hb/s", "rows measured", "lost"):
        table.add_column(col, justify="right" if col != "database" else "left")
    for r in results:
        table.add_row(r["engine"], str(r["workers"]), f"{r['rate']:.0f}", str(r["rows"]), str(r["lost"]))
    console.print(table)
    from bench._util import footer

    footer(console)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1")
    else:
        main()
