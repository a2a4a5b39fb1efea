"""A small TCP proxy that plays a bad cellular link, for tests and benchmarks.

    proxy = NetProxy("127.0.0.1", broker.port).start()
    ... point the unit at proxy.host:proxy.port ...
    proxy.blackhole()   # half-open link: bytes vanish both ways, sockets stay open
    proxy.restore()     # forward again (connections accepted while blackholed stay dead)
    proxy.cut()         # abort every current connection (RST to both ends)
    proxy.stats()       # bytes / chunks in each direction since reset_counters()
    proxy.stop()

It runs its own asyncio loop in a daemon thread, so sync test code drives it.
"up" is client → target, "down" is target → client; a "chunk" is one recv()
(roughly one TCP segment or one write by the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    bytes_up: int
    bytes_down: int
    chunks_up: int
    chunks_down: int
    connections: int
    dropped_up: int
    dropped_down: int


class _Conn:
    def __init__(self, cw: asyncio.StreamWriter, dead: bool) -> None:
        self.cw = cw
        self.tw: asyncio.StreamWriter | None = None
        self.dead = dead  # accepted while blackholed: never forwarded
        self.tasks: list[asyncio.Task[None]] = []


class NetProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._blackholed = False
        self._c = [0] * 7  # bytes up/down, chunks up/down, connections, dropped up/down

    # -- sync API (any thread) ---------------------------------------------------

    def start(self) -> NetProxy:
        ready = threading.Event()
        err: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._accept, self.host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # reported to start()
                err.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="netproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if err:
            raise err[0]
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
        self._loop = None

    def blackhole(self) -> None:
        self._blackholed = True

    def restore(self) -> None:
        self._blackholed = False

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    def cut(self) -> None:
        self._call(self._cut())

    def reset_counters(self) -> None:
        self._call(self._reset())

    def stats(self) -> Stats:
        return Stats(*self._c)

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- loop side ---------------------------------------------------------------

    def _call(self, coro: object) -> None:
        assert self._loop is not None, "proxy not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _reset(self) -> None:
        self._c = [0] * 7

    async def _cut(self) -> None:
        for c in list(self._conns):
            self._abort(c)

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
        await self._cut()

    def _abort(self, c: _Conn) -> None:
        self._conns.discard(c)
        for w in (c.cw, c.tw):
            if w is not None:
                w.transport.abort()
        for t in c.tasks:
            t.cancel()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        c = _Conn(cw, self._blackholed)
        self._conns.add(c)
        self._c[4] += 1
        tr: asyncio.StreamReader | None = None
        if not c.dead:
            try:
                tr, c.tw = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                self._abort(c)
                return
        c.tasks = [asyncio.create_task(self._pump(c, cr, c.tw, 0))]
        if tr is not None:
            c.tasks.append(asyncio.create_task(self._pump(c, tr, cw, 1)))
        await asyncio.gather(*c.tasks, return_exceptions=True)

    async def _pump(self, c: _Conn, r: asyncio.StreamReader, w: asyncio.StreamWriter | None, down: int) -> None:
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                self._c[down] += len(data)
                self._c[2 + down] += 1
                if self._blackholed or c.dead or w is None:
                    self._c[5 + down] += len(data)
                    continue
                w.write(data)
                await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._blackholed or c.dead:
                # a close is lost on a dead link too: only the side that closed goes
                mine = c.tw if down else c.cw
                if mine is not None:
                    with contextlib.suppress(Exception):
                        mine.close()
            elif c in self._conns:
                # one side closed: close both (like the link going away)
                self._conns.discard(c)
                for w2 in (c.cw, c.tw):
                    if w2 is not None:
                        with contextlib.suppress(Exception):
                            w2.close()
