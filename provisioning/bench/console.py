"""Talk to a unit over its serial port: MicroPython's raw REPL through mpremote's transport.

    with UnitConsole("/dev/ttyUSB0") as con:      # opens the port, Ctrl-C, Ctrl-A (no soft reset)
        ids = con.call("import board; b = board.load(); _r = {'uid': b.unique_id()}")
        con.reset()                                # the board layer's reset(); the port is closed after

`call(code)` runs a small snippet that leaves its answer in `_r`; the answer comes back as
JSON on one marked line, so log lines the unit prints meanwhile do not disturb it. Every
failure is a `ConsoleError` subclass with a message an operator can act on:

- `PortError`    the port cannot be opened (unplugged, wrong path, busy);
- `NoAnswer`     nothing at all came back within the timeout (unit off, wrong port, no firmware);
- `Garbage`      bytes came back but no MicroPython raw REPL (wrong baud rate, another device, a
                 ROM bootloader, a crashed unit printing noise) — the first bytes are quoted;
- `UnitExecError` the snippet raised on the unit (its traceback is quoted).

Why the raw REPL and not a provisioning console of our own (docs/bench.md): the raw REPL is
in every MicroPython build, is framed (OK / output / 0x04 / errors / 0x04) so output and
errors cannot be confused, has flow control (raw-paste), and mpremote's transport already
speaks it; a console of our own would be firmware code that must be right before the unit
can be registered at all, and an attack surface that stays on every unit in the field.
The snippets only call the firmware's own modules (board layer, app.store), so the rules
for reading ids and writing files atomically stay in the firmware.

The raw REPL is entered *without* a soft reset (Ctrl-D): a soft reset would run main.py
again on a real board (the unit would start its MQTT session under the bench's feet) and
ends the unix port's interpreter. Ctrl-C stops main.py on a real unit (and, through the
virtual unit's tty, on the unix port: docs/virtual-serial.md), which gives the REPL.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


class _ThreadStdout:
    """sys.stdout that sends a thread's writes to that thread's buffer while it has one (`_quiet`), and
    everything else to the stdout it wraps. `contextlib.redirect_stdout` swaps the process-wide sys.stdout:
    two ports registering at once (bench run) interleave their swaps and can leave sys.stdout pointing at
    a StringIO for good — the bench's own output then vanishes."""

    def __init__(self, base: Any) -> None:
        self._base = base
        self._local = threading.local()

    def write(self, text: str) -> int:
        buf = getattr(self._local, "buf", None)
        return (buf if buf is not None else self._base).write(text)

    def flush(self) -> None:
        buf = getattr(self._local, "buf", None)
        (buf if buf is not None else self._base).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


_stdout_lock = threading.Lock()


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """What mpremote prints in this thread goes to the yielded buffer (thread-safe redirect_stdout)."""
    with _stdout_lock:
        proxy = sys.stdout
        if not isinstance(proxy, _ThreadStdout):
            proxy = sys.stdout = _ThreadStdout(sys.stdout)
    prev = getattr(proxy._local, "buf", None)
    buf = io.StringIO()
    proxy._local.buf = buf
    try:
        yield buf
    finally:
        proxy._local.buf = prev

MARK = "SIMSOCK-R:"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"


class ConsoleError(Exception):
    """The unit's console did not do what the bench needed; the message says what and where."""

    def __init__(self, port: str, message: str) -> None:
        super().__init__(f"{port}: {message}")
        self.port = port


class PortError(ConsoleError):
    pass


class NoAnswer(ConsoleError):
    pass


class Garbage(ConsoleError):
    pass


class UnitExecError(ConsoleError):
    def __init__(self, port: str, message: str, traceback: str) -> None:
        super().__init__(port, message)
        self.traceback = traceback


def _excerpt(data: bytes, n: int = 60) -> str:
    return repr(data[:n]) + (f" … ({len(data)} bytes)" if len(data) > n else "")


