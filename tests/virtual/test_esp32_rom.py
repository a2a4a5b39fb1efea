"""The emulated ESP32 ROM loader, driven by esptool's own Python API over a virtual serial line.

esptool talks to it exactly as to a unit on /dev/ttyUSB0 with --no-stub: if esptool is
happy, the bench (which uses the same API) will be.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import esptool
import pytest
import serial
from esptool.cmds import attach_flash, detect_chip, verify_flash, write_flash
from esptool.targets import CHIP_DEFS
from esptool.util import FatalError

from provisioning.virtual.esp32_rom import (
    ERR_CRC,
    ERR_FAILED,
    ERR_FLASH_WRITE,
    ERR_INVALID,
    ERR_READ_LENGTH,
    Esp32RomEmulator,
    Faults,
    FlashTiming,
    SlipDecoder,
    checksum,
    slip_encode,
)
from provisioning.virtual.serial_line import SerialLine

MAC = bytes.fromhex("240ac4a1b2c3")
Rig = Callable[..., tuple[SerialLine, Esp32RomEmulator]]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """`rig(chip="esp32", faults=None, baud=None, **emulator kwargs)` -> (line, emulator), both cleaned up."""
    made: list[tuple[SerialLine, Esp32RomEmulator]] = []

    def make(chip: str = "esp32", faults: Faults | None = None, baud: int | None = None, **kw: object):
        line = SerialLine(baud=baud)
        rom = Esp32RomEmulator(tmp_path / f"flash{len(made)}.bin", line, chip=chip, mac=MAC, faults=faults, **kw)
        made.append((line, rom))
        return line, rom.start()

    yield make
    for line, rom in made:
        rom.stop()
        line.close()


def image(size: int, seed: int, compressible: bool = True) -> bytes:
    """Firmware-like bytes: random runs and zero runs (compresses ~2:1), never starting with the
    0xE9 image magic (esptool would then rewrite the header's flash parameters)."""
    rnd = random.Random(seed)
    out = bytearray(b"\x00")
    while len(out) < size:
        n = rnd.randint(64, 4096)
        out += rnd.randbytes(n) if (not compressible or rnd.random() < 0.5) else bytes(n)
    return bytes(out[:size])


def connect(line: SerialLine, mode: str = "no-reset", attempts: int = 3) -> esptool.ESPLoader:
    return detect_chip(line.device_path, connect_mode=mode, connect_attempts=attempts)


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no-reset", "default-reset"])
def test_detects_esp32_and_reads_mac(rig: Rig, mode: str) -> None:
    line, _ = rig()
    with connect(line, mode) as esp:
        assert esp.CHIP_NAME == "ESP32"
        assert not esp.IS_STUB
        assert esp.get_chip_description() == "ESP32-D0WD-V3 (revision v3.0)"
        assert bytes(esp.read_mac()) == MAC
        assert esp.get_crystal_freq() == 40
        attach_flash(esp)
        assert esptool.cmds.detect_flash_size(esp) == "4MB"


def test_other_chip_is_detected_and_refused_when_esp32_is_configured(rig: Rig) -> None:
    line, _ = rig(chip="esp32s3")
    with connect(line) as esp:  # auto-detection names it
        assert esp.CHIP_NAME == "ESP32-S3"
        assert bytes(esp.read_mac()) == MAC
    esp32 = CHIP_DEFS["esp32"](line.device_path)  # what `--chip esp32` does
    try:
        with pytest.raises(FatalError, match="This chip is ESP32-S3, not ESP32"):
            esp32.connect("no-reset", attempts=2)
    finally:
        esp32._port.close()


def test_reset_into_download_mode_forgets_loader_state(rig: Rig) -> None:
    line, rom = rig()
    with connect(line) as esp:
        attach_flash(esp)
        assert rom.attached
    rom.reset(download=True)
    assert not rom.attached and rom.baud == 115200 and rom.state == "download"
    with connect(line) as esp:  # the banner in the buffer is flushed by esptool; sync works again
        assert esp.CHIP_NAME == "ESP32"


# --- flashing --------------------------------------------------------------------------------


def test_compressed_write_at_bootloader_and_app_offsets_verifies_and_lands_exactly(rig: Rig) -> None:
    line, rom = rig()
    boot, app = image(24_000, 1), image(300_000, 2)
    with connect(line) as esp:
        attach_flash(esp)
        write_flash(esp, [(0x1000, boot), (0x10000, app)], compress=True, no_progress=True)
        verify_flash(esp, [(0x1000, boot), (0x10000, app)])  # MD5 on the unit vs the input
    assert rom.commands["FLASH_DEFL_DATA"] > 0 and rom.commands["FLASH_DATA"] == 0
    assert rom.commands["SPI_FLASH_MD5"] >= 4
    flash = rom.flash_path.read_bytes()
    assert len(flash) == 4 * 1024 * 1024
    assert flash[0x1000 : 0x1000 + len(boot)] == boot
    assert flash[0x10000 : 0x10000 + len(app)] == app
    # everything else is still erased: the ROM erased whole sectors, nothing more
    assert flash[:0x1000] == b"\xff" * 0x1000
    assert set(flash[0x1000 + len(boot) : 0x10000]) == {0xFF}
    assert set(flash[0x10000 + len(app) :]) == {0xFF}


def test_uncompressed_write_and_rewrite_of_a_smaller_image(rig: Rig) -> None:
    line, rom = rig()
    first, second = image(40_000, 3), image(10_000, 4)
    with connect(line) as esp:
        attach_flash(esp)
        write_flash(esp, [(0x10000, first)], no_compress=True, no_progress=True)
        write_flash(esp, [(0x10000, second)], compress=True, no_progress=True)
    assert rom.commands["FLASH_DATA"] > 0
    flash = rom.read_flash(0x10000, len(first))
    assert flash[: len(second)] == second
    # FLASH_DEFL_BEGIN erased only the sectors the second image covers
    sectors_end = -(-len(second) // 0x1000) * 0x1000
    assert set(flash[len(second) : sectors_end]) == {0xFF}
    assert flash[sectors_end:] == first[sectors_end:]


def test_image_too_large_for_flash_is_refused_before_writing(rig: Rig) -> None:
    line, rom = rig(flash_size=1024 * 1024)
    with connect(line) as esp:
        attach_flash(esp)
        assert esptool.cmds.detect_flash_size(esp) == "1MB"
        with pytest.raises(FatalError, match="will not fit"):
            write_flash(esp, [(0x10000, image(1024 * 1024, 5))], compress=True, no_progress=True)
    assert rom.commands["FLASH_DEFL_BEGIN"] == 0


def test_soft_reset_after_flash_leaves_the_loader(rig: Rig, tmp_path: Path) -> None:
    left: list[str] = []
    line, rom = rig(on_leave=left.append)
    app = tmp_path / "app.bin"
    app.write_bytes(image(50_000, 6))
    esptool.main(
        [
            *("--port", line.device_path, "--no-stub", "--before", "no-reset", "--after", "soft-reset"),
            *("write-flash", "--compress", "0x10000", str(app)),
        ]
    )
    assert left == ["run_user_code"] and rom.state == "app"
    assert rom.read_flash(0x10000, 50_000) == app.read_bytes()


# --- faults ----------------------------------------------------------------------------------


def test_link_dropped_mid_flash_fails_the_flash(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(esptool.cmds, "DEFAULT_CONNECT_ATTEMPTS", 1)  # esptool waits 1 s per reopen attempt
    line, rom = rig(faults=Faults(drop_after_bytes=60_000))
    app = image(300_000, 7)
    esp = connect(line)
    try:
        attach_flash(esp)
        with pytest.raises((serial.SerialException, FatalError)):
            write_flash(esp, [(0x10000, app)], compress=True, no_progress=True)
    finally:
        esp._port.close()
    assert not line.plugged and not os.path.exists(line.device_path)
    assert rom.read_flash(0x10000, len(app)) != app


def test_brownout_mid_flash_fails_the_flash_fast(rig: Rig) -> None:
    line, rom = rig(faults=Faults(brownout_after_bytes=60_000))
    app = image(300_000, 8)
    t = time.monotonic()
    with connect(line) as esp:
        attach_flash(esp)
        # the ROM banner of the reset arrives where a reply was due ("Invalid head of packet"),
        # then the ROM, with no write in progress any more, refuses the next block
        with pytest.raises(FatalError):
            write_flash(esp, [(0x10000, app)], compress=True, no_progress=True)
    assert time.monotonic() - t < 5
    assert rom.commands["FLASH_DEFL_DATA"] > 0
    assert rom.read_flash(0x10000, len(app)) != app


def test_weak_flash_byte_is_caught_by_md5_verify(rig: Rig) -> None:
    line, _ = rig(faults=Faults(weak_byte_at=0x10000 + 12_345))
    app = image(100_000, 9)
    with connect(line) as esp:
        attach_flash(esp)
        with pytest.raises(FatalError, match="MD5 of file does not match"):
            write_flash(esp, [(0x10000, app)], compress=True, no_progress=True)


def test_never_answering_unit_fails_to_connect_within_timeout(rig: Rig) -> None:
    line, rom = rig(faults=Faults(silent=True))
    t = time.monotonic()
    with pytest.raises(FatalError, match=r"Failed to connect.*No serial data received"):
        connect(line, attempts=2)
    assert time.monotonic() - t < 5
    assert rom.bytes_received > 0  # the syncs did arrive


def test_garbage_answering_unit_fails_to_connect(rig: Rig) -> None:
    line, _ = rig(faults=Faults(garbage=True))
    t = time.monotonic()
    with pytest.raises(FatalError, match=r"Failed to connect.*(Invalid head of packet|serial)"):
        connect(line, attempts=2)
    assert time.monotonic() - t < 5


def test_stub_upload_is_reported_as_failure_not_hang(rig: Rig) -> None:
    line, _ = rig()
    with connect(line) as esp, pytest.raises(FatalError, match="stub"):
        esptool.cmds.run_stub(esp)


# --- protocol details a real ROM has (raw frames) --------------------------------------------


class RawClient:
    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 115200, timeout=2)
        self.slip = SlipDecoder()
        self.frames: list[bytes] = []

    def command(self, op: int, data: bytes = b"", chk: int = 0) -> tuple[int, bytes]:
        self.port.write(slip_encode(struct.pack("<BBHI", 0, op, len(data), chk) + data))
        deadline = time.monotonic() + 2
        while not self.frames and time.monotonic() < deadline:
            self.frames += self.slip.feed(self.port.read(max(1, self.port.in_waiting)))
        frame = self.frames.pop(0)
        direction, op_ret, size, value = struct.unpack("<BBHI", frame[:8])
        assert direction == 1 and op_ret == op and size == len(frame) - 8
        return value, frame[8:]

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def raw(rig: Rig) -> Iterator[tuple[RawClient, Esp32RomEmulator]]:
    line, rom = rig()
    client = RawClient(line.device_path)
    client.port.reset_input_buffer()
    yield client, rom
    client.close()


def status(data: bytes) -> tuple[int, int]:
    assert len(data) >= 4
    return data[-4], data[-3]


def test_raw_protocol_replies_like_a_rom(raw: tuple[RawClient, Esp32RomEmulator]) -> None:
    c, rom = raw
    value, data = c.command(0x0A, struct.pack("<I", 0x40001000))  # READ_REG magic
    assert value == 0x00F01D83 and data == b"\0\0\0\0"  # ESP32 ROM: 4 status bytes
    assert status(c.command(0x0A, b"\0\0")[1]) == (1, ERR_INVALID)  # bad length
    assert status(c.command(0xD0)[1]) == (1, ERR_INVALID)  # stub-only ERASE_FLASH
    assert status(c.command(0x14)[1]) == (1, ERR_INVALID)  # GET_SECURITY_INFO: not in the ESP32 ROM
    md5_req = struct.pack("<IIII", 0, 4096, 0, 0)
    assert status(c.command(0x13, md5_req)[1]) == (1, ERR_FAILED)  # flash not attached yet
    assert status(c.command(0x0D, bytes(8))[1]) == (0, 0)  # SPI_ATTACH
    _, data = c.command(0x13, md5_req)
    assert data[:32] == hashlib.md5(b"\xff" * 4096).hexdigest().encode() and status(data) == (0, 0)
    assert status(c.command(0x0E, struct.pack("<II", 0, 65))[1]) == (1, ERR_READ_LENGTH)
    # FLASH_BEGIN takes 4 words on the ESP32 ROM (no encrypted flag), sector-aligned offsets
    assert status(c.command(0x02, struct.pack("<IIIII", 4096, 4, 1024, 0x10000, 0))[1]) == (1, ERR_INVALID)
    assert status(c.command(0x02, struct.pack("<IIII", 4096, 4, 1024, 0x10100))[1]) == (1, ERR_FAILED)
    assert status(c.command(0x02, struct.pack("<IIII", 4096, 4, 1024, 0x10000))[1]) == (0, 0)
    block = bytes(range(256)) * 4
    hdr = struct.pack("<IIII", len(block), 0, 0, 0)
    assert status(c.command(0x03, hdr + block, chk=checksum(block) ^ 1)[1]) == (1, ERR_CRC)
    assert status(c.command(0x03, struct.pack("<IIII", 1024, 1, 0, 0) + block, checksum(block))[1]) == (
        1,
        ERR_INVALID,  # out of sequence
    )
    assert status(c.command(0x03, hdr + block, checksum(block))[1]) == (0, 0)
    # writing 1s over 0s without an erase cannot work on NOR flash: the ROM's read-back catches it
    assert status(c.command(0x03, struct.pack("<IIII", 1024, 1, 0, 0) + block, checksum(block))[1]) == (0, 0)
    c.command(0x02, struct.pack("<IIII", 0, 1, 1024, 0x10000))  # begin without erasing anything
    inverted = bytes(255 - b for b in block)
    reply = c.command(0x03, hdr + inverted, checksum(inverted))[1]
    assert status(reply) == (1, ERR_FLASH_WRITE)
    # compressed data that is not deflate
    c.command(0x10, struct.pack("<IIII", 4096, 1, 1024, 0x20000))
    junk = b"\x12\x34" * 100
    reply = c.command(0x11, struct.pack("<IIII", len(junk), 0, 0, 0) + junk, checksum(junk))[1]
    assert status(reply) == (1, 0x0B)
    assert rom.state == "download"


def test_sync_gets_eight_replies(raw: tuple[RawClient, Esp32RomEmulator]) -> None:
    c, _ = raw
    value, _ = c.command(0x08, b"\x07\x07\x12\x20" + b"\x55" * 32)
    assert value != 0  # non-zero: a ROM, not the stub
    time.sleep(0.1)
    c.frames += c.slip.feed(c.port.read(c.port.in_waiting))
    assert len(c.frames) == 7


# --- the throttled link ----------------------------------------------------------------------


def test_throttled_line_never_exceeds_its_baud_rate() -> None:
    with SerialLine(baud=921600) as line:
        host = serial.Serial(line.device_path, 921600, timeout=2)
        unit = os.open(line.unit_path, os.O_RDWR | os.O_NOCTTY)
        try:
            data = os.urandom(46_080)  # 0.5 s at 92 160 B/s
            got = bytearray()

            def receive() -> None:
                while len(got) < len(data):
                    got.extend(os.read(unit, 65536))

            receiver = threading.Thread(target=receive)
            t = time.monotonic()
            receiver.start()
            host.write(data)  # blocks while the line paces it: the pty buffers are small
            receiver.join(5)
            rate = len(data) / (time.monotonic() - t)
        finally:
            host.close()
            os.close(unit)
    assert got == data
    # The throttle never lets bytes through faster than the baud rate (a loaded machine may be
    # slower: how close it gets is a figure for the benchmark, not an assertion).
    assert rate < 1.03 * 92160, rate


@pytest.mark.slow
@pytest.mark.parametrize("timing", [None, FlashTiming()], ids=["instant-flash", "w25q32-timing"])
def test_flash_over_a_921600_baud_link(rig: Rig, timing: FlashTiming | None) -> None:
    """esptool's ROM protocol is stop-and-wait (block, reply, next block), and the ROM erases up
    front and programs each block before replying: the flash uses most of the link, not all of
    it. The numbers are printed for the benchmark notes (pytest -s)."""
    line, rom = rig(baud=921600, timing=timing)
    app = image(120_000, 10, compressible=False)
    with connect(line) as esp:
        attach_flash(esp)
        sent0, t = line.bytes_to_unit, time.monotonic()
        write_flash(esp, [(0x10000, app)], compress=True, no_progress=True)
        elapsed = time.monotonic() - t
        sent = line.bytes_to_unit - sent0
    utilisation = sent / elapsed / 92160
    print(
        f"\n921600 baud, {'instant flash' if timing is None else 'W25Q32 timing'}: {sent} B on the wire "
        f"in {elapsed:.2f} s = {utilisation:.0%} of the link; {len(app) / elapsed:.0f} B/s written"
    )
    # Never faster than the link; how much of it the flash uses is printed above, not asserted.
    assert utilisation <= 1.02
    assert rom.read_flash(0x10000, len(app)) == app
