"""MicroPython entry point for bench/desired_latency.py: the unchanged firmware with TCP_NODELAY.

Wraps asyncio.open_connection (what mqtt/client.py connects with) so the unit's socket
gets TCP_NODELAY, then runs `app.unit.main()` like firmware/main.py. It shows what the
one-line firmware change would buy: without it, the ack that follows the unit's PUBACK
waits in Nagle's algorithm for the broker's delayed ACK. Run by the MicroPython unix
port (VirtualUnit(main=...)), never by CPython.
"""

import sys

if ".frozen" not in sys.path:
    sys.path.append(".frozen")

import asyncio

IPPROTO_TCP = 6
TCP_NODELAY = 1

_open_connection = asyncio.open_connection


async def _open_nodelay(host, port, *args, **kwargs):
    r, w = await _open_connection(host, port, *args, **kwargs)
    w.s.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    return r, w


asyncio.open_connection = _open_nodelay

from app.unit import main  # noqa: E402

main()
