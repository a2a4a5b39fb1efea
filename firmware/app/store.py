"""Atomic, checksummed persistence that survives a power cut at any instant.

File format (identical to provisioning/virtual/store_file.py): one line of compact
JSON, then the CRC-32 of that line's bytes as 8 lowercase hex digits, each line ended
by ``\\n``. The CRC is how a torn or half-written file is told from a good one.

Saving ``name``: write ``name.new``, flush, ``os.sync()`` where the port has it,
then rename it over ``name``. littlefs and POSIX replace the target atomically; FAT
refuses to rename over an existing file, so there the target is removed first and
a cut between the remove and the rename leaves only ``name.new`` — which `load`
promotes. Loading recovers whatever a cut left behind and never raises:

- valid ``.new`` and missing/corrupt target -> the ``.new`` is promoted (renamed);
- valid ``.new`` and valid target -> the save never returned; the target (old state)
  wins and the ``.new`` is deleted;
- invalid ``.new`` -> deleted;
- corrupt target and no usable ``.new`` -> ``None`` (caller uses defaults), with a
  log line.

The one exception that does escape `load` is MemoryError (after a collection and a
retry): running out of heap is not a corrupt file, and treating it as one would
resume a suspended unit with default state.

Writes are synchronous: a few hundred bytes once per state change, which is an
acceptable pause for the event loop (documented where the unit calls `save`).
"""

import binascii
import gc
import json
import os

MAX_FILE = 4096  # a stored file larger than this is treated as corrupt


class StoreError(ValueError):
    pass


def encode(obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    return body + b"\n" + (b"%08x" % (binascii.crc32(body) & 0xFFFFFFFF)) + b"\n"


def decode(data):
    """Inverse of `encode`; raises StoreError/ValueError on a torn or corrupt file."""
    lines = data.split(b"\n")
    if len(lines) < 2 or len(lines[1]) != 8:
        raise StoreError("no checksum line")
    body = lines[0]
    if (b"%08x" % (binascii.crc32(body) & 0xFFFFFFFF)) != lines[1]:
        raise StoreError("checksum mismatch")
    return json.loads(body)


_MISSING = 0
_BAD = 1
_OK = 2


class Store:
    """`Store(root, log)`: files live directly in `root` (the unit's flash root)."""

    def __init__(self, root, log=None):
        if root and root != "/" and root.endswith("/"):
            root = root[:-1]
        self.root = root
        self.log = log

    def path(self, name):
        if not self.root:
            return name
        if self.root == "/":
            return "/" + name
        return self.root + "/" + name

    def _note(self, level, text):
        if self.log is not None:
            getattr(self.log, level)(text)

    def exists(self, name):
        try:
            os.stat(self.path(name))
            return True
        except OSError:
            return False

    def save(self, name, obj):
        """Atomically replace `name` with `obj`. Raises OSError if the flash refuses."""
        data = encode(obj)
        target = self.path(name)
        tmp = target + ".new"
        try:
            with open(tmp, "wb") as f:
                n = f.write(data)
                if n is not None and n != len(data):
                    raise OSError(28)  # ENOSPC: short write
                f.flush()
        except OSError:
            _remove(tmp)
            raise
        sync = getattr(os, "sync", None)
        if sync is not None:
            sync()
        try:
            os.rename(tmp, target)
        except OSError:
            # FAT: rename does not replace. A cut from here to the rename leaves
            # only the valid .new, which load() promotes.
            _remove(target)
            os.rename(tmp, target)

    def _read(self, path):
        """(_MISSING | _BAD | _OK, obj). A MemoryError is not a corrupt file: after a
        collection and one retry it propagates (defaults would silently resume a
        suspended unit or forget its identity)."""
        try:
            return self._read_once(path)
        except MemoryError:
            gc.collect()
            return self._read_once(path)

    def _read_once(self, path):
        try:
            size = os.stat(path)[6]
        except OSError:
            return _MISSING, None
        if size > MAX_FILE:
            return _BAD, None
        try:
            with open(path, "rb") as f:
                data = f.read(size + 1)
        except MemoryError:
            raise
        except OSError:
            return _MISSING, None
        except Exception:  # a broken filesystem must not crash boot
            return _BAD, None
        if len(data) > MAX_FILE:
            return _BAD, None
        try:
            return _OK, decode(data)
        except MemoryError:
            raise
        except Exception:  # StoreError, ValueError, UnicodeError
            return _BAD, None

    def load(self, name, default=None, recover=True):
        """The stored object, or `default` when missing or corrupt. Never raises.

        `recover=False` only reads the target and leaves any ``.new`` alone: for
        polling a file another process may be writing at that moment.
        """
        try:
            if not recover:
                st, obj = self._read(self.path(name))
                return obj if st == _OK else default
            return self._load(name, default)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - last resort: boot must go on
            self._note("error", "load %s failed (%s %s), using defaults" % (name, type(e).__name__, e))
            return default

    def _load(self, name, default):
        target = self.path(name)
        tmp = target + ".new"
        st, obj = self._read(target)
        nst, nobj = self._read(tmp)
        if nst == _OK and st != _OK:
            if st == _BAD:
                _remove(target)
            try:
                os.rename(tmp, target)
            except OSError:
                pass
            self._note("warn", "%s: recovered from %s.new" % (name, name))
            return nobj
        if nst != _MISSING:
            _remove(tmp)
            self._note("warn", "%s: discarded %s %s.new" % (name, "torn" if nst == _BAD else "unfinished", name))
        if st == _BAD:
            self._note("warn", "%s: corrupt file, using defaults" % name)
            return default
        if st == _MISSING:
            return default
        return obj


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
