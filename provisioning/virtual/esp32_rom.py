"""An emulated ESP32 ROM serial loader, so esptool can flash a virtual unit (test fixture).

It speaks the ROM loader's protocol (SLIP frames, 8-byte command/response headers,
the 4 status bytes a ROM — not the stub — appends) on the unit end of a `SerialLine`
and writes into a flash image file, so the bench flashes it through esptool's Python
API exactly as it flashes a real unit on /dev/ttyUSB0 (with `--no-stub`):

    line = SerialLine(baud=921600)
    rom = Esp32RomEmulator(tmp / "flash.bin", line, chip="esp32").start()
    esp = esptool.cmds.detect_chip(line.device_path, connect_mode="no-reset")
    ...
    rom.stop(); line.close()

Implemented (what esptool 5.x sends to an ESP32-family ROM with --no-stub):
SYNC (8 replies, like the ROM), READ_REG / WRITE_REG over a small register model
(chip-detect magic at 0x40001000, eFuse words with the MAC and chip revision, the UART
clock divider, the SPI0 user-command engine for RDID 0x9F / SFDP 0x5A / status reads),
SPI_ATTACH, SPI_SET_PARAMS, FLASH_BEGIN/DATA/END, FLASH_DEFL_BEGIN/DATA/END (zlib),
SPI_FLASH_MD5 (32 lowercase hex chars, as the ROM sends), READ_FLASH_SLOW (64-byte
blocks), CHANGE_BAUDRATE, GET_SECURITY_INFO (ESP32-S3/-C3 only: that is how esptool
tells those chips apart), MEM_BEGIN/DATA/END (accepted; the uploaded stub cannot run,
so the unit "crashes" back into the ROM loader and esptool reports "Failed to start stub
flasher" at once — use --no-stub). Anything else gets the
ROM's "invalid message" reply (status 1, error 0x05).

Flash is NOR-like: FLASH_BEGIN erases whole 4 KB sectors to 0xFF, a write can only
clear bits (new = old & data), and a block that does not read back as written is
reported as error 0x08 "flash write error", as the ROM does — so writing without
erasing is caught, not papered over.

Resets: DTR/RTS cannot be seen through a pty (see serial_line.py), so esptool's
default reset is a no-op here ("Chip was NOT reset") and the emulator simply stays in
the download mode it was started in. `reset(download=True)` is the jig's power cycle
with IO0 held low (prints the ROM banner, forgets all loader state, 115200 baud);
`reset(download=False)` boots the app; FLASH_END / FLASH_DEFL_END ("reboot" or "run
user code", i.e. esptool's soft reset) leave the loader too. Leaving the loader calls
`on_leave(reason)` — the harness's cue to boot the virtual unit from the flash file —
and the emulator then ignores the line, like a ROM that has jumped to the app.

Fault hooks (`Faults`): drop the link after N received bytes (the port disappears),
brown out after N bytes (back in the ROM with all state lost), never answer, answer
noise, a weak flash byte that flips after it is written (only the MD5 check sees it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import select
import struct
import termios
import threading
import time
import tty
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.virtual.serial_line import SerialLine

__all__ = [
    "CHIPS",
    "ChipModel",
    "Esp32RomEmulator",
    "Faults",
    "FlashTiming",
    "RomError",
    "SlipDecoder",
    "slip_encode",
]

MiB = 1024 * 1024
SECTOR = 0x1000
ROM_BAUD = 115200
XTAL_HZ = 40_000_000
SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32
SYNC_VALUE = 0x20120707  # the ROM echoes the sync word pattern in the value field
CHIP_DETECT_MAGIC_REG = 0x40001000
CHECKSUM_SEED = 0xEF

# commands (ESPLoader.ESP_CMDS)
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03
FLASH_END = 0x04
MEM_BEGIN = 0x05
MEM_END = 0x06
MEM_DATA = 0x07
SYNC = 0x08
WRITE_REG = 0x09
READ_REG = 0x0A
SPI_SET_PARAMS = 0x0B
SPI_ATTACH = 0x0D
READ_FLASH_SLOW = 0x0E
CHANGE_BAUDRATE = 0x0F
FLASH_DEFL_BEGIN = 0x10
FLASH_DEFL_DATA = 0x11
FLASH_DEFL_END = 0x12
SPI_FLASH_MD5 = 0x13
GET_SECURITY_INFO = 0x14

# ROM loader error codes (esptool docs, "Serial Protocol")
ERR_INVALID = 0x05  # received message is invalid (parameters or length field)
ERR_FAILED = 0x06  # failed to act on received message
ERR_CRC = 0x07  # invalid CRC in message
ERR_FLASH_WRITE = 0x08  # flash write error (read-back mismatch)
ERR_FLASH_READ = 0x09
ERR_READ_LENGTH = 0x0A
ERR_DEFLATE = 0x0B

BANNER_DOWNLOAD = (
    b"ets Jun  8 2016 00:22:57\r\n\r\n"
    b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
    b"waiting for download\r\n"
)
BANNER_WDT_DOWNLOAD = (
    b"ets Jun  8 2016 00:22:57\r\n\r\n"
    b"rst:0x10 (RTCWDT_RTC_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
    b"waiting for download\r\n"
)
BANNER_APP = b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"


class RomError(Exception):
    """A command the ROM refuses: answered with status 1 and this error code."""

    def __init__(self, code: int, why: str = "") -> None:
        super().__init__(f"ROM error {code:#04x}: {why}")
        self.code = code


# --- chip models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChipModel:
    """What a chip's ROM shows esptool: detection values, register map, parameter formats."""

    key: str  # esptool's --chip name
    name: str  # esptool's CHIP_NAME
    magic: int  # word at 0x40001000 (esptool's chip-detect magic, read when GET_SECURITY_INFO fails)
    chip_id: int | None  # GET_SECURITY_INFO chip id; None: the ROM has no such command (ESP32)
    spi_base: int
    spi_usr: int
    spi_usr1: int
    spi_usr2: int
    spi_mosi_dlen: int
    spi_miso_dlen: int
    spi_w0: int
    mac_hi_reg: int  # low 16 bits: MAC bytes 0..1 (ESP32: CRC-8 in bits 16..23)
    mac_lo_reg: int  # MAC bytes 2..5, big-endian
    uart_clkdiv_reg: int
    extended_begin: bool  # FLASH_(DEFL_)BEGIN takes a 5th word (encrypted flag); the ESP32 ROM does not
    regs: dict[int, int] = field(default_factory=dict)  # other fixed register values


