"""Desired-state latency: from publishing `desired` to the unit's ack, median and p99 of 100 changes.

The cloud and its broker as `simsock cloud serve` runs them (`cloud_stub.run.serve()`: the
broker enforces credentials and ACLs), one virtual unit (the real firmware) with MQTT
credentials the cloud issued, and a paho client logged in with the broker's service account
(`Served.service_url`: only the cloud may publish `desired`). The client publishes
`{"v": n, "mode": "active"}` retained at QoS 1 on simsock/v1/<id>/desired with n = 1, 2, …
and waits for `{"dv": n, "ok": true, …}` on simsock/v1/<id>/ack before the next one. Every
newer version is applied (persisted to the unit's flash file) and acked even though the
mode stays `active`. Latency = paho publish() call → ack in paho's on_message (both
timestamps on this host, time.perf_counter). The device belongs to no account, so the
cloud never publishes a desired state of its own for it; it does ingest the unit's acks.

Runs on the embedded broker and on Mosquitto (the project's config: `set_tcp_nodelay
true`), with the unit at the default heap, at `-X heapsize=64K`, and at about the smallest
heaps bench/heap.py found (GC pressure). The firmware sets TCP_NODELAY on its own socket;
the bench's paho socket has it too, so the bench adds no Nagle stall of its own.

    python bench/desired_latency.py [--changes 100]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import build_mpy, footer, nearest_rank

from cloud_stub.broker import MosquittoBroker
from cloud_stub.run import serve
from cloud_stub.service import broker_credentials
from provisioning.virtual.unit import VirtualUnit

WARMUP = 3  # changes before the measured ones (first import paths, first flash write), not counted
# (firmware loaded as, -X heapsize): default heap, the 64K of the issue, about the smallest heaps that
# ran the full cycle in bench/heap.py (192K from source, 104–128K as .mpy) and 96K .mpy (boots, fails the cycle)
VARIANTS: list[tuple[str, str | None]] = [
    ("source", None), ("source", "64K"), ("source", "192K"), ("mpy", "128K"), ("mpy", "96K"),
]


@dataclass
class Run:
    broker: str
    variant: str
    heapsize: str | None
    latencies_ms: list[float]
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.variant}, heap {self.heapsize or '2M (default)'}"


class AckWaiter:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.acks: dict[int, tuple[float, dict[str, Any]]] = {}

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.perf_counter()
        try:
            d = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(d, dict) and isinstance(d.get("dv"), int):
            with self.cond:
                self.acks.setdefault(d["dv"], (t, d))
                self.cond.notify_all()

    def wait(self, v: int, timeout: float) -> tuple[float, dict[str, Any]] | None:
        with self.cond:
            self.cond.wait_for(lambda: v in self.acks, timeout)
            return self.acks.get(v)


def measure(broker_kind: str, variant: str, heapsize: str | None, mpy_dir: Path, work: Path, n: int,
            changes: int) -> Run:
    run = Run(broker_kind, variant, heapsize, [])
    dev = f"dl-{n:03d}"
    base = f"simsock/v1/{dev}/"
    waiter = AckWaiter()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{dev}", protocol=mqtt.MQTTv311)
    client.on_message = waiter.on_message
    kwargs: dict[str, Any] = {"heapsize": heapsize}
    if variant == "mpy":
        kwargs["env"] = {"MICROPYPATH": f"{mpy_dir}:.frozen"}
        kwargs["main"] = mpy_dir / "main.py"
    with serve(broker_kind, f"sqlite:///{work / f'cloud-{n:03d}.db'}", hb_interval=1.0) as served:
        cloud = served.cloud
        assert served.service_url is not None
        service = broker_credentials(served.service_url)
        if service is not None:
            client.username_pw_set(*service)
        user, password = cloud.issue_credentials(dev)  # the unit's own account (username = client id = dev)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        try:
            client.connect(cloud.host, cloud.port)
            # the bench's own socket must not add a Nagle stall (it publishes right after a PUBACK)
            sock = client.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.loop_start()
            if not connected.wait(5):
                run.error = "the bench's service-account client was refused"
                return run
            sub = threading.Event()
            client.on_subscribe = lambda *a: sub.set()
            client.subscribe(base + "ack", qos=1)
            sub.wait(5)
            with VirtualUnit(work / dev, dev, broker_host=cloud.host, broker_port=cloud.port, mqtt_user=user,
                             mqtt_pass=password, **kwargs) as unit:
                unit.start()
                try:
                    unit.wait_log(r"INFO unit: heartbeat seq=1$", 20)  # connected and subscribed
                except TimeoutError:
                    err = [ln for ln in unit.console_tail(10) if "Error" in ln or "refused" in ln]
                    run.error = "does not boot: " + (err[-1].strip() if err else "no heartbeat")
                    return run
                for v in range(1, WARMUP + changes + 1):
                    payload = json.dumps({"v": v, "mode": "active"}, separators=(",", ":"))
                    t0 = time.perf_counter()
                    client.publish(base + "desired", payload, qos=1, retain=True)
                    got = waiter.wait(v, 10)
                    if got is None:
                        run.error = f"no ack for v={v} within 10 s (unit running: {unit.is_running})"
                        return run
                    t, ack = got
                    if not ack.get("ok"):
                        run.error = f"v={v} refused: {ack}"
                        return run
                    if v > WARMUP:
                        run.latencies_ms.append((t - t0) * 1000)
        finally:
            client.loop_stop()
            client.disconnect()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=150)
    work = Path(tempfile.mkdtemp(prefix="simsock-bench-latency-"))
    mpy_dir = build_mpy(work / "mpy")
    brokers = ["embedded"] + (["mosquitto"] if MosquittoBroker.available() else [])
    if len(brokers) == 1:
        console.print("[yellow]mosquitto not installed: embedded broker only")
    runs = []
    for broker in brokers:
        for variant, heapsize in VARIANTS:
            r = measure(broker, variant, heapsize, mpy_dir, work, len(runs) + 1, args.changes)
            runs.append(r)
            console.print(f"  {broker:<10} {r.label:<30} {r.error or f'{len(r.latencies_ms)} changes'}")

    t = Table(title=f"desired publish → ack latency, ms ({args.changes} changes after {WARMUP} warm-up; "
                    "p99 = nearest rank)")
    for col in ("broker", "unit firmware / heap", "n", "min", "median", "mean", "p90", "p99", "max"):
        t.add_column(col, justify="left" if col in ("broker", "unit firmware / heap") else "right")
    for r in runs:
        if r.error:
            t.add_row(r.broker, r.label, "0", "[red]does not boot[/red]" if "boot" in r.error else "[red]failed[/red]",
                      *[""] * 5)
            continue
        x = r.latencies_ms
        t.add_row(r.broker, r.label, str(len(x)), f"{min(x):.2f}", f"{statistics.median(x):.2f}",
                  f"{statistics.fmean(x):.2f}", f"{nearest_rank(x, 90):.2f}", f"{nearest_rank(x, 99):.2f}",
                  f"{max(x):.2f}")
    console.print(t)
    console.print(f"unit consoles in {work}")
    footer(console)


if __name__ == "__main__":
    main()
