# MicroPython (unix port) script: boot the firmware from a flash image file, as a unit boots.
#
#   micropython mp_flash_boot.py FLASH_FILE [--offset N] [--size N] [--mount /flash] [--sim DIR]
#
# Runs on MicroPython, not CPython. What it does, like ports/esp32 at power-on:
# - finds the filesystem partition in FLASH_FILE: the "vfs" entry of the partition table at
#   0x8000, else (MicroPython >= 1.26) from the end of the last partition to the end of the
#   flash (= the file's size); no table at all: 0x200000 to the end. --offset/--size override
#   (--offset 0 boots a bare fs.img);
# - exposes it as a block device (readblocks/writeblocks/ioctl with the extended, byte-offset
#   interface littlefs uses; 4096-byte blocks, erase writes 0xFF) and mounts vfs.VfsLfs2 on
#   it with MicroPython's defaults - the very check the unit does, so a wrong image fails here;
# - the simulated hardware (<SIMSOCK_ROOT>/sim on the host, or --sim DIR) is mounted at
#   <mount>/sim: the modem ids and inputs are hardware, not files in the unit's flash;
# - points SIMSOCK_ROOT at the mount point (the unix board keeps its files there), chdirs to
#   it, puts only the flash (and frozen modules) on sys.path, runs boot.py if present, then
#   main.py as __main__. Exit code 42 (board.reset()) passes through; a mount failure exits 3.
#
# Writes go straight to FLASH_FILE (unbuffered), so a kill -9 is a power cut at that point.

import os
import sys

import vfs

BLOCK = 4096
TABLE_AT = 0x8000
DEFAULT_FS_AT = 0x200000
MOUNT_FAILED = 3


class FlashPartition:
    """A region of a flash image file as a MicroPython block device (extended interface)."""

    def __init__(self, f, offset, size, block_size=BLOCK):
        self.f = f
        self.offset = offset
        self.size = size
        self.block_size = block_size
        self.erased = b"\xff" * block_size

    def _seek(self, block, off):
        self.f.seek(self.offset + block * self.block_size + off)

    def readblocks(self, block, buf, off=0):
        self._seek(block, off)
        n = self.f.readinto(buf)
        if n != len(buf):  # past the end of a short file: erased flash
            for i in range(n or 0, len(buf)):
                buf[i] = 0xFF

    def writeblocks(self, block, buf, off=None):
        if off is None:  # simple interface: whole blocks, erase first
            for i in range(len(buf) // self.block_size):
                self.ioctl(6, block + i)
            off = 0
        self._seek(block, off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.size // self.block_size
        if op == 5:  # block size
            return self.block_size
        if op == 6:  # erase
            self._seek(arg, 0)
            self.f.write(self.erased)
            return 0
        if op == 3:  # sync
            self.f.flush()
            return 0
        if op in (1, 2):  # init, deinit
            return 0
        return None


def find_fs(f, flash_size):
    """(offset, size) of the filesystem, as MicroPython's esp32 port decides it."""
    import struct

    f.seek(TABLE_AT)
    table = f.read(0xC00) or b""
    last_end = 0
    for pos in range(0, len(table) - 31, 32):
        e = table[pos : pos + 32]
        if e[0] != 0xAA or e[1] != 0x50:
            break
        ptype, _sub, offset, size = struct.unpack("<BBII", e[2:12])
        label = e[12:28].split(b"\0")[0]
        if ptype == 1 and label == b"vfs":
            return offset, size
        last_end = max(last_end, offset + size)
    start = last_end or DEFAULT_FS_AT
    return start, flash_size - start


def _opt(args, name, default=None):
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i : i + 2]
        return value
    return default


def _stat_size(path):
    return os.stat(path)[6]


def main(argv):
    args = list(argv)
    offset = _opt(args, "--offset")
    size = _opt(args, "--size")
    mount = _opt(args, "--mount", "/flash")
    host_root = os.getenv("SIMSOCK_ROOT")
    sim = _opt(args, "--sim", host_root + "/sim" if host_root else None)
    if len(args) != 1:
        print("usage: micropython mp_flash_boot.py FLASH_FILE [--offset N] [--size N] [--mount /flash] [--sim DIR]")
        sys.exit(2)
    path = args[0]
    flash_size = _stat_size(path)
    f = open(path, "r+b")  # noqa: SIM115 - the block device keeps it open while the unit runs
    if offset is None:
        fs_at, fs_size = find_fs(f, flash_size)
    else:
        fs_at = int(offset, 0)
        fs_size = flash_size - fs_at
    if size is not None:
        fs_size = int(size, 0)
    bdev = FlashPartition(f, fs_at, fs_size)
    if sim is not None:
        try:
            os.stat(sim)
        except OSError:
            os.mkdir(sim)
        # mounted first: MicroPython resolves a path by the first matching mount point
        vfs.mount(vfs.VfsPosix(sim), mount + "/sim")
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError as e:
        print(f"mp_flash_boot: no littlefs at {path} offset {fs_at:#x} size {fs_size:#x}: {e!r}")
        sys.exit(MOUNT_FAILED)
    vfs.mount(fs, mount)
    os.putenv("SIMSOCK_ROOT", mount)
    os.chdir(mount)
    sys.path[:] = [mount, mount + "/lib", ".frozen"]
    for script in ("boot.py", "main.py"):
        try:
            with open(script) as src:
                code = src.read()
        except OSError:
            continue
        exec(code, {"__name__": "__main__", "__file__": f"{mount}/{script}"})


main(sys.argv[1:])