_ESP32_EFUSE = 0x3FF5A000
ESP32 = ChipModel(
    key="esp32",
    name="ESP32",
    magic=0x00F01D83,
    chip_id=None,
    spi_base=0x3FF42000,
    spi_usr=0x1C,
    spi_usr1=0x20,
    spi_usr2=0x24,
    spi_mosi_dlen=0x28,
    spi_miso_dlen=0x2C,
    spi_w0=0x80,
    mac_hi_reg=_ESP32_EFUSE + 4 * 2,
    mac_lo_reg=_ESP32_EFUSE + 4 * 1,
    uart_clkdiv_reg=0x3FF40014,
    extended_begin=False,
    regs={
        # EFUSE_BLK0_RDATA3: package D0WD (pkg 1), rev bit0, 240 MHz rated -> "ESP32-D0WD-V3 (revision v3.0)"
        _ESP32_EFUSE + 4 * 3: (1 << 9) | (1 << 15) | (1 << 13),
        # EFUSE_BLK0_RDATA4: ADC vref trim, CK8M frequency (with RTCCALICFG1 below: ROM thinks xtal = 40 MHz)
        _ESP32_EFUSE + 4 * 4: (0x11 << 8) | 100,
        # EFUSE_BLK0_RDATA5: rev bit1; SPI pad config 0 (default pins)
        _ESP32_EFUSE + 4 * 5: 1 << 20,
        0x3FF6607C: (1 << 31) | 0x16042000,  # APB_CTL_DATE: rev bit2
        0x3FF5F06C: 1024 << 7,  # RTCCALICFG1: cali value (1024 * 15625 * 100 / 40 = 40 MHz)
        0x3FF44038: 0x03,  # GPIO_STRAP: download boot, VDD_SDIO 3.3 V
    },
)
# The SPI1 register block of the newer chips (S3, C3): same base and offsets.
_SPI_MEM1: dict[str, Any] = dict(
    spi_base=0x60002000, spi_usr=0x18, spi_usr1=0x1C, spi_usr2=0x20,
    spi_mosi_dlen=0x24, spi_miso_dlen=0x28, spi_w0=0x58,
)
ESP32S3 = ChipModel(
    key="esp32s3",
    name="ESP32-S3",
    magic=0x00000009,
    chip_id=9,
    **_SPI_MEM1,
    mac_hi_reg=0x60007000 + 0x48,
    mac_lo_reg=0x60007000 + 0x44,
    uart_clkdiv_reg=0x60000014,
    extended_begin=True,
)
ESP32C3 = ChipModel(
    key="esp32c3",
    name="ESP32-C3",
    magic=0x1B31506F,
    chip_id=5,
    **_SPI_MEM1,
    mac_hi_reg=0x60008800 + 0x48,
    mac_lo_reg=0x60008800 + 0x44,
    uart_clkdiv_reg=0x60000014,
    extended_begin=True,
)
CHIPS: dict[str, ChipModel] = {c.key: c for c in (ESP32, ESP32S3, ESP32C3)}

