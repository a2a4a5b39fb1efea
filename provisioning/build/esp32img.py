"""The ESP32 flash layout, a MicroPython release .bin, and the merged flash image.

A MicroPython esp32 release ``.bin`` is bootloader + partition table + app in one file,
written at 0x1000 (the ESP32's bootloader offset; ports/esp32/makeimg.py,
OFFSET_BOOTLOADER_DEFAULT). Its partition table sits at flash 0x8000, so at 0x7000
inside the file. The generic 4MiB+ table of MicroPython >= 1.26
(ports/esp32/partitions-4MiBplus.csv) has no ``vfs`` entry any more::

    nvs,      data, nvs,     0x9000,  0x6000,
    phy_init, data, phy,     0xf000,  0x1000,
    factory,  app,  factory, 0x10000, 0x1F0000,

and at boot (ports/esp32/main.c, boardctrl_startup) MicroPython adds a ``vfs``
partition from the end of the last partition (0x200000) to the end of the detected
flash: 0x200000 bytes on a 4 MiB module, 6 MiB on an 8 MiB one. So the filesystem's
block count depends on the module's flash size — ``--flash-size`` must be the real one,
or littlefs refuses to mount (superblock block_count != device block_count).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from provisioning.build.errors import BuildError

ESP32_BOOTLOADER_OFFSET = 0x1000
PARTITION_TABLE_OFFSET = 0x8000
DEFAULT_FLASH_SIZE = 4 * 1024 * 1024
DEFAULT_APP_END = 0x200000  # end of `factory` in partitions-4MiBplus.csv
ESP_IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
_PART_MAGIC = b"\xaa\x50"
_MD5_MAGIC = b"\xeb\xeb"
_PART_ENTRY = struct.Struct("<2sBBII16sI")


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class FsPartition:
    """Where the unit's littlefs lives in flash, and why there."""

    offset: int
    size: int
    flash_size: int
    source: str  # "default 4MiB+ layout", "vfs entry of the .bin's table", "after the .bin's last partition"

    @property
    def end(self) -> int:
        return self.offset + self.size


def parse_partition_table(data: bytes) -> list[Partition]:
    """ESP-IDF binary partition table (gen_esp32part.py format); checks its MD5 entry if present."""
    parts: list[Partition] = []
    for pos in range(0, min(len(data), 0xC00) - _PART_ENTRY.size + 1, _PART_ENTRY.size):
        entry = data[pos : pos + _PART_ENTRY.size]
        if entry[:2] == _MD5_MAGIC:
            if hashlib.md5(data[:pos]).digest() != entry[16:32]:
                raise BuildError("the partition table in the MicroPython .bin fails its MD5 check (corrupt .bin?)")
            break
        if entry[:2] != _PART_MAGIC:
            break
        _magic, ptype, subtype, offset, size, label, _flags = _PART_ENTRY.unpack(entry)
        parts.append(Partition(label.rstrip(b"\0").decode("ascii", "replace"), ptype, subtype, offset, size))
    return parts


@dataclass(frozen=True)
class MicroPythonBin:
    path: Path
    data: bytes
    offset: int  # where it is written in flash
    partitions: list[Partition]
    version: str | None  # from the app's esp_app_desc_t, e.g. "v1.29.0"
    project: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def _app_desc(image: bytes) -> tuple[str | None, str | None]:
    """esp_app_desc_t sits right after the first segment header of an app image:
    24-byte image header + 8-byte segment header, then magic, secure_version, 2 reserved
    words, version[32], project_name[32]."""
    off = 24 + 8
    if len(image) < off + 80 or image[0] != ESP_IMAGE_MAGIC:
        return None, None
    magic = struct.unpack_from("<I", image, off)[0]
    if magic != APP_DESC_MAGIC:
        return None, None
    version = image[off + 16 : off + 48].split(b"\0")[0].decode("ascii", "replace")
    project = image[off + 48 : off + 80].split(b"\0")[0].decode("ascii", "replace")
    return version or None, project or None