class UnitConsole:
    """A unit's raw REPL on `port` (any pyserial URL: /dev/ttyUSB0, a pty path, socket://…)."""

    def __init__(self, port: str, *, baud: int = 115200, timeout: float = 5.0, exec_timeout: float = 20.0) -> None:
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self.exec_timeout = exec_timeout
        self._t: Any = None
        self.transcript = bytearray()  # what the unit printed besides the answers (for logs)

    # --- open / close ----------------------------------------------------------------------

    def open(self) -> UnitConsole:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        try:
            with _quiet():
                # timeout: pyserial's read timeout. On a pty mpremote reads byte by byte without
                # checking what is waiting, so without one a silent unit would block for ever.
                self._t = SerialTransport(self.port, baudrate=self.baud, timeout=0.2)
        except (TransportError, OSError, ValueError) as exc:
            raise PortError(self.port, f"cannot open the port ({exc})") from None
        try:
            self._enter()
        except BaseException:
            self.close()
            raise
        return self

    def _enter(self) -> None:
        """Ctrl-C (stop main.py), Ctrl-A (raw REPL), again every second until `timeout`: a unit that is
        still booting, or whose first Ctrl-C was swallowed, gets another chance."""
        t = self._t
        s = t.serial
        seen = b""
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                s.write(b"\r\x03")  # Ctrl-C: stop main.py (or whatever runs) -> friendly REPL
                time.sleep(0.05)
                if s.in_waiting:
                    seen += s.read(s.in_waiting)
                s.write(b"\r\x01")  # Ctrl-A: raw REPL (no Ctrl-D: no soft reset)
                data = self._read_until(RAW_BANNER, min(deadline, time.monotonic() + 1.0))
                seen += data
                if data.endswith(RAW_BANNER):
                    break
                if time.monotonic() >= deadline:
                    if not seen:
                        raise NoAnswer(self.port, f"the unit did not answer within {self.timeout:g}s (powered? "
                                                  "right port? MicroPython flashed?)")
                    raise Garbage(self.port, f"the unit answered, but no MicroPython raw REPL came up within "
                                             f"{self.timeout:g}s (wrong baud rate, another device or a crashed "
                                             f"unit?); it sent {_excerpt(seen)}")
        except OSError as exc:
            raise PortError(self.port, f"the port failed while entering the raw REPL ({exc})") from None
        self.transcript += seen[: -len(RAW_BANNER)]
        t.in_raw_repl = True

    def _read_until(self, ending: bytes, deadline: float) -> bytes:
        """Bytes up to and including `ending`, or what came until `deadline` (mpremote's read_until never
        gives up while bytes keep coming, so a unit printing noise would hold it for ever)."""
        s = self._t.serial
        data = bytearray()
        while not data.endswith(ending):
            if time.monotonic() >= deadline:
                break
            chunk = s.read(1)  # pyserial's timeout (0.2 s) bounds each read
            if chunk:
                data += chunk
                if len(data) > 65536:  # keep the head and the tail (the banner is at the end)
                    del data[1024:-1024]
        return bytes(data)

    def close(self) -> None:
        t, self._t = self._t, None
        if t is not None:
            with contextlib.suppress(Exception):
                t.close()

    def __enter__(self) -> UnitConsole:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running code --------------------------------------------------------------------------

    def exec(self, code: str, timeout: float | None = None) -> bytes:
        """Run `code` in the raw REPL; its printed output. UnitExecError if it raised on the unit."""
        from mpremote.transport import TransportError

        if self._t is None:
            raise ConsoleError(self.port, "console is not open")
        timeout = self.exec_timeout if timeout is None else timeout
        try:
            with _quiet() as printed:
                out, err = self._t.exec_raw(code.encode(), timeout=timeout)
        except TransportError as exc:
            extra = printed.getvalue().strip()
            raise NoAnswer(self.port, f"the unit stopped answering while running a command ({exc}"
                                      f"{'; ' + extra if extra else ''})") from None
        except OSError as exc:
            raise PortError(self.port, f"the port failed ({exc})") from None
        if err:
            text = err.decode("utf-8", "replace").strip()
            last = text.splitlines()[-1] if text else "error"
            raise UnitExecError(self.port, f"the unit raised {last}", text)
        return out

    def call(self, code: str, timeout: float | None = None) -> Any:
        """Run `code`, which sets `_r`; returns `_r` as decoded from JSON."""
        out = self.exec(code + f"\nimport json as _j\nprint({MARK!r} + _j.dumps(_r))\n", timeout)
        text = out.decode("utf-8", "replace")
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith(MARK):
                try:
                    return json.loads(line[len(MARK):])
                except ValueError:
                    break
            elif line:
                self.transcript += line.encode() + b"\n"
        raise Garbage(self.port, f"no answer line in the unit's output: {_excerpt(out)}")

    def reset(self) -> None:
        """Reboot the unit through its board layer and close the port (no answer is awaited:
        a real board resets at once; the unix port exits with 42 and its harness restarts it)."""
        if self._t is None:
            raise ConsoleError(self.port, "console is not open")
        try:
            with _quiet():
                self._t.exec_raw_no_follow(b"import board\nboard.load().reset()\n")
            time.sleep(0.1)
        except Exception as exc:  # the unit may vanish mid-answer: that is the reset
            self.transcript += f"[reset: {exc}]".encode()
        finally:
            self.close()


__all__ = ["ConsoleError", "Garbage", "NoAnswer", "PortError", "UnitConsole", "UnitExecError"]
