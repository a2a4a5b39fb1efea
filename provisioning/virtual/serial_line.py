"""A virtual serial line: two pseudo-terminals with a relay between their master ends.

The host tool (pyserial, esptool, mpremote) opens `device_path` exactly as it would
open /dev/ttyUSB0; the emulated device (the ROM loader emulator, or the MicroPython
unix port) opens `unit_path`. One pty opened by both ends at once does not work (both
ends would be slaves of one line discipline), hence two ptys and a relay thread that
copies bytes between their masters (see /work/shared/DESIGN.md, "Facts checked").

    line = SerialLine(baud=921600)      # or baud=None (as fast as the host can copy),
    ...                                 # or baud="host" (follow the host's termios speed)
    line.unplug()                       # the USB cable is pulled: device_path vanishes
    line.close()

What a pty cannot carry, and what stands in for it:

- DTR/RTS: `ioctl(TIOCMSET)` on a pty fails with ENOTTY. pyserial ignores that on
  open, and esptool prints "Chip was NOT reset" and goes on to sync. So the classic
  auto-reset circuit (EN/IO0 driven by RTS/DTR) cannot be seen from the device side;
  resets are an API call on the emulated device instead (see esp32_rom.py, `reset()`),
  the way a factory jig power-cycles a unit with IO0 held low.
- Baud rate: ptys move bytes at memory speed whatever the termios speed says. With
  `baud=` the relay paces each direction to `baud / 10` bytes/s (8N1: start + 8 data +
  stop bits), so a 921600-baud flash takes as long as on a wire.
- Line noise, parity, breaks: not modelled.

Both slaves are opened here too, set to raw mode at once and held open for the life of
the line: the host's end may close and reopen its port (esptool does on reconnect)
without the master reading EIO, and no byte ever passes through a cooked (echoing,
CR/LF-translating) line discipline before the tools set raw mode themselves.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import select
import struct
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Literal

__all__ = ["SerialLine", "host_baud_of"]

_READ_MAX = 65536
# A pty master is not always woken for POLLOUT when the reader on the slave makes room
# (seen on Linux 6.x: bytes left pending for ever), so a blocked write is retried this often.
_RETRY_S = 0.002
_SLACK_S = 0.003

# termios speed constants -> bits per second (Linux)
_SPEEDS: dict[int, int] = {}
for _name in dir(termios):
    if _name.startswith("B") and _name[1:].isdigit():
        _SPEEDS[getattr(termios, _name)] = int(_name[1:])


def host_baud_of(fd: int) -> int | None:
    """The output speed set on the tty `fd` in bits per second (None: custom BOTHER speed or unknown)."""
    try:
        speed = termios.tcgetattr(fd)[5]
    except termios.error:
        return None
    return _SPEEDS.get(speed) or None


def _set_raw(fd: int) -> None:
    tty.setraw(fd, termios.TCSANOW)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B115200  # a UART's power-on speed; a host tool sets its own
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class _Direction:
    """One direction of the relay: source master -> destination master, paced to a byte rate."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending = bytearray()  # read from the source, not yet written to the destination
        self.deliver_at = 0.0  # when the last byte of `pending` has crossed the wire
        self.wire_free_at = 0.0  # when the wire is idle again
        self.bytes = 0  # bytes delivered so far
        self.backlogged = False  # more bytes were waiting in the source at the last read