def load_micropython_bin(path: Path, offset: int = ESP32_BOOTLOADER_OFFSET) -> MicroPythonBin:
    """Read and sanity-check a MicroPython esp32 release .bin (bootloader + table + app)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BuildError(f"--micropython-bin {path}: no such file") from None
    except IsADirectoryError:
        raise BuildError(f"--micropython-bin {path}: is a directory, not a .bin") from None
    except OSError as exc:
        raise BuildError(f"--micropython-bin {path}: cannot read it ({exc.strerror})") from None
    if len(data) < 0x100 or data[0] != ESP_IMAGE_MAGIC:
        raise BuildError(
            f"--micropython-bin {path}: not an ESP32 firmware image (no 0xE9 image header at its start); "
            "give the MicroPython release .bin for ESP32_GENERIC, written at 0x1000"
        )
    table_at = PARTITION_TABLE_OFFSET - offset
    parts = parse_partition_table(data[table_at : table_at + 0xC00]) if len(data) > table_at else []
    if not parts:
        raise BuildError(
            f"--micropython-bin {path}: no partition table at flash {PARTITION_TABLE_OFFSET:#x} "
            f"(file offset {table_at:#x}); an app-only .bin (for 0x10000) is not enough for a one-pass image"
        )
    version = project = None
    apps = [p for p in parts if p.type == 0]
    if apps and len(data) > apps[0].offset - offset:
        version, project = _app_desc(data[apps[0].offset - offset :])
    return MicroPythonBin(Path(path), data, offset, parts, version, project)


def parse_size(text: str | int) -> int:
    """'4MB', '4M', '0x400000', '2048K', 4194304 -> bytes."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = 1
    if t.endswith("K"):
        mult, t = 1024, t[:-1]
    elif t.endswith("M"):
        mult, t = 1024 * 1024, t[:-1]
    try:
        return int(t, 0) * mult
    except ValueError:
        raise BuildError(f"not a size: {text!r} (e.g. 4MB, 0x200000, 2048K)") from None


def fs_partition(
    flash_size: int = DEFAULT_FLASH_SIZE,
    partition_size: int | None = None,
    partition_offset: int | None = None,
    mpbin: MicroPythonBin | None = None,
    block_size: int = 4096,
) -> FsPartition:
    """Where MicroPython will look for its filesystem on this unit."""
    if mpbin is not None:
        vfs = [p for p in mpbin.partitions if p.type == 1 and p.label in ("vfs", "ffat")]
        if vfs and vfs[0].label == "ffat":
            raise BuildError("the .bin's partition table has an 'ffat' (FAT) filesystem, not littlefs 'vfs'")
        if vfs:
            offset, default_size, source = vfs[0].offset, vfs[0].size, "vfs entry of the .bin's partition table"
        else:
            offset = max(p.end for p in mpbin.partitions)
            default_size, source = flash_size - offset, "after the .bin's last partition, to the end of flash"
    else:
        offset, default_size, source = DEFAULT_APP_END, flash_size - DEFAULT_APP_END, "MicroPython 4MiB+ layout"
    if partition_offset is not None:
        offset, source = partition_offset, "given offset"
    size = partition_size if partition_size is not None else default_size
    if partition_size is not None and mpbin is not None and source.startswith("vfs entry") and size != default_size:
        raise BuildError(
            f"--partition-size {size:#x} differs from the vfs partition of the .bin's table ({default_size:#x})"
        )
    if size <= 0:
        raise BuildError(f"no room for a filesystem: it would start at {offset:#x} on a {flash_size:#x}-byte flash")
    if offset % block_size or size % block_size:
        raise BuildError(f"filesystem partition {offset:#x}+{size:#x} is not aligned to {block_size}-byte blocks")
    if offset + size > flash_size:
        raise BuildError(
            f"filesystem partition {offset:#x}+{size:#x} ends past the {flash_size // (1024 * 1024)} MiB flash"
        )
    if mpbin is not None:
        for p in mpbin.partitions:
            if p.offset < offset + size and offset < p.end and p.label not in ("vfs", "ffat"):
                raise BuildError(
                    f"filesystem partition {offset:#x}+{size:#x} overlaps partition {p.label!r} "
                    f"({p.offset:#x}+{p.size:#x}) of the .bin's table"
                )
    return FsPartition(offset, size, flash_size, source)