# SPI flash chip: Winbond W25Q-series JEDEC id; capacity byte = log2(size)
FLASH_MFR = 0xEF
FLASH_TYPE = 0x40
SFDP_TABLE = bytes.fromhex("53464450060100ff00060110300000ff")  # "SFDP", rev 1.6, 1 header


def mac_crc8(mac: bytes) -> int:
    """CRC-8 (Dallas/Maxim, reflected poly 0x8C) that an ESP32 stores beside its factory MAC."""
    crc = 0
    for b in mac:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def default_mac(seed: str) -> bytes:
    """A stable, plausible MAC for a virtual unit: Espressif OUI 24:0A:C4 + 3 bytes of sha256(seed)."""
    return bytes.fromhex("240ac4") + hashlib.sha256(seed.encode()).digest()[:3]


# --- SLIP ------------------------------------------------------------------------------------


def slip_encode(packet: bytes) -> bytes:
    return b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class SlipDecoder:
    """Incremental SLIP decoder: feed bytes, get complete frames. Bytes between frames are
    ignored (the ROM ignores line noise); a frame with a bad escape is dropped."""

    def __init__(self) -> None:
        self._buf: bytearray | None = None
        self._esc = False
        self.dropped = 0

    def reset(self) -> None:
        self._buf = None
        self._esc = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for b in data:
            if self._buf is None:
                if b == 0xC0:
                    self._buf = bytearray()
                continue
            if self._esc:
                self._esc = False
                if b == 0xDC:
                    self._buf.append(0xC0)
                elif b == 0xDD:
                    self._buf.append(0xDB)
                else:
                    self.dropped += 1
                    self._buf = None
                continue
            if b == 0xDB:
                self._esc = True
            elif b == 0xC0:
                if self._buf:
                    frames.append(bytes(self._buf))
                    self._buf = None
                # an empty frame (C0 C0) is a frame start after a frame end: stay in the frame
                else:
                    self._buf = bytearray()
            else:
                self._buf.append(b)
        return frames


def checksum(data: bytes) -> int:
    state = CHECKSUM_SEED
    for b in data:
        state ^= b
    return state


# --- faults ----------------------------------------------------------------------------------


@dataclass
class Faults:
    """Misbehaviour for tests. Byte counts are bytes received by the unit since start()."""

    drop_after_bytes: int | None = None  # unplug the line (the port disappears) after this many bytes
    brownout_after_bytes: int | None = None  # the unit resets into the ROM loader, losing all loader state
    silent: bool = False  # never answer anything (dead unit, wrong port, unit not in download mode)
    garbage: bool = False  # answer every burst of input with line noise (baud mismatch, chatty app)
    weak_byte_at: int | None = None  # this flash byte flips a bit after it is written (only MD5 can tell)


@dataclass(frozen=True)
class FlashTiming:
    """How long the SPI flash chip takes (typical W25Q32 datasheet figures). The ROM erases the
    whole region on *_BEGIN (64 KB block erases where aligned, 4 KB sectors elsewhere) and
    programs each block before it replies, so these times add to the wire time."""

    sector_erase_s: float = 0.045  # 4 KB
    block_erase_s: float = 0.150  # 64 KB
    page_program_s: float = 0.0007  # 256 B

    def erase_time(self, offset: int, end: int) -> float:
        t, pos = 0.0, offset
        while pos < end:
            if pos % 0x10000 == 0 and end - pos >= 0x10000:
                t += self.block_erase_s
                pos += 0x10000
            else:
                t += self.sector_erase_s
                pos += SECTOR
        return t


@dataclass
class _WriteSession:
    compressed: bool
    offset: int
    size: int  # bytes announced (erase size)
    blocks: int
    block_size: int
    next_seq: int = 0
    written: int = 0  # bytes written to flash (uncompressed)
    inflater: zlib._Decompress | None = None


# --- the emulator ----------------------------------------------------------------------------


