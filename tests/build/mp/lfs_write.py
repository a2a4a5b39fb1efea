# MicroPython (unix port): format a blank image file with vfs.VfsLfs2.mkfs (defaults, as
# inisetup.py does on a unit) and write files into it the way firmware does (mkdir, open "wb",
# a rename over an existing file, a remove). Prints one JSON line per file left: {"path", "sha256"}.
#   micropython lfs_write.py IMAGE_FILE
import hashlib
import json
import os
import sys

import vfs

BLOCK = 4096


class Dev:
    def __init__(self, f, size):
        self.f, self.size = f, size

    def readblocks(self, block, buf, off=0):
        self.f.seek(block * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, off=None):
        if off is None:
            for i in range(len(buf) // BLOCK):
                self.ioctl(6, block + i)
            off = 0
        self.f.seek(block * BLOCK + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.size // BLOCK
        if op == 5:
            return BLOCK
        if op == 6:
            self.f.seek(arg * BLOCK)
            self.f.write(b"\xff" * BLOCK)
            return 0
        if op in (1, 2, 3):
            return 0
        return None


path = sys.argv[1]
f = open(path, "r+b")  # noqa: SIM115 - the block device keeps it open
dev = Dev(f, os.stat(path)[6])
vfs.VfsLfs2.mkfs(dev)
fs = vfs.VfsLfs2(dev)
vfs.mount(fs, "/img")
files = {}
os.mkdir("/img/lib")
os.mkdir("/img/lib/deep")
for i in range(12):
    data = bytes((i * 7 + j * 13) & 0xFF for j in range(i * 997))  # 0 .. ~11 KB: inline and CTZ files
    p = f"/img/lib/deep/f{i:02d}.bin" if i % 2 else f"/img/f{i:02d}.bin"
    with open(p, "wb") as g:
        g.write(data)
    files[p] = data
with open("/img/state.json.new", "wb") as g:
    g.write(b'{"v":3}\n')
os.rename("/img/state.json.new", "/img/state.json")
files["/img/state.json"] = b'{"v":3}\n'
os.remove("/img/f00.bin")
del files["/img/f00.bin"]
name = "/img/" + "n" * 255  # the longest name name_max allows
with open(name, "wb") as g:
    g.write(b"long name")
files[name] = b"long name"
vfs.umount("/img")
f.close()
for p in sorted(files):
    h = hashlib.sha256(files[p]).digest()
    print(json.dumps({"path": p[len("/img/") :], "sha256": "".join(f"{b:02x}" for b in h)}))