def merge(mpbin: MicroPythonBin, fs_image: bytes, part: FsPartition, chip: str = "esp32") -> bytes:
    """One image for a single write at `mpbin.offset`: MicroPython .bin, 0xFF gap, filesystem.

    Uses esptool's merge_bin (Python API, flash parameters kept as they are in the .bin)."""
    if mpbin.end > part.offset:
        raise BuildError(
            f"the MicroPython .bin ({len(mpbin.data)} bytes at {mpbin.offset:#x}, ends at {mpbin.end:#x}) "
            f"overlaps the filesystem partition at {part.offset:#x}: wrong .bin or wrong layout"
        )
    if len(fs_image) != part.size:
        raise BuildError(f"filesystem image is {len(fs_image)} bytes, the partition {part.size}")
    from esptool.cmds import merge_bin  # type: ignore[import-untyped]

    merged = merge_bin(
        [(mpbin.offset, mpbin.data), (part.offset, fs_image)],
        chip,
        output=None,
        target_offset=mpbin.offset,
    )
    assert isinstance(merged, bytes)
    return merged


# --- a stand-in for a MicroPython release .bin, for tests -------------------------------------------


def _esp_image(segments: list[tuple[int, bytes]], entry: int, chip_id: int = 0) -> bytes:
    """A structurally valid ESP32 image: header, extended header, segments, checksum, no hash."""
    out = bytearray(struct.pack("<BBBBI", ESP_IMAGE_MAGIC, len(segments), 2, 0x20, entry))  # DIO, 4MB, 40MHz
    # extended header: wp_pin, spi_pin_drv[3], chip_id, min_rev, min_rev_full, max_rev_full, reserved[4], hash_appended
    out += struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", chip_id, 0, 0, 399, b"\0" * 4, 0)
    checksum = 0xEF
    for addr, data in segments:
        data = data + b"\0" * (-len(data) % 4)
        out += struct.pack("<II", addr, len(data)) + data
        for b in data:
            checksum ^= b
    out += b"\0" * (15 - len(out) % 16) + bytes([checksum])
    return bytes(out)


def fake_micropython_bin(
    app_size: int = 64 * 1024, version: str = "v1.29.0", table: list[Partition] | None = None
) -> bytes:
    """A test input shaped like a MicroPython ESP32_GENERIC release .bin (written at 0x1000):
    an ESP image "bootloader", the 4MiB+ partition table at file offset 0x7000, and an
    "app" image at 0xF000 carrying an esp_app_desc_t with `version`. It boots nothing."""
    table = table or [
        Partition("nvs", 1, 2, 0x9000, 0x6000),
        Partition("phy_init", 1, 1, 0xF000, 0x1000),
        Partition("factory", 0, 0, 0x10000, 0x1F0000),
    ]
    boot = _esp_image([(0x3FFF0000, b"fake bootloader (test input)".ljust(256, b"\0"))], 0x40080000)
    rows = b"".join(
        _PART_ENTRY.pack(_PART_MAGIC, p.type, p.subtype, p.offset, p.size, p.label.encode().ljust(16, b"\0"), 0)
        for p in table
    )
    rows += _MD5_MAGIC + b"\xff" * 14 + hashlib.md5(rows).digest()
    desc = struct.pack("<IIII", APP_DESC_MAGIC, 0, 0, 0) + version.encode().ljust(32, b"\0")
    desc += b"micropython".ljust(32, b"\0") + b"\0" * (256 - len(desc) - 32)
    filler = bytes((i * 131 + 7) & 0xFF for i in range(max(0, app_size - len(desc) - 64)))
    app = _esp_image([(0x3F400020, desc + filler)], 0x400D0000)
    data = bytearray(b"\xff" * (0xF000 + len(app)))
    data[: len(boot)] = boot
    table_at = PARTITION_TABLE_OFFSET - ESP32_BOOTLOADER_OFFSET
    data[table_at : table_at + 0xC00] = (rows + b"\xff" * 0xC00)[:0xC00]
    data[0xF000:] = app
    return bytes(data)
