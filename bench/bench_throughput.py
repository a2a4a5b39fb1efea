"""Factory bench throughput: units per hour for the whole flow (flash → register → verify → label, the
`simsock bench run` orchestration, provisioning/bench/run.py) on 1, 4 and 8 virtual units in parallel.

Setup (provisioning/virtual/bench_kit.py): one cloud stack (embedded broker issuing credentials, Cloud on
SQLite, HTTP API), one factory build (the firmware + config in the littlefs partition, merged with a
fabricated MicroPython .bin: a 4 MiB flash.bin written at 0x1000), blank `FlashableUnit`s whose emulated
serial link follows the host's baud rate (`baud="host"`: 115200 while esptool connects, then the 921600
it switches to, paced at baud/10 bytes/s) and whose flash has W25Q32 erase/program times
(`FlashTiming()`). esptool in ROM mode (`--no-stub`), compressed write, MD5 verify, soft reset → boot.

Printed: units/h (passed units ÷ wall-clock span, first start to last end), mean seconds per step and each
step's share of all step time, and the flash write's throughput: compressed bytes on the wire ÷ write time
as a fraction of the link's raw byte rate (921600 / 10 = 92,160 B/s); the write time includes the ROM's
erase and page programming, which the wire waits for.

    python bench/bench_throughput.py [--units 1,4,8] [--flash-size 4MB]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _util import footer

from provisioning.bench.run import BenchRun, RunConfig
from provisioning.build.esp32img import parse_size
from provisioning.virtual.bench_kit import UnitMaker, bench_stack, factory_build
from provisioning.virtual.esp32_rom import FlashTiming

LINK_BAUD = 921600
RAW_BPS = LINK_BAUD / 10  # 8N1


def one_round(stack, image: Path, flash_size: int, n: int, work: Path) -> dict:
    maker = UnitMaker(work / f"units-{n}")
    try:
        units = [maker(baud="host", timing=FlashTiming(), flash_size=flash_size) for _ in range(n)]
        by_port = {u.port: u for u in units}

        def ready(port: str) -> None:
            by_port[port].wait_booted(30)
            by_port[port].wait_log(r"unit: boot fw=", 30)

        cfg = RunConfig(image=image, station="bench-tp", operator="bench", out=work / f"out-{n}", stub=False,
                        after="soft-reset", connect_mode="no-reset", connect_attempts=3, baud=LINK_BAUD,
                        expect_flash_size=flash_size, register_timeout=30, verify_timeout=60, ready=ready)
        run = BenchRun(cfg, lambda: stack.client("bench"))
        for u in units:
            run.start(u.port)
        run.wait()
        rep, _ = run.finish()
        writes = [r.write_seconds for r in run.flash_results.values() if r.ok]
        return {"report": rep, "write_s": writes,
                "failures": [(o.port, o.failed_step, o.reason) for o in run.outcomes if not o.ok]}
    finally:
        maker.close()


def link_efficiency(work: Path, flash_size: int, size: int = 1 << 20) -> list[tuple[str, float, int, float]]:
    """One unit, `size` random bytes (incompressible, like a real MicroPython app) written at 0x200000 with
    and without the flash chip's erase/program times: how much of the link's raw byte rate the ROM-mode
    flash protocol gets. Returns (case, write seconds, bytes on the wire, fraction of raw)."""
    import os

    from provisioning.bench.flash import flash_unit

    blob = work / "random.bin"
    blob.write_bytes(os.urandom(size))
    wire = len(zlib.compress(blob.read_bytes(), 9))
    out = []
    for case, timing in (("link only", None), ("link + W25Q32 erase/program", FlashTiming())):
        maker = UnitMaker(work / f"eff-{len(out)}")
        try:
            u = maker(baud="host", timing=timing, flash_size=flash_size)
            res = flash_unit(u.port, blob, offset=0x200000, stub=False, connect_mode="no-reset",
                             connect_attempts=3, baud=LINK_BAUD, after="no-reset")
            out.append((case, res.write_seconds, wire, wire / res.write_seconds / RAW_BPS))
        finally:
            maker.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", default="1,4,8", help="parallel units per round, comma-separated")
    ap.add_argument("--flash-size", default="4MB", help="the modules' flash (the build's filesystem fills it)")
    args = ap.parse_args()
    counts = [int(x) for x in args.units.split(",")]
    flash_size = parse_size(args.flash_size)
    console = Console(width=max(160, Console().width))
    with tempfile.TemporaryDirectory(prefix="simsock-bench-tp-") as tmp:
        work = Path(tmp)
        with bench_stack(work) as stack:
            built = factory_build(work / "build", stack.broker.host, stack.broker.port, flash_size=flash_size)
            assert built.merged is not None
            image = built.merged
            data = image.read_bytes()
            wire = len(zlib.compress(data, 9))  # what esptool sends for a compressed write
            console.print(f"image {image.name}: {len(data):,} B ({wire:,} B compressed) at 0x1000 into "
                          f"{flash_size // (1 << 20)} MiB flash; link {LINK_BAUD} baud = {RAW_BPS:,.0f} B/s raw; "
                          "W25Q32 erase/program timing", highlight=False)
            rows = []
            for n in counts:
                t = time.monotonic()
                r = one_round(stack, image, flash_size, n, work)
                rows.append((n, r, time.monotonic() - t))
                for f in r["failures"]:
                    console.print(f"[red]FAIL[/] {f}", highlight=False)
            eff = link_efficiency(work, flash_size)

    table = Table(title="bench run: whole flow (flash → register → verify → label), virtual units")
    for col in ("units", "PASS", "span s", "units/h", "flash s", "register s", "verify s", "label s",
                "flash %", "register %", "verify %", "label %", "write s", "wire/raw"):
        table.add_column(col, justify="right")
    for n, r, _took in rows:
        rep = r["report"]
        s, st = rep["summary"], rep["steps"]

        def mean(step: str, st: dict = st) -> str:
            return f"{st[step]['mean_s']:.2f}" if step in st else "-"

        def share(step: str, st: dict = st) -> str:
            return f"{100 * st[step]['share']:.0f}" if step in st else "-"

        ws = r["write_s"]
        w_mean = sum(ws) / len(ws) if ws else 0.0
        frac = (wire / w_mean / RAW_BPS) if w_mean else 0.0
        table.add_row(str(n), str(s["passed"]), f"{s['span_s']:.1f}", f"{s['units_per_hour']:.0f}",
                      mean("flash"), mean("register"), mean("verify"), mean("label"),
                      share("flash"), share("register"), share("verify"), share("label"),
                      f"{w_mean:.1f}", f"{frac:.2f}")
    console.print(table)
    console.print("wire/raw: compressed bytes sent ÷ write time (erase + programming included) ÷ 92,160 B/s. "
                  "units/h: passed units ÷ the round's wall-clock span.", highlight=False)
    et = Table(title="flash link efficiency: 1 MiB of random bytes (incompressible) at 0x200000, one unit, ROM mode")
    for col in ("case", "write s", "wire bytes", "B/s", "of 92,160 B/s raw"):
        et.add_column(col, justify="right")
    for case, secs, wire_b, frac in eff:
        et.add_row(case, f"{secs:.1f}", f"{wire_b:,}", f"{wire_b / secs:,.0f}", f"{100 * frac:.0f} %")
    console.print(et)
    footer(console)


if __name__ == "__main__":
    main()
