"""The littlefs2 image of a unit's filesystem partition, made with littlefs-python.

The known trap: littlefs-python's defaults are not MicroPython's. A littlefs superblock
records block_size, block_count, name_max, file_max, attr_max and the on-disk version;
mounting refuses (LFS_ERR_INVAL, OSError 22 in MicroPython) when the device's block size
or block count differ, or when a limit is larger than what the reader was compiled with.
Read/prog/cache/lookahead sizes are not on disk, but they decide commit padding and how
much of a file is stored inline in its directory, so we use MicroPython's values too and
the image is laid out exactly as the unit itself would have written it.

What MicroPython (1.2x, checked in the source of 1.29) uses on the esp32 port:

- block device: ``esp32.Partition`` of the ``vfs`` partition, native block size 4096
  (ports/esp32/esp32_partition.c NATIVE_BLOCK_SIZE_BYTES), block count = size / 4096;
- ``vfs.VfsLfs2(bdev)`` with defaults (ports/esp32/modules/_boot.py, inisetup.py):
  readsize=32, progsize=32, lookahead=32 (extmod/vfs_lfs.c);
- extmod/vfs_lfsx.c: block_cycles=100, cache_size=min(block_size, 4*max(read, prog))=128,
  name_max/file_max/attr_max left 0 = the compiled defaults (LFS2_NAME_MAX 255,
  LFS2_FILE_MAX 2147483647, LFS2_ATTR_MAX 1022), disk_version 0 = LFS2_DISK_VERSION
  (2.1 in lib/littlefs v2.11, the same littlefs release as littlefs-python 0.19).

tests/build/test_fsimage_micropython.py proves it both ways with the MicroPython unix
port, and shows the defaults of littlefs-python (block_size 128) do not mount.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from littlefs import LittleFS, LittleFSError, UserContext

from provisioning.build.errors import BuildError

BLOCK_SIZE = 4096


@dataclass(frozen=True)
class LfsParams:
    """littlefs2 configuration: MicroPython's VfsLfs2 defaults on a 4096-byte block device."""

    block_size: int = BLOCK_SIZE
    read_size: int = 32
    prog_size: int = 32
    cache_size: int = 128
    lookahead_size: int = 32
    block_cycles: int = 100
    name_max: int = 255
    file_max: int = 0  # 0: LFS2_FILE_MAX
    attr_max: int = 0  # 0: LFS2_ATTR_MAX
    disk_version: int = 0  # 0: this littlefs's LFS2_DISK_VERSION (2.1), as MicroPython

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


MICROPYTHON_LFS2 = LfsParams()


def _open(buffer: bytearray, params: LfsParams) -> LittleFS:
    # mount=False always: LittleFS(mount=True) silently *formats* an image it cannot mount.
    if len(buffer) % params.block_size:
        raise BuildError(f"image size {len(buffer)} is not a multiple of the block size {params.block_size}")
    cfg: dict[str, Any] = {**params.as_dict(), "block_count": len(buffer) // params.block_size}
    return LittleFS(context=UserContext(buffer=buffer), mount=False, **cfg)


def _dirs_of(path: str) -> list[str]:
    parents = list(PurePosixPath(path).parents)[:-1]  # drop "."
    return [p.as_posix() for p in reversed(parents)]


def make_image(
    files: Mapping[str, bytes],
    partition_size: int,
    params: LfsParams = MICROPYTHON_LFS2,
    min_free: int = 0,
) -> bytes:
    """A littlefs2 image of exactly `partition_size` bytes holding `files` (posix paths).

    Deterministic: directories and files are written in sorted order, no timestamps
    (MicroPython's mtime attribute is simply absent: stat() reports 0 until the unit
    rewrites a file), erased space is 0xFF as on a fresh flash.
    """
    if partition_size <= 0 or partition_size % params.block_size:
        raise BuildError(f"partition size {partition_size:#x} is not a positive multiple of {params.block_size}")
    blocks = partition_size // params.block_size
    if blocks < 8:
        raise BuildError(f"partition of {partition_size} bytes is too small for littlefs ({blocks} blocks)")
    total = sum(len(b) for b in files.values())
    if total + min_free > partition_size:
        raise BuildError(
            f"firmware files take {total} bytes (+{min_free} kept free), more than the "
            f"{partition_size}-byte ({partition_size // 1024} KiB) filesystem partition"
        )
    buffer = bytearray(b"\xff" * partition_size)
    fs = _open(buffer, params)
    try:
        fs.format()
        fs.mount()
        made: set[str] = set()
        for path in sorted(files):
            norm = PurePosixPath(path.lstrip("/")).as_posix()
            if norm in ("", ".") or ".." in PurePosixPath(norm).parts:
                raise BuildError(f"bad path in image: {path!r}")
            if any(len(part.encode()) > params.name_max for part in PurePosixPath(norm).parts):
                raise BuildError(f"a name in {path!r} is longer than name_max={params.name_max}")
            for d in _dirs_of(norm):
                if d not in made:
                    fs.mkdir(d)
                    made.add(d)
            with fs.open(norm, "wb") as f:
                f.write(files[path])
        used = fs.used_block_count * params.block_size
        fs.unmount()
    except LittleFSError as exc:
        if exc.code == LittleFSError.Error.LFS_ERR_NOSPC:
            raise BuildError(
                f"firmware files ({total} bytes) do not fit in the {partition_size // 1024} KiB filesystem "
                f"partition once laid out by littlefs ({blocks} blocks of {params.block_size})"
            ) from exc
        raise BuildError(f"littlefs error while making the image: {exc}") from exc
    if partition_size - used < min_free:
        raise BuildError(
            f"the filesystem image leaves {partition_size - used} bytes free, less than the "
            f"{min_free} bytes the unit needs for its own files (state, identity, config)"
        )
    return bytes(buffer)


@dataclass(frozen=True)
class ImageInfo:
    files: dict[str, bytes]
    block_count: int
    used_bytes: int


def read_image(image: bytes | bytearray, params: LfsParams = MICROPYTHON_LFS2) -> ImageInfo:
    """Mount an image (strictly, with `params`) and read every file back."""
    buffer = bytearray(image)
    fs = _open(buffer, params)
    try:
        fs.mount()
    except LittleFSError as exc:
        raise BuildError(f"image does not mount with {params}: {exc}") from exc
    out: dict[str, bytes] = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = f"{root.rstrip('/')}/{name}".lstrip("/")
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    used = fs.used_block_count * params.block_size
    fs.unmount()
    return ImageInfo(files=out, block_count=len(buffer) // params.block_size, used_bytes=used)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
