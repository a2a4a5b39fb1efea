# MicroPython (unix port): mount a littlefs2 image with vfs.VfsLfs2 defaults, as the esp32
# port does, and print one JSON line per file: {"path", "size", "sha256"}; then "OK".
#   micropython lfs_dump.py IMAGE_FILE [OFFSET [SIZE]]
# Exit 3 when the image does not mount (the unit would not boot it).
import hashlib
import json
import os
import sys

import vfs

BLOCK = 4096


class Dev:
    def __init__(self, f, offset, size):
        self.f, self.offset, self.size = f, offset, size

    def readblocks(self, block, buf, off=0):
        self.f.seek(self.offset + block * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, off=None):
        raise OSError(30)  # read-only: a dump must not change the image

    def ioctl(self, op, arg):
        if op == 4:
            return self.size // BLOCK
        if op == 5:
            return BLOCK
        if op in (1, 2, 3):
            return 0
        return None


def walk(path):
    for name, kind, *_ in vfs_obj.ilistdir(path):
        full = path.rstrip("/") + "/" + name
        if kind == 0x4000:
            yield from walk(full)
        else:
            yield full


args = sys.argv[1:]
path = args[0]
offset = int(args[1], 0) if len(args) > 1 else 0
size = int(args[2], 0) if len(args) > 2 else os.stat(path)[6] - offset
f = open(path, "rb")  # noqa: SIM115 - the mounted filesystem reads it until exit
try:
    vfs_obj = vfs.VfsLfs2(Dev(f, offset, size))
except OSError as e:
    print("MOUNT FAILED", e)
    sys.exit(3)
for p in walk("/"):
    with vfs_obj.open(p, "rb") as g:
        data = g.read()
    h = hashlib.sha256(data).digest()
    print(json.dumps({"path": p.lstrip("/"), "size": len(data), "sha256": "".join(f"{b:02x}" for b in h)}))
print("OK")
