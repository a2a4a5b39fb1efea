"""Power-cut test of app/store.py on littlefs (run by tests/firmware/test_store.py).

`CutDevice` is a FAULT INJECTOR, i.e. a mock for a fault that can't be produced for
real here: a RAM block device (extended interface: readblocks/writeblocks with an
offset, ioctl erase) that "loses power" after a budget of program/erase operations.
The operation that hits the cut may be torn (only a prefix of it reaches the
blocks), it raises OSError(EIO), and from then on the blocks are frozen: every later
program/erase is silently dropped. The surviving blocks are then mounted by a fresh
VfsLfs2, as at the next boot, and `Store.load` must return exactly the old or the new
state and never raise; the file system must stay writable afterwards.

    micropython app_powercut.py [random_rounds] [seed]

Prints ``POWERCUT ok ...`` figures on success; any failure raises (exit code 1).
"""

import gc
import os
import random
import sys

import vfs
from app.store import Store

BS = 512
NBLOCKS = 48
MNT = "/pcut"
EIO = 5
DEBUG = False


class PowerCut(OSError):
    pass


class CutDevice:
    def __init__(self, data=None):
        self.data = bytearray(data) if data is not None else bytearray(b"\xff" * (BS * NBLOCKS))
        self.budget = -1  # program/erase operations left before the cut; -1: no cut
        self.ops = 0  # program/erase operations seen
        self.dead = False
        self.torn = False  # the cut operation writes a random prefix of its data

    def readblocks(self, block, buf, off=0):
        a = block * BS + off
        if self.dead:
            # After the cut littlefs may still read from a finaliser, where the heap
            # is locked: copy byte by byte (no allocation). The frozen blocks are
            # read as they are.
            d = self.data
            for i in range(len(buf)):
                buf[i] = d[a + i]
            return
        buf[:] = memoryview(self.data)[a : a + len(buf)]

    def _cut(self, a, data):
        """Returns True when the operation may proceed in full. Allocates nothing
        unless it is the cut (littlefs may call this from a finaliser, heap locked)."""
        if self.dead:
            return False
        self.ops += 1
        if self.budget < 0:
            return True
        if self.budget == 0:
            self.dead = True
            n = BS if data is None else len(data)  # None: an erase
            if self.torn and n > 1:
                k = random.randrange(1, n)
                self.data[a : a + k] = b"\xff" * k if data is None else data[:k]
            raise PowerCut(EIO)
        self.budget -= 1
        return True

    def writeblocks(self, block, buf, off=None):
        if off is None:  # simple interface: erase + program whole blocks
            off = 0
        a = block * BS + off
        if self._cut(a, buf):
            self.data[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return NBLOCKS
        if op == 5:
            return BS
        if op == 6:  # erase
            a = arg * BS
            if self._cut(a, None):
                self.data[a : a + BS] = b"\xff" * BS
            return 0
        return 0


def mount(dev):
    fs = vfs.VfsLfs2(dev)
    vfs.mount(fs, MNT)


def umount():
    try:  # noqa: SIM105 - MicroPython has no contextlib
        vfs.umount(MNT)
    except OSError:
        pass


def boot(data):
    """A fresh device from surviving blocks, mounted; returns (device, store)."""
    dev = CutDevice(data)
    mount(dev)
    return dev, Store(MNT)


def state(i, pad):
    return {"v": i, "mode": ("active", "suspended", "sleep")[i % 3], "relay": i % 2 == 1, "pad": "x" * pad}


def check_after_cut(data, old, new, completed, ctx):
    """Reboot on the surviving blocks: load must be old or new (new if completed)."""
    dev, store = boot(data)
    try:
        got = store.load("state.json")
        if completed and got != new:
            raise AssertionError(f"{ctx}: save returned but load gave {got!r}")
        if got != old and got != new:
            raise AssertionError("{}: load gave {!r}, neither old nor new".format(ctx, got and got.get("v")))
        again = store.load("state.json")
        if again != got:
            raise AssertionError(f"{ctx}: second load differs")
        names = [e[0] for e in os.ilistdir(MNT)]
        if "state.json.new" in names:
            raise AssertionError(f"{ctx}: .new left after recovery")
        return dev, got
    finally:
        umount()


def naive_save(name, obj):
    """Negative control: overwrite in place, no temp file (what store.py must not do).

    littlefs alone commits a file at close/flush, so the write is split by a flush,
    as a larger file written in pieces would be."""
    from app.store import encode

    data = encode(obj)
    with open(MNT + "/" + name, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        f.write(data[len(data) // 2 :])


def save_with_cut(data, budget, torn, obj, naive=False):
    """Mount `data`, save `obj` with a cut after `budget` ops; -> (blocks, completed, ops)."""
    dev = CutDevice(data)
    mount(dev)
    dev.budget = budget
    dev.torn = torn
    completed = False
    try:
        if naive:
            naive_save("state.json", obj)
        else:
            Store(MNT).save("state.json", obj)
        completed = True
    except OSError:
        if not dev.dead:
            raise
    gc.collect()  # finalise a file the cut left open while its fs is still mounted
    umount()
    return bytes(dev.data), completed, dev.ops


def exhaustive(old, new, torn, label):
    """Cut a save of `new` over `old` at every operation 0..W; returns W."""
    dev = CutDevice()
    vfs.VfsLfs2.mkfs(dev)
    if old is not None:
        mount(dev)
        Store(MNT).save("state.json", old)
        umount()
    base = bytes(dev.data)
    _, completed, w = save_with_cut(base, -1, False, new)
    assert completed
    for n in range(w + 1):
        data, completed, _ = save_with_cut(base, n, torn, new)
        if n == w and not completed:
            raise AssertionError(f"{label}: full budget did not complete")
        check_after_cut(data, old, new, completed, f"{label} cut at {n}/{w}")
        # After recovery the file system takes new saves.
        _, st = boot(data)
        st.save("state.json", {"v": 999})
        if st.load("state.json") != {"v": 999}:
            raise AssertionError(f"{label} cut at {n}: not writable after recovery")
        umount()
    return w


def negative_control():
    """The injector must catch a non-atomic save: count cut points where it fails."""
    dev = CutDevice()
    vfs.VfsLfs2.mkfs(dev)
    mount(dev)
    old, new = state(1, 1200), state(2, 1300)
    Store(MNT).save("state.json", old)
    umount()
    base = bytes(dev.data)
    _, _, w = save_with_cut(base, -1, False, new, naive=True)
    caught = 0
    for n in range(w + 1):
        data, completed, _ = save_with_cut(base, n, False, new, naive=True)
        try:
            check_after_cut(data, old, new, completed, "naive")
        except AssertionError:
            caught += 1
    if not caught:
        raise AssertionError("fault injector did not catch a non-atomic save")
    return caught, w + 1


def random_rounds(rounds):
    """Repeated saves on one device, cut at a random op of a random save; reboot; go on."""
    dev = CutDevice()
    vfs.VfsLfs2.mkfs(dev)
    data = bytes(dev.data)
    cur = None
    cuts = 0
    max_ops = 0
    for r in range(rounds):
        i = r + 1
        if DEBUG:
            print("round", r)
        new = state(i, random.choice((0, 10, 100, 300, 600, 1500)))
        _, _, w = save_with_cut(data, -1, False, new)  # how many ops this save takes
        max_ops = max(max_ops, w)
        n = random.randrange(0, w + 2)  # w+1: no cut at all
        torn = random.random() < 0.5
        if DEBUG:
            print(" measured w={} n={} torn={} pad={}".format(w, n, torn, len(new["pad"])))
        data2, completed, _ = save_with_cut(data, n if n <= w else -1, torn, new)
        if DEBUG:
            print(f" saved completed={completed}")
        if not completed:
            cuts += 1
        _, got = check_after_cut(data2, cur, new, completed, f"round {r} cut at {n}/{w}")
        cur = got
        data = data2
    return cuts, max_ops


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    random.seed(seed)
    figures = []
    for label, old, new in (
        ("first-save", None, state(1, 20)),
        ("small", state(1, 20), state(2, 30)),
        ("inline-to-block", state(1, 20), state(2, 900)),
        ("block-to-block", state(1, 1200), state(2, 1300)),
        ("block-to-inline", state(1, 1200), state(2, 5)),
    ):
        for torn in (False, True):
            w = exhaustive(old, new, torn, label + ("/torn" if torn else ""))
            figures.append(label + ("/torn" if torn else "") + "=" + str(w + 1))
    caught, points = negative_control()
    cuts, max_ops = random_rounds(rounds)
    print("POWERCUT ok exhaustive {}".format(" ".join(figures)))
    print(f"POWERCUT ok negative-control caught={caught}/{points}")
    print(f"POWERCUT ok random rounds={rounds} cuts={cuts} max_ops_per_save={max_ops} seed={seed}")


main()
