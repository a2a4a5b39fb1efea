"""One-line log records on the console and the unit's uptime clock.

A record is ``<uptime ms> <LEVEL> <module>: <text>``, e.g.
``5231 INFO unit: connected``. Tests and the harness wait for such lines, so the
texts emitted by the application are part of its contract (see app/unit.py).

No module-level mutable state: the boot instant lives in an `Uptime` object that the
caller creates once per unit and shares between its loggers.
"""

import time


class Uptime:
    """Milliseconds since this object was created, immune to ticks wrap-around.

    `time.ticks_ms()` wraps (2**30 ms, ~12 days, on most ports); this clock adds up
    tick differences so it keeps counting as long as it is read at least once per
    half wrap period (~6 days). The unit reads it on every mains poll and every
    check-in sleep chunk, so it is read far more often than that.
    """

    def __init__(self):
        self._last = time.ticks_ms()
        self._ms = 0

    def ms(self):
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last)
        self._last = now
        return self._ms

    def s(self):
        return self.ms() // 1000


class Log:
    """A named logger. `Log("unit", uptime)`; `child("store")` shares the clock."""

    def __init__(self, name, uptime=None, debug=False):
        self.name = name
        self.uptime = uptime if uptime is not None else Uptime()
        self.debug_on = debug

    def child(self, name):
        return Log(name, self.uptime, self.debug_on)

    def _emit(self, level, text):
        print("%d %s %s: %s" % (self.uptime.ms(), level, self.name, text))

    def debug(self, text):
        if self.debug_on:
            self._emit("DEBUG", text)

    def info(self, text):
        self._emit("INFO", text)

    def warn(self, text):
        self._emit("WARN", text)

    warning = warn

    def error(self, text):
        self._emit("ERROR", text)

    def exc(self, text, e):
        """An error record for a caught exception (type and message, no traceback)."""
        self._emit("ERROR", "%s: %s %s" % (text, type(e).__name__, e))

    def __call__(self, level, text=None):
        """`log(level, text)` as mqtt.client calls it ("debug", "info", "warning",
        "error"), or `log(text)` for an info record."""
        if text is None:
            self._emit("INFO", level)
        elif level == "debug":
            self.debug(text)
        else:
            self._emit("WARN" if level == "warning" else level.upper(), text)