class SerialLine:
    """Two ptys and a relay: `device_path` for the host tool, `unit_path` for the emulated device.

    baud: None — no pacing; an int — pace both directions to baud/10 bytes/s; "host" — pace to
    whatever speed the host tool set on its port (tcgetattr), like a real UART whose both
    ends must agree (the device side is assumed to follow, as the ESP32 ROM does after
    CHANGE_BAUDRATE). `link`: an optional symlink made to `device_path` (e.g. a stable
    name like <tmp>/ttyVUSB0), removed on unplug/close.
    """

    def __init__(self, baud: int | Literal["host"] | None = None, link: str | Path | None = None) -> None:
        if baud is not None and baud != "host" and (not isinstance(baud, int) or baud <= 0):
            raise ValueError(f"baud must be a positive int, 'host' or None, not {baud!r}")
        self.baud = baud
        self._host_master, self._host_slave = pty.openpty()
        self._unit_master, self._unit_slave = pty.openpty()
        for fd in (self._host_slave, self._unit_slave):
            _set_raw(fd)
        for fd in (self._host_master, self._unit_master):
            _nonblocking(fd)
        self.device_path = os.ttyname(self._host_slave)
        self.unit_path = os.ttyname(self._unit_slave)
        self.link = Path(link) if link is not None else None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.device_path)
        self._to_unit = _Direction("host->unit")
        self._to_host = _Direction("unit->host")
        self._wake_r, self._wake_w = os.pipe()
        _nonblocking(self._wake_r)
        self._lock = threading.Lock()
        self._unplug_requested = False
        self._close_requested = False
        self._unplugged = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"serial-line {self.device_path}", daemon=True)
        self._thread.start()

    # --- public ---------------------------------------------------------------------------

    @property
    def host_path(self) -> str:
        """What the host tool opens: the symlink if one was asked for, else the pty path."""
        return str(self.link) if self.link is not None else self.device_path

    @property
    def plugged(self) -> bool:
        return not self._unplugged.is_set()

    @property
    def bytes_to_unit(self) -> int:
        return self._to_unit.bytes

    @property
    def bytes_to_host(self) -> int:
        return self._to_host.bytes

    def rate(self) -> float | None:
        """The current pacing in bytes/s (None: unpaced)."""
        if self.baud is None:
            return None
        if self.baud == "host":
            baud = host_baud_of(self._host_slave) if self.plugged else None
            return baud / 10 if baud else None
        return self.baud / 10

    def unplug(self, timeout: float = 5.0) -> None:
        """Pull the cable: the host's end of the line goes away (its reads and writes fail,
        `device_path` disappears and cannot be reopened); what the device sends is lost."""
        with self._lock:
            if self._closed.is_set() or self._unplugged.is_set():
                return
            self._unplug_requested = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._unplugged.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the relay and close every fd (both ptys disappear). Idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            self._close_requested = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> SerialLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SerialLine(device={self.device_path}, unit={self.unit_path}, baud={self.baud})"

    # --- relay ----------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _chunk_limit(self, rate: float | None) -> int:
        # Paced: read at most ~2 ms worth at a time, so a byte is delivered at most ~2 ms
        # later than on a wire (a UART delivers byte by byte).
        if rate is None:
            return _READ_MAX
        return max(16, int(rate * 0.002))

    def _release_host(self) -> None:
        for fd in (self._host_master, self._host_slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._host_master = self._host_slave = -1
        self._to_unit.pending.clear()
        self._to_host.pending.clear()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        self._unplugged.set()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if not self._unplugged.is_set():
                self._release_host()
            for fd in (self._unit_master, self._unit_slave, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._closed.set()

    def _loop(self) -> None:
        poller = select.poll()
        while True:
            with self._lock:
                if self._close_requested:
                    return
                if self._unplug_requested and not self._unplugged.is_set():
                    self._release_host()
            host_up = not self._unplugged.is_set()
            rate = self.rate()
            now = time.monotonic()
            timeout_ms: float | None = None

            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            # host -> unit
            d = self._to_unit
            if host_up:
                if not d.pending:
                    poller.register(self._host_master, select.POLLIN)
                elif d.deliver_at > now:
                    timeout_ms = _min_ms(timeout_ms, d.deliver_at - now)
                else:
                    poller.register(self._unit_master, select.POLLOUT)
                    timeout_ms = _min_ms(timeout_ms, _RETRY_S)
            # unit -> host (after an unplug, what the device sends is read and dropped)
            u = self._to_host
            if not u.pending:
                poller.register(self._unit_master, select.POLLIN)
            elif u.deliver_at > now:
                timeout_ms = _min_ms(timeout_ms, u.deliver_at - now)
            elif host_up:
                poller.register(self._host_master, select.POLLOUT)
                timeout_ms = _min_ms(timeout_ms, _RETRY_S)

            # poll() rounds its timeout up to whole milliseconds; a UART reply of a few bytes takes
            # far less, so the sub-millisecond rest of a wait is slept precisely instead.
            events = dict(poller.poll(None if timeout_ms is None else int(timeout_ms)))
            if not events and timeout_ms is not None and timeout_ms % 1:
                time.sleep((timeout_ms % 1) / 1000)
            if self._wake_r in events:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            now = time.monotonic()

            # reads
            if host_up and not d.pending and events.get(self._host_master, 0) & (select.POLLIN | select.POLLHUP):
                self._read_into(self._host_master, d, rate, now)
            if not u.pending and events.get(self._unit_master, 0) & (select.POLLIN | select.POLLHUP):
                self._read_into(self._unit_master, u, rate, now)
                if not host_up:
                    u.pending.clear()
            # writes (due ones only)
            if host_up and d.pending and d.deliver_at <= now:
                self._write_out(self._unit_master, d)
            if host_up and u.pending and u.deliver_at <= now:
                self._write_out(self._host_master, u)

    def _read_into(self, fd: int, d: _Direction, rate: float | None, now: float) -> None:
        try:
            data = os.read(fd, self._chunk_limit(rate))
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EIO:  # no slave open; cannot happen while we hold one, but be safe
                time.sleep(0.01)
                return
            raise
        if not data:
            return
        d.pending += data
        if rate is None:
            d.deliver_at = now
        else:
            # The wire is idle only if the sender left a gap: when more bytes were already
            # waiting at the last read (or the gap is shorter than the relay's own wake-up
            # latency), this chunk follows the previous one back to back.
            start = d.wire_free_at if d.backlogged or now - d.wire_free_at < _SLACK_S else now
            d.wire_free_at = start + len(data) / rate
            d.deliver_at = d.wire_free_at
            d.backlogged = _queued(fd) > 0

    def _write_out(self, fd: int, d: _Direction) -> None:
        try:
            n = os.write(fd, d.pending)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EIO:
                d.pending.clear()
                return
            raise
        del d.pending[:n]
        d.bytes += n


def _queued(fd: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def _min_ms(current: float | None, seconds: float) -> float:
    ms = max(0.0, seconds * 1000.0)
    return ms if current is None else min(current, ms)
