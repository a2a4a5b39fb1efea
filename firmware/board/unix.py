"""Simulated board for the MicroPython unix port (the virtual unit).

Driven through files in ``<root>/sim/`` (root = env ``SIMSOCK_ROOT``, default cwd):

- ``hw.json``  hardware ids ``uid``, ``imei``, ``iccid`` (plain JSON, or the store
  format: JSON line + CRC line — only the first line is read), read once;
- ``in.json``  inputs ``mains`` (bool), ``temp_c`` (float|null), ``signal_dbm``
  (int|null), re-read when ``os.stat`` shows a new inode, size or mtime. mtime has
  1 s resolution, so while the file's mtime is within the last 2 s it is re-read on
  every poll (an atomic replace within the same second with the same size is seen);
  defaults mains=True, temp_c=21.5, signal_dbm=-71;
- ``relay``    the relay output, ``1`` / ``0``, written on every change (a physical
  output: plain write, no atomic dance; the first `relay_set` always writes).

The clock is always valid; `reset()` exits the process with code 42, which the
harness treats as a reboot.
"""

import json
import os
import sys
import time

DEFAULT_MAINS = True
DEFAULT_TEMP_C = 21.5
DEFAULT_SIGNAL = -71


def _read_json(path, size=4096):
    with open(path, "rb") as f:
        data = f.read(size)
    try:
        return json.loads(data)
    except ValueError:
        return json.loads(data.split(b"\n")[0])


class Board:
    name = "unix"

    def __init__(self, log=None, root=None):
        self.log = log
        if root is None:
            root = os.getenv("SIMSOCK_ROOT") or os.getcwd()
        self._root = root
        self._sim = root + "/sim"
        self._ids = None
        self._relay = None
        self._in_key = None
        self._mains = DEFAULT_MAINS
        self._temp = DEFAULT_TEMP_C
        self._signal = DEFAULT_SIGNAL

    def configure(self, opts):
        pass

    def _warn(self, text):
        if self.log is not None:
            self.log.warn(text)

    def storage_root(self):
        return self._root

    def _hw(self):
        if self._ids is None:
            try:
                hw = _read_json(self._sim + "/hw.json")
                if type(hw) is not dict:
                    raise ValueError("not an object")
            except Exception as e:  # noqa: BLE001 - missing or bad: no ids
                self._warn("sim/hw.json unreadable (%s), hardware ids unknown" % (e,))
                hw = {}
            self._ids = (str(hw.get("uid", "")), str(hw.get("imei", "")), str(hw.get("iccid", "")))
        return self._ids

    def unique_id(self):
        return self._hw()[0]

    def modem_ids(self):
        ids = self._hw()
        return ids[1], ids[2]

    def _poll(self):
        path = self._sim + "/in.json"
        try:
            st = os.stat(path)
        except OSError:
            if self._in_key is not None:
                self._in_key = None
                self._mains, self._temp, self._signal = DEFAULT_MAINS, DEFAULT_TEMP_C, DEFAULT_SIGNAL
            return
        key = (st[1], st[6], st[8])
        if key == self._in_key and st[8] < time.time() - 2:
            return
        try:
            inp = _read_json(path, st[6] or 1)  # only the file's bytes: this runs every poll
        except MemoryError:
            raise  # not "the file is being replaced": the unit must not run on stale inputs silently
        except Exception:  # noqa: BLE001 - being replaced right now; keep old values
            return
        if type(inp) is not dict:
            return
        self._in_key = key
        m = inp.get("mains", DEFAULT_MAINS)
        self._mains = bool(m)
        t = inp.get("temp_c", DEFAULT_TEMP_C)
        self._temp = t if (t is None or type(t) is int or type(t) is float) else DEFAULT_TEMP_C
        s = inp.get("signal_dbm", DEFAULT_SIGNAL)
        self._signal = s if (s is None or type(s) is int) else DEFAULT_SIGNAL

    def signal_dbm(self):
        self._poll()
        return self._signal

    def mains_present(self):
        self._poll()
        return self._mains

    def temperature_c(self):
        self._poll()
        return self._temp

    def relay_get(self):
        return bool(self._relay)

    def relay_set(self, on):
        on = bool(on)
        if on == self._relay:
            return
        self._relay = on
        try:
            try:
                os.mkdir(self._sim)
            except OSError:
                pass
            with open(self._sim + "/relay", "w") as f:
                f.write("1" if on else "0")
        except OSError as e:
            self._warn("sim/relay not written: %s" % e)

    def clock_valid(self):
        return True

    def time(self):
        return int(time.time())

    async def link_up(self):
        pass

    async def link_down(self):
        pass

    def reset(self):
        sys.exit(42)