class Esp32RomEmulator:
    """The ROM serial loader of one unit, on `line.unit_path`, writing into `flash_path`.

    chip: "esp32" (default), "esp32s3" or "esp32c3" — what detection reports.
    flash_size: bytes (default 4 MB); a missing flash file is created erased (0xFF); an
    existing one must have that size. mac: 6 bytes or "aa:bb:..." (default derived from
    the flash file name). timing: a FlashTiming, to make erase and program take as long as on
    a real flash chip (default None: instant). on_leave(reason): called (from the emulator
    thread) when the unit leaves the loader: "reboot", "run_user_code" (FLASH_END /
    FLASH_DEFL_END) or "reset" (reset(download=False)).
    """

    def __init__(
        self,
        flash_path: str | Path,
        line: SerialLine | str,
        chip: str = "esp32",
        flash_size: int = 4 * MiB,
        mac: bytes | str | None = None,
        faults: Faults | None = None,
        on_leave: Callable[[str], None] | None = None,
        timing: FlashTiming | None = None,
    ) -> None:
        if chip not in CHIPS:
            raise ValueError(f"unknown chip {chip!r}; known: {', '.join(CHIPS)}")
        if flash_size <= 0 or flash_size % SECTOR or flash_size & (flash_size - 1):
            raise ValueError("flash_size must be a power of two and a multiple of 4 KB")
        self.chip = CHIPS[chip]
        self.flash_path = Path(flash_path)
        self.flash_size = flash_size
        self.line = line if isinstance(line, SerialLine) else None
        self.unit_path = line.unit_path if isinstance(line, SerialLine) else str(line)
        self.faults = faults or Faults()
        if self.faults.drop_after_bytes is not None and self.line is None:
            raise ValueError("drop_after_bytes needs a SerialLine (something to unplug)")
        if isinstance(mac, str):
            mac = bytes.fromhex(mac.replace(":", "").replace("-", ""))
        self.mac = mac if mac is not None else default_mac(self.flash_path.name)
        if len(self.mac) != 6:
            raise ValueError("mac must be 6 bytes")
        self.on_leave = on_leave
        self.timing = timing

        self.state = "stopped"  # "download" | "app" | "stopped"
        self.baud = ROM_BAUD
        self.bytes_received = 0
        self.bytes_sent = 0
        self.commands: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.left_loader: list[str] = []

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._flash_fd = -1
        self._slip = SlipDecoder()
        self._rng = random.Random(self.mac)
        self._reset_loader_state()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, banner: bool = True) -> Esp32RomEmulator:
        """Open the flash file and the unit end of the line; run the loader in a thread."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._open_flash()
        self._fd = os.open(self.unit_path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._fd, termios.TCSANOW)
        self.state = "download"
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"esp32-rom {self.unit_path}", daemon=True)
        self._thread.start()
        if banner and not self.faults.silent:
            self._send(BANNER_DOWNLOAD)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loader thread, flush the flash file, release the line. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
            if self._flash_fd >= 0:
                with contextlib.suppress(OSError):
                    os.fsync(self._flash_fd)
                os.close(self._flash_fd)
                self._flash_fd = -1
            self.state = "stopped"

    def __enter__(self) -> Esp32RomEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self, download: bool = True) -> None:
        """Power-cycle the unit: with IO0 low (download=True) it comes up in the ROM loader,
        prints the ROM banner and forgets every loader state (attach, open writes, baud);
        with IO0 high it boots the app (leaves the loader, `on_leave("reset")`)."""
        with self._lock:
            self._reset_loader_state()
            if download:
                self.state = "download"
                self._send(BANNER_DOWNLOAD)
            else:
                self._leave("reset")

    def read_flash(self, offset: int = 0, size: int | None = None) -> bytes:
        """What the flash holds (for tests and for booting the virtual unit)."""
        size = self.flash_size - offset if size is None else size
        with self._lock:
            if self._flash_fd >= 0:
                return os.pread(self._flash_fd, size, offset)
        with open(self.flash_path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    # --- internals: state -----------------------------------------------------------------

    def _reset_loader_state(self) -> None:
        self.baud = ROM_BAUD
        self.attached = False
        self.spi_params_size: int | None = None
        self._write: _WriteSession | None = None
        self._mem_next_seq: int | None = None
        self._regs: dict[int, int] = {}
        self._slip.reset()

    def _open_flash(self) -> None:
        if self.flash_path.exists():
            actual = self.flash_path.stat().st_size
            if actual != self.flash_size:
                raise ValueError(f"{self.flash_path} is {actual} bytes, not the flash size {self.flash_size}")
        else:
            self.flash_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.flash_path, "wb") as f:
                chunk = b"\xff" * MiB
                for _ in range(self.flash_size // MiB):
                    f.write(chunk)
                f.write(b"\xff" * (self.flash_size % MiB))
        self._flash_fd = os.open(self.flash_path, os.O_RDWR)

    def _leave(self, reason: str) -> None:
        self.state = "app"
        self.left_loader.append(reason)
        if self._flash_fd >= 0:
            os.fsync(self._flash_fd)
        self._send(BANNER_APP)
        if self.on_leave is not None:
            self.on_leave(reason)

    # --- internals: I/O -------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        fd = self._fd
        if fd < 0:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except OSError:
                return  # the line is gone; a real UART transmits into the void too
            view = view[n:]
            self.bytes_sent += n

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                data = os.read(self._fd, 4096)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                return  # line closed
            if not data:
                time.sleep(0.01)
                continue
            with self._lock:
                self._on_bytes(data)

    def _on_bytes(self, data: bytes) -> None:
        f = self.faults
        before = self.bytes_received
        self.bytes_received += len(data)
        if f.drop_after_bytes is not None and self.bytes_received >= f.drop_after_bytes:
            keep = max(0, f.drop_after_bytes - before)
            data = data[:keep]
            self._handle_input(data)
            f.drop_after_bytes = None
            if self.line is not None:
                self.line.unplug()
            return
        if f.brownout_after_bytes is not None and self.bytes_received >= f.brownout_after_bytes:
            keep = max(0, f.brownout_after_bytes - before)
            self._handle_input(data[:keep])
            f.brownout_after_bytes = None
            self._reset_loader_state()
            self.state = "download"
            self._send(BANNER_DOWNLOAD)
            return
        self._handle_input(data)

    def _handle_input(self, data: bytes) -> None:
        if not data or self.faults.silent or self.state != "download":
            return
        if self.faults.garbage:
            # what a 115200-baud UART makes of a 74880-baud boot log: no 0xC0 framing anywhere
            noise = bytes(self._rng.choice(range(1, 0xC0)) for _ in range(min(64, len(data))))
            self._send(noise)
            return
        for frame in self._slip.feed(data):
            self._handle_frame(frame)

    def _respond(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        body = data + bytes([1 if error else 0, error, 0, 0])
        self._send(slip_encode(struct.pack("<BBHI", 1, op, len(body), value) + body))

    # --- internals: commands --------------------------------------------------------------

    def _handle_frame(self, frame: bytes) -> None:
        if len(frame) < 8 or frame[0] != 0x00:
            return  # not a request; the ROM ignores it
        _, op, size, chk = struct.unpack("<BBHI", frame[:8])
        payload = frame[8:]
        name = _NAMES.get(op, f"0x{op:02x}")
        self.commands[name] += 1
        if len(payload) != size:
            self.errors[ERR_INVALID] += 1
            self._respond(op, error=ERR_INVALID)
            return
        if op == SYNC:
            if payload == SYNC_PAYLOAD:
                for _ in range(8):
                    self._respond(SYNC, value=SYNC_VALUE)
            return
        handler = _HANDLERS.get(op)
        try:
            if handler is None:
                raise RomError(ERR_INVALID, f"command {name} not in this ROM")
            value, data, after = handler(self, payload, chk)
        except RomError as e:
            self.errors[e.code] += 1
            self._respond(op, error=e.code)
            return
        self._respond(op, value=value, data=data)
        if after is not None:
            after()

    def _read_reg(self, addr: int) -> int:
        c = self.chip
        if addr == CHIP_DETECT_MAGIC_REG:
            return c.magic
        if addr == c.mac_lo_reg:
            return int.from_bytes(self.mac[2:6], "big")
        if addr == c.mac_hi_reg:
            hi = int.from_bytes(self.mac[0:2], "big")
            return hi | (mac_crc8(self.mac) << 16) if c.key == "esp32" else hi
        if addr == c.uart_clkdiv_reg:
            return round(XTAL_HZ / self.baud) & 0xFFFFF
        if addr in self._regs:
            return self._regs[addr]
        return c.regs.get(addr, 0)

    def _write_reg(self, addr: int, value: int, mask: int) -> None:
        old = self._read_reg(addr)
        self._regs[addr] = (old & ~mask) | (value & mask)
        c = self.chip
        if addr == c.spi_base and value & mask & (1 << 18):  # SPI_CMD_USR: run the user command
            self._spi_user_command()
            self._regs[addr] = self._regs[addr] & ~(1 << 18)

    def _spi_user_command(self) -> None:
        c = self.chip
        base = c.spi_base
        command = self._regs.get(base + c.spi_usr2, 0) & 0xFF
        usr1 = self._regs.get(base + c.spi_usr1, 0)
        usr = self._regs.get(base + c.spi_usr, 0)
        addr_len = ((usr1 >> 26) & 0x3F) + 1 if usr & (1 << 30) else 0
        addr = self._regs.get(base + 0x04, 0) >> (32 - addr_len) if addr_len else 0
        w0 = base + c.spi_w0
        if command == 0x9F:  # RDID
            capacity = self.flash_size.bit_length() - 1
            self._regs[w0] = FLASH_MFR | (FLASH_TYPE << 8) | (capacity << 16)
        elif command == 0x5A:  # RDSFDP
            table = SFDP_TABLE + b"\xff" * 256
            self._regs[w0] = int.from_bytes(table[addr : addr + 4], "little")
        elif command in (0x05, 0x35, 0x15):  # RDSR, RDSR2, RDSR3: idle, not write-protected
            self._regs[w0] = 0
        # anything else (reset 0x66/0x99, power-down, WRSR...) is accepted and does nothing

    def _need_attached(self) -> None:
        if not self.attached:
            raise RomError(ERR_FAILED, "SPI flash not attached (SPI_ATTACH first)")

    def _flash_limit(self) -> int:
        return self.flash_size if self.spi_params_size is None else min(self.flash_size, self.spi_params_size)

    def _begin(self, payload: bytes, compressed: bool) -> tuple[int, bytes, None]:
        self._need_attached()
        if len(payload) == 20 and self.chip.extended_begin:
            size, blocks, block_size, offset, encrypted = struct.unpack("<IIIII", payload)
            if encrypted:
                raise RomError(ERR_FAILED, "encrypted writes are not emulated")
        elif len(payload) == 16:
            size, blocks, block_size, offset = struct.unpack("<IIII", payload)
        else:
            raise RomError(ERR_INVALID, f"begin takes 16 bytes on {self.chip.name}, got {len(payload)}")
        if offset % SECTOR:
            raise RomError(ERR_FAILED, f"offset {offset:#x} is not sector aligned (the ROM erases whole sectors)")
        end = -(-(offset + size) // SECTOR) * SECTOR
        if end > self._flash_limit():
            raise RomError(ERR_FAILED, f"{offset:#x}+{size:#x} is past the end of flash")
        if block_size == 0 or block_size > 0x4000:
            raise RomError(ERR_INVALID, f"block size {block_size}")
        if size:
            os.pwrite(self._flash_fd, b"\xff" * (end - offset), offset)
            if self.timing is not None:
                time.sleep(self.timing.erase_time(offset, end))
        self._write = _WriteSession(
            compressed=compressed,
            offset=offset,
            size=size,
            blocks=blocks,
            block_size=block_size,
            inflater=zlib.decompressobj() if compressed else None,
        )
        return 0, b"", None

    def _program(self, offset: int, data: bytes) -> None:
        """NOR programming: bits can only go 1 -> 0; verify like the ROM does."""
        if offset + len(data) > self._flash_limit():
            raise RomError(ERR_FAILED, "write past the end of flash")
        old = os.pread(self._flash_fd, len(data), offset)
        new = (int.from_bytes(old, "little") & int.from_bytes(data, "little")).to_bytes(len(data), "little")
        os.pwrite(self._flash_fd, new, offset)
        if self.timing is not None and data:
            time.sleep(-(-len(data) // 256) * self.timing.page_program_s)
        if new != data:
            raise RomError(ERR_FLASH_WRITE, f"read-back mismatch at {offset:#x} (not erased?)")
        weak = self.faults.weak_byte_at
        if weak is not None and offset <= weak < offset + len(data):
            b = os.pread(self._flash_fd, 1, weak)[0]
            os.pwrite(self._flash_fd, bytes([b ^ 0x10]), weak)

    def _data(self, payload: bytes, chk: int, compressed: bool) -> tuple[int, bytes, None]:
        if len(payload) < 16:
            raise RomError(ERR_INVALID, "short data header")
        length, seq, _, _ = struct.unpack("<IIII", payload[:16])
        data = payload[16:]
        if len(data) != length:
            raise RomError(ERR_INVALID, f"data length {len(data)} != {length}")
        if checksum(data) != chk & 0xFF:
            raise RomError(ERR_CRC, "checksum mismatch")
        w = self._write
        if w is None or w.compressed != compressed:
            raise RomError(ERR_FAILED, "no flash write in progress")
        if seq != w.next_seq:
            raise RomError(ERR_INVALID, f"sequence {seq}, expected {w.next_seq}")
        if length > w.block_size:
            raise RomError(ERR_INVALID, f"block of {length} bytes, block size {w.block_size}")
        if compressed:
            assert w.inflater is not None
            try:
                out = w.inflater.decompress(data)
            except zlib.error as e:
                raise RomError(ERR_DEFLATE, str(e)) from e
            self._program(w.offset + w.written, out)
            w.written += len(out)
        else:
            self._program(w.offset + seq * w.block_size, data)
            w.written += len(data)
        w.next_seq += 1
        return 0, b"", None

    def _end(self, payload: bytes) -> tuple[int, bytes, Callable[[], None] | None]:
        if len(payload) != 4:
            raise RomError(ERR_INVALID, "end takes one word")
        (run_user_code,) = struct.unpack("<I", payload)
        self._write = None
        if self._flash_fd >= 0:
            os.fsync(self._flash_fd)
        reason = "run_user_code" if run_user_code else "reboot"
        return 0, b"", lambda: self._leave(reason)

    # handlers: (self, payload, checksum) -> (value, data, action after the response or None)

    def _cmd_read_reg(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        if len(p) != 4:
            raise RomError(ERR_INVALID, "READ_REG takes one word")
        return self._read_reg(struct.unpack("<I", p)[0]), b"", None

    def _cmd_write_reg(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        if not p or len(p) % 16:
            raise RomError(ERR_INVALID, "WRITE_REG takes groups of 4 words")
        for i in range(0, len(p), 16):
            addr, value, mask, delay_us = struct.unpack("<IIII", p[i : i + 16])
            self._write_reg(addr, value, mask)
            if delay_us:
                time.sleep(min(delay_us, 100_000) / 1e6)
        return 0, b"", None

    def _cmd_spi_set_params(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        if len(p) != 24:
            raise RomError(ERR_INVALID, "SPI_SET_PARAMS takes 6 words")
        _, total, _, sector, page, _ = struct.unpack("<IIIIII", p)
        if sector != SECTOR or page != 256 or total == 0:
            raise RomError(ERR_FAILED, "unsupported flash geometry")
        self.spi_params_size = total
        return 0, b"", None

    def _cmd_spi_attach(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        if len(p) not in (4, 8):
            raise RomError(ERR_INVALID, "SPI_ATTACH takes 1 or 2 words")
        self.attached = True
        return 0, b"", None

    def _cmd_read_flash_slow(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        self._need_attached()
        if len(p) != 8:
            raise RomError(ERR_INVALID, "READ_FLASH_SLOW takes 2 words")
        offset, length = struct.unpack("<II", p)
        if length > 64:
            raise RomError(ERR_READ_LENGTH, "at most 64 bytes per read")
        if offset + length > self._flash_limit():
            raise RomError(ERR_FLASH_READ, "read past the end of flash")
        data = os.pread(self._flash_fd, 64, offset)
        return 0, data + b"\xff" * (64 - len(data)), None

    def _cmd_change_baud(self, p: bytes, chk: int) -> tuple[int, bytes, Callable[[], None]]:
        if len(p) != 8:
            raise RomError(ERR_INVALID, "CHANGE_BAUDRATE takes 2 words")
        new, _old = struct.unpack("<II", p)
        if not 300 <= new <= 5_000_000:
            raise RomError(ERR_FAILED, f"baud {new}")

        def switch() -> None:  # after the reply has gone out at the old rate
            self.baud = new
            with contextlib.suppress(termios.error, OSError):
                attrs = termios.tcgetattr(self._fd)
                speed = getattr(termios, f"B{new}", None)
                if speed is not None:
                    attrs[4] = attrs[5] = speed
                    termios.tcsetattr(self._fd, termios.TCSANOW, attrs)

        return 0, b"", switch

    def _cmd_md5(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        self._need_attached()
        if len(p) != 16:
            raise RomError(ERR_INVALID, "SPI_FLASH_MD5 takes 4 words")
        addr, size, _, _ = struct.unpack("<IIII", p)
        if addr + size > self._flash_limit():
            raise RomError(ERR_FLASH_READ, "region past the end of flash")
        md5 = hashlib.md5()
        pos = addr
        while pos < addr + size:
            n = min(MiB, addr + size - pos)
            md5.update(os.pread(self._flash_fd, n, pos))
            pos += n
        return 0, md5.hexdigest().encode(), None

    def _cmd_security_info(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        if self.chip.chip_id is None:
            raise RomError(ERR_INVALID, "GET_SECURITY_INFO is not in the ESP32 ROM")
        # flags, flash_crypt_cnt, 7 key purposes, chip id, eco/api version
        return 0, struct.pack("<IB7BII", 0, 0, *([0] * 7), self.chip.chip_id, 0), None

    def _cmd_mem_begin(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        if len(p) != 16:
            raise RomError(ERR_INVALID, "MEM_BEGIN takes 4 words")
        self._mem_next_seq = 0
        return 0, b"", None

    def _cmd_mem_data(self, p: bytes, chk: int) -> tuple[int, bytes, None]:
        if len(p) < 16:
            raise RomError(ERR_INVALID, "short data header")
        length, seq, _, _ = struct.unpack("<IIII", p[:16])
        if len(p) - 16 != length:
            raise RomError(ERR_INVALID, "data length")
        if checksum(p[16:]) != chk & 0xFF:
            raise RomError(ERR_CRC, "checksum mismatch")
        if self._mem_next_seq is None or seq != self._mem_next_seq:
            raise RomError(ERR_INVALID, "sequence")
        self._mem_next_seq += 1
        return 0, b"", None

    def _cmd_mem_end(self, p: bytes, chk: int) -> tuple[int, bytes, Callable[[], None] | None]:
        if len(p) != 8:
            raise RomError(ERR_INVALID, "MEM_END takes 2 words")
        no_exec, _entry = struct.unpack("<II", p)
        if no_exec:
            return 0, b"", None

        def jump() -> None:
            # The uploaded code (esptool's stub) cannot run in an emulator. Behave like a chip
            # whose RAM code crashed: the watchdog resets it into the ROM loader, and the boot
            # log is what esptool reads where it waited for the stub's "OHAI" — it fails at once.
            self.left_loader.append("ram_code")
            self._reset_loader_state()
            self._send(b"virtual ESP32: RAM code cannot run here (use --no-stub)\r\n" + BANNER_WDT_DOWNLOAD)

        return 0, b"", jump


_HANDLERS: dict[int, Callable[..., tuple[int, bytes, Callable[[], None] | None]]] = {
    READ_REG: Esp32RomEmulator._cmd_read_reg,
    WRITE_REG: Esp32RomEmulator._cmd_write_reg,
    SPI_SET_PARAMS: Esp32RomEmulator._cmd_spi_set_params,
    SPI_ATTACH: Esp32RomEmulator._cmd_spi_attach,
    READ_FLASH_SLOW: Esp32RomEmulator._cmd_read_flash_slow,
    CHANGE_BAUDRATE: Esp32RomEmulator._cmd_change_baud,
    SPI_FLASH_MD5: Esp32RomEmulator._cmd_md5,
    GET_SECURITY_INFO: Esp32RomEmulator._cmd_security_info,
    MEM_BEGIN: Esp32RomEmulator._cmd_mem_begin,
    MEM_DATA: Esp32RomEmulator._cmd_mem_data,
    MEM_END: Esp32RomEmulator._cmd_mem_end,
    FLASH_BEGIN: lambda self, p, chk: self._begin(p, compressed=False),
    FLASH_DATA: lambda self, p, chk: self._data(p, chk, compressed=False),
    FLASH_END: lambda self, p, chk: self._end(p),
    FLASH_DEFL_BEGIN: lambda self, p, chk: self._begin(p, compressed=True),
    FLASH_DEFL_DATA: lambda self, p, chk: self._data(p, chk, compressed=True),
    FLASH_DEFL_END: lambda self, p, chk: self._end(p),
}

_NAMES = {
    FLASH_BEGIN: "FLASH_BEGIN",
    FLASH_DATA: "FLASH_DATA",
    FLASH_END: "FLASH_END",
    MEM_BEGIN: "MEM_BEGIN",
    MEM_END: "MEM_END",
    MEM_DATA: "MEM_DATA",
    SYNC: "SYNC",
    WRITE_REG: "WRITE_REG",
    READ_REG: "READ_REG",
    SPI_SET_PARAMS: "SPI_SET_PARAMS",
    SPI_ATTACH: "SPI_ATTACH",
    READ_FLASH_SLOW: "READ_FLASH_SLOW",
    CHANGE_BAUDRATE: "CHANGE_BAUDRATE",
    FLASH_DEFL_BEGIN: "FLASH_DEFL_BEGIN",
    FLASH_DEFL_DATA: "FLASH_DEFL_DATA",
    FLASH_DEFL_END: "FLASH_DEFL_END",
    SPI_FLASH_MD5: "SPI_FLASH_MD5",
    GET_SECURITY_INFO: "GET_SECURITY_INFO",
}
