"""A virtual unit with a serial console: the firmware on the MicroPython unix port, reachable on a
pseudo-terminal exactly as a real unit is on /dev/ttyUSB0 (docs/virtual-serial.md, "The unit's console").

    with VirtualConsoleUnit(tmp / "u1", "factory-1", broker_port=1883) as unit:
        unit.start()                        # unprovisioned: main.py idles, waiting for registration
        register_unit(unit.port, api, …)    # the bench: Ctrl-C, raw REPL, identity.json, board reset
        unit.wait_log(r"unit: connected", 20)

How it behaves like the real one:
- the process is `micropython -i main.py`: the firmware runs (an unprovisioned unit idles,
  "unprovisioned: waiting for registration"); `-i` gives the REPL once main.py ends;
- its stdin is the unit side of a `SerialLine` (two ptys and a relay): the tty is the
  process's controlling terminal with ISIG on, so the Ctrl-C a bench sends arrives as
  SIGINT = KeyboardInterrupt, as the ESP32's UART turns Ctrl-C into KeyboardInterrupt; the
  firmware's main() ends ("interrupted") and the REPL (friendly, raw with Ctrl-A) is there.
  The REPL switches the tty to raw itself while it reads, so Ctrl-C/Ctrl-A/Ctrl-D are
  REPL characters again, and back to ISIG while it runs code;
- `board.reset()` (what the bench calls after writing the identity) exits with code 42: the
  supervisor starts `micropython -i main.py` again on the same line — the reboot, and the
  firmware comes up provisioned;
- its stdout/stderr go through a pipe to a tee: `console.log` (what `wait_log` reads) and the
  serial line. Bytes for the line are dropped when nobody reads the port, as a UART does, so
  a unit with no bench attached never blocks on its own log output.

Not like the real one: DTR/RTS cannot reset it (ptys have no modem lines); `restart()` is
the power cycle. The hardware ids come from `sim/hw.json` (written here, "the factory").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import termios
import threading
from pathlib import Path
from typing import Any

from provisioning.virtual import store_file
from provisioning.virtual.serial_line import SerialLine
from provisioning.virtual.unit import DEFAULT_INPUTS, VirtualUnit, _write_json_atomic


def _console_tty_mode(fd: int) -> None:
    """Raw, but with ISIG (Ctrl-C -> SIGINT to the foreground process) and NOFLSH (a Ctrl-C does not
    discard what the bench sent right after it, e.g. the Ctrl-A for the raw REPL)."""
    attrs = termios.tcgetattr(fd)
    attrs[3] |= termios.ISIG | termios.NOFLSH
    attrs[6][termios.VINTR] = 3
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _take_tty() -> None:  # runs in the child between fork and exec (after setsid)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class VirtualConsoleUnit(VirtualUnit):
    """A `VirtualUnit` whose console is a serial port (`.port`); it starts unprovisioned (no identity).

    `name` stands for the unit until it is registered (hardware ids derive from it);
    `device_id` follows identity.json once the bench wrote one. `baud` paces the line like a
    UART (None: as fast as the host copies). Other keywords: as VirtualUnit.
    """

    def __init__(self, root: str | Path, name: str, *, baud: int | None = None,
                 link: str | Path | None = None, **kw: Any) -> None:
        super().__init__(root, name, **kw)
        self.name = name
        self.baud = baud
        self._link = link
        self.line: SerialLine | None = None
        self._tee: threading.Thread | None = None

    # --- the factory state ---------------------------------------------------------------

    def provision(self) -> None:
        """What a flashed, unregistered unit has: config and the simulated hardware; no identity."""
        self.sim.mkdir(parents=True, exist_ok=True)
        self.write_config()
        _write_json_atomic(self.sim / "hw.json", self.hw)
        if not (self.sim / "in.json").exists():
            _write_json_atomic(self.sim / "in.json", DEFAULT_INPUTS)

    def identity_on_unit(self) -> dict[str, Any] | None:
        """identity.json as the unit's flash holds it (None before registration)."""
        try:
            value = store_file.read(self.root / "identity.json")
        except (FileNotFoundError, ValueError):
            return None
        return dict(value) if isinstance(value, dict) else None

    @property
    def port(self) -> str:
        """The serial port a bench opens (a pty path, or the `link` symlink)."""
        if self.line is None:
            raise RuntimeError(f"{self.name}: not started (no serial line yet)")
        return self.line.host_path

    # --- process -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self.line is None:
                self.line = SerialLine(baud=self.baud, link=self._link)
            if not (self.root / "config.json").exists() or not (self.sim / "hw.json").exists():
                self.provision()
        super().start()

    def command(self) -> list[str]:
        cmd = super().command()
        return [*cmd[:-1], "-i", cmd[-1]]

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.line is not None
        ident = self.identity_on_unit()
        if ident and isinstance(ident.get("device_id"), str):
            self.device_id = ident["device_id"]
        tty = os.open(self.line.unit_path, os.O_RDWR | os.O_NOCTTY)
        try:
            _console_tty_mode(tty)
            proc = subprocess.Popen(
                self.command(), stdin=tty, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=self._environ(), cwd=self.root, start_new_session=True, preexec_fn=_take_tty,
            )
        finally:
            os.close(tty)  # the child has its own copy
        # The tee writes through its own open file: O_NONBLOCK on the child's stdin (a shared file
        # description) would make the REPL's reads fail.
        out = os.open(self.line.unit_path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        self._proc = proc
        self.starts += 1
        self._harness_log(f"start pid={proc.pid} console={self.line.host_path}")
        assert proc.stdout is not None
        self._tee = threading.Thread(target=self._run_tee, args=(proc, out), name=f"vcu-tee-{self.name}",
                                     daemon=True)
        self._tee.start()
        return proc

    def _run_tee(self, proc: subprocess.Popen[bytes], tty: int) -> None:
        """Unit output -> console.log and the serial line (dropped when the line is full)."""
        assert proc.stdout is not None
        src = proc.stdout.fileno()
        try:
            with open(self.console_path, "ab") as log:
                while True:
                    try:
                        data = os.read(src, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    log.write(data)
                    log.flush()
                    with contextlib.suppress(BlockingIOError):
                        try:
                            os.write(tty, data)
                        except OSError as e:  # the line is gone (closed): keep logging
                            if e.errno not in (errno.EIO, errno.EBADF):
                                raise
        finally:
            os.close(tty)
            proc.stdout.close()

    def kill9(self) -> None:
        super().kill9()
        self._join_tee()

    def stop(self, timeout: float = 3.0) -> None:
        super().stop(timeout)
        self._join_tee()

    def _join_tee(self) -> None:
        t = self._tee
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def close(self) -> None:
        """Power off and remove the serial line."""
        self.kill9()
        if self.line is not None:
            self.line.close()
            self.line = None

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        port = self.line.host_path if self.line is not None else None
        return f"VirtualConsoleUnit({self.name!r}, port={port!r}, running={self.is_running})"


__all__ = ["VirtualConsoleUnit"]
