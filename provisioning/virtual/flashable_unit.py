"""A virtual unit as it comes off the line: blank flash, ROM loader on a serial port; after the
flash it boots the firmware *from the bytes written* (docs/virtual-serial.md, docs/build.md).

    unit = FlashableUnit(tmp / "u1", "factory-1")
    unit.start()                                  # power on with IO0 low: the ROM loader on unit.port
    flash_unit(unit.port, "flash.bin", stub=False, after="soft-reset")   # the bench flashes it
    unit.wait_booted(10)                          # FLASH_END "run user code" -> the unit boots
    unit.wait_log(r"unprovisioned: waiting for registration", 15)
    register_unit(unit.port, api, ...)            # same port: the firmware's console, raw REPL

- Before the flash: a `SerialLine` with an `Esp32RomEmulator` on its unit side, writing into
  `<root>/flash.bin` (created erased, 4 MiB by default).
- When the unit leaves the loader (`on_leave`: esptool's soft reset, or `rom.reset(download=False)`),
  or on an explicit `boot()`: the emulator stops and the MicroPython unix port runs
  `micropython -i provisioning/virtual/mp_flash_boot.py <root>/flash.bin` on the SAME line, as
  its console, exactly like `VirtualConsoleUnit` (controlling tty with ISIG: a Ctrl-C is SIGINT =
  KeyboardInterrupt; `-i` gives the REPL when main.py ends; exit 42 = reboot, restarted). The
  firmware, its config and later its identity all live in the littlefs partition inside
  flash.bin; only the simulated hardware (`<root>/sim`: modem ids, inputs, relay) is on the host
  and is mounted at /flash/sim. Nothing is imported from firmware/ (no MICROPYPATH).
- `power_cycle(download=True)` is the jig's power cycle with IO0 low: the firmware stops and the
  ROM loader is back on the line (flash content kept), for a re-flash.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from pathlib import Path
from typing import Any

from provisioning.virtual import store_file
from provisioning.virtual.console_unit import VirtualConsoleUnit
from provisioning.virtual.esp32_rom import Esp32RomEmulator, Faults, FlashTiming
from provisioning.virtual.serial_line import SerialLine
from provisioning.virtual.unit import DEFAULT_INPUTS, VirtualUnit, _write_json_atomic, micropython_exe

BOOT_SCRIPT = Path(__file__).resolve().parent / "mp_flash_boot.py"
MiB = 1024 * 1024
TABLE_AT = 0x8000
DEFAULT_FS_AT = 0x200000


def find_fs(flash: bytes) -> tuple[int, int]:
    """(offset, size) of the filesystem partition, by the same rule as mp_flash_boot.py / the esp32 port."""
    table = flash[TABLE_AT : TABLE_AT + 0xC00]
    last_end = 0
    for pos in range(0, len(table) - 31, 32):
        e = table[pos : pos + 32]
        if e[0] != 0xAA or e[1] != 0x50:
            break
        ptype, _sub, offset, size = struct.unpack("<BBII", e[2:12])
        if ptype == 1 and e[12:28].split(b"\0")[0] == b"vfs":
            return offset, size
        last_end = max(last_end, offset + size)
    start = last_end or DEFAULT_FS_AT
    return start, len(flash) - start


class FlashableUnit(VirtualConsoleUnit):
    """A blank virtual unit: ROM loader first, then the firmware booted from its own flash file.

    `chip`, `flash_size`, `faults`, `timing`, `mac`: passed to the Esp32RomEmulator. `baud`: pacing
    of the line (None: unpaced; 921600 for realistic flash times). `hw`: the simulated modem/SIM
    and unique id (default: derived from `name`). Other keywords: as VirtualUnit (broker_* and
    config are not used: the unit's config is whatever the flashed image holds).
    """

    def __init__(self, root: str | Path, name: str, *, chip: str = "esp32", flash_size: int = 4 * MiB,
                 faults: Faults | None = None, timing: FlashTiming | None = None, mac: str | bytes | None = None,
                 **kw: Any) -> None:
        super().__init__(root, name, **kw)
        self.chip = chip
        self.flash_size = flash_size
        self.faults = faults
        self.timing = timing
        self.mac = mac
        self.rom: Esp32RomEmulator | None = None
        self.booted = threading.Event()
        self.boot_reasons: list[str] = []
        self._boot_error: BaseException | None = None
        self._closed = False  # close() won: a boot still on its way must not start a process

    @property
    def flash_path(self) -> Path:
        return self.root / "flash.bin"

    # --- the factory state ---------------------------------------------------------------

    def provision(self) -> None:
        """The hardware only (modem ids, inputs): config and identity are in the flash, not here."""
        self.sim.mkdir(parents=True, exist_ok=True)
        if not (self.sim / "hw.json").exists():
            _write_json_atomic(self.sim / "hw.json", self.hw)
        if not (self.sim / "in.json").exists():
            _write_json_atomic(self.sim / "in.json", DEFAULT_INPUTS)

    def flash_bytes(self) -> bytes:
        if self.rom is not None:
            return self.rom.read_flash()
        return self.flash_path.read_bytes()

    def fs_files(self) -> dict[str, bytes]:
        """The files of the littlefs partition in the flash file (raises if it does not mount)."""
        from provisioning.build import fsimage

        flash = self.flash_bytes()
        at, size = find_fs(flash)
        return dict(fsimage.read_image(flash[at : at + size]).files)

    def identity_on_unit(self) -> dict[str, Any] | None:
        """identity.json as the unit's flash (the littlefs partition in flash.bin) holds it."""
        try:
            raw = self.fs_files().get("identity.json")
        except Exception:
            return None
        if raw is None:
            return None
        try:
            value = store_file.decode(raw)
        except ValueError:
            return None
        return dict(value) if isinstance(value, dict) else None

    # --- power -----------------------------------------------------------------------------

    def start(self) -> None:
        """Power on with IO0 low: the ROM loader waits on `port` (idempotent)."""
        with self._lock:
            self._closed = False
            if self.line is None:
                self.line = SerialLine(baud=self.baud, link=self._link)
            self.root.mkdir(parents=True, exist_ok=True)
            self.provision()
            if self.rom is None and not self.is_running:
                self._start_rom()

    def _start_rom(self) -> None:
        assert self.line is not None
        self.booted.clear()
        self.rom = Esp32RomEmulator(self.flash_path, self.line, chip=self.chip, flash_size=self.flash_size,
                                    mac=self.mac, faults=self.faults, timing=self.timing,
                                    on_leave=self._on_leave)
        self.rom.start()
        self._harness_log(f"rom loader on {self.line.host_path} ({self.chip}, flash {self.flash_path})")

    def _on_leave(self, reason: str) -> None:
        # called from the emulator's thread (holding its lock): boot from another thread
        threading.Thread(target=self._boot_quietly, args=(reason,), name=f"boot-{self.name}", daemon=True).start()

    def _boot_quietly(self, reason: str) -> None:
        try:
            self.boot(reason)
        except BaseException as e:
            self._boot_error = e
            self._harness_log(f"boot failed: {e!r}")

    def boot(self, reason: str = "boot") -> None:
        """Leave the loader and run the firmware from the flash file on the same line."""
        with self._lock:
            if self.is_running or self._closed:
                return
            rom, self.rom = self.rom, None
            if rom is not None:
                rom.stop()
            self.boot_reasons.append(reason)
            self._harness_log(f"boot from flash ({reason})")
            VirtualUnit.start(self)
            self.booted.set()

    def wait_booted(self, timeout: float) -> None:
        if not self.booted.wait(timeout):
            raise TimeoutError(f"{self.name}: did not boot within {timeout}s (rom state "
                               f"{self.rom.state if self.rom else None}, error {self._boot_error!r})")

    def power_cycle(self, download: bool = True) -> None:
        """Power off and on: with IO0 low (download) the ROM loader is back; otherwise boot the flash."""
        self.kill9()
        with self._lock:
            if self.rom is not None:
                self.rom.stop()
                self.rom = None
            if download:
                self._start_rom()
            else:
                self.boot("power-on")

    # --- process -------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [micropython_exe()]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        return [*cmd, "-i", str(BOOT_SCRIPT), str(self.flash_path)]

    def _environ(self) -> dict[str, str]:
        env = super()._environ()
        env.pop("MICROPYPATH", None)  # only the image: nothing from firmware/ may be imported
        return env

    def close(self) -> None:
        """Power off and remove the serial line."""
        with self._lock:
            self._closed = True
            rom, self.rom = self.rom, None
        if rom is not None:
            rom.stop()
        with contextlib.suppress(Exception):
            self.kill9()
        if self.line is not None:
            self.line.close()
            self.line = None

    def __repr__(self) -> str:
        port = self.line.host_path if self.line is not None else None
        state = "running" if self.is_running else (self.rom.state if self.rom else "off")
        return f"FlashableUnit({self.name!r}, port={port!r}, {state})"


__all__ = ["BOOT_SCRIPT", "FlashableUnit", "find_fs"]
