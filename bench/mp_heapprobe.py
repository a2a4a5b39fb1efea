"""MicroPython entry point for bench/heap.py: the unchanged firmware plus a heap probe.

Runs `app.unit.main()` exactly like firmware/main.py, with one extra asyncio task that
every PERIOD_MS runs gc.collect() and reads gc.mem_alloc(): the bytes still reachable
(the live set) at that moment. It prints a console line whenever the maximum grows:

    HEAPPROBE total=<heap bytes> live=<now> peak=<max live so far>

Samples are taken only where the firmware awaits, so an allocation that lives inside one
synchronous stretch is not seen: the figure is a lower bound of the peak live heap.
This file is run by the MicroPython unix port (VirtualUnit(main=...)), never by CPython.
"""

import sys

if ".frozen" not in sys.path:
    sys.path.append(".frozen")

import asyncio
import gc

PERIOD_MS = 20


async def _probe():
    gc.collect()
    total = gc.mem_alloc() + gc.mem_free()
    peak = 0
    while True:
        gc.collect()
        live = gc.mem_alloc()
        if live > peak:
            peak = live
            print(f"HEAPPROBE total={total} live={live} peak={peak}")
        await asyncio.sleep_ms(PERIOD_MS)


_run = asyncio.run


def _run_with_probe(coro):
    async def both():
        t = asyncio.create_task(_probe())
        try:
            return await coro
        finally:
            t.cancel()

    return _run(both())


asyncio.run = _run_with_probe

from app.unit import main  # noqa: E402

main()
