"""Flash one unit over its serial port through esptool's Python API (not a subprocess).

    from provisioning.bench.flash import flash_unit, FlashError

    res = flash_unit("/dev/ttyUSB0", ".build/out/flash.bin", chip="esp32", baud=921600,
                     progress=lambda p: print(p.phase, p.done, p.total))
    res.ok, res.chip, res.mac, res.flash_size, res.md5, res.seconds

Steps (each failure is a `FlashError` naming its step; nothing else counts as success):

1. image    — read the image; refuse an empty one or a misaligned offset
2. connect  — open the port and sync with the ROM loader (`connect_mode`, e.g. default-reset)
3. chip     — detect the chip; refuse one other than the configured `chip`
4. stub     — upload esptool's stub flasher (stub=True, real units); stub=False is `--no-stub`
              (the emulated ROM has no stub)
5. baud     — switch to `baud` after connecting at the ROM's 115200
6. size     — attach the SPI flash, detect its size; an image past the end of the flash is
              refused before anything is written (and, when `expect_flash_size` is given — the
              build's flash size — a module with a different flash: its littlefs would not mount)
7. write    — compressed write (`write_flash(compress=True)`; esptool's ROM default would be
              uncompressed)
8. verify   — esptool's MD5 check of the written region against the image
9. reset    — leave the loader (`after`: hard-reset through RTS on real units, soft-reset =
              FLASH_END "run user code", which is what boots the virtual unit)

esptool logs through one process-wide logger; while flashes run, a dispatching logger routes
each thread's esptool output to that flash's log and progress callback (several ports flash in
parallel, one thread each), and everything else to the logger that was there before.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OFFSET = 0x1000
ROM_BAUD = 115200
STEPS = ("image", "connect", "chip", "stub", "baud", "size", "write", "verify", "reset")


@dataclass
class FlashProgress:
    """What the progress callback gets: the step, and bytes done/total while writing."""

    port: str
    phase: str  # one of STEPS, or "done"
    done: int = 0  # bytes sent on the wire (compressed) in "write"
    total: int = 0


@dataclass
class FlashResult:
    port: str
    image: str
    offset: int
    size: int  # image bytes
    sha256: str  # of the image
    md5: str  # of the image as written (padded to 4 bytes), what the unit's MD5 matched
    ok: bool = False
    step: str = "image"  # the last step reached (on failure: the one that failed)
    chip: str | None = None  # "ESP32-D0WD-V3 (revision v3.0)"
    chip_name: str | None = None  # "ESP32"
    mac: str | None = None
    flash_size: int | None = None  # detected, bytes
    stub: bool = False
    baud: int = ROM_BAUD
    seconds: float = 0.0
    write_seconds: float = 0.0
    error: str | None = None
    log: list[str] = field(default_factory=list)  # esptool's output for this port

    def detail(self) -> dict[str, Any]:
        """What to record as the unit's `flash` step once it has a serial (JSON-able, no log)."""
        return {
            "ok": self.ok, "step": self.step, "error": self.error, "image": Path(self.image).name,
            "sha256": self.sha256, "md5": self.md5, "offset": self.offset, "size": self.size,
            "chip": self.chip, "mac": self.mac, "flash_size": self.flash_size, "stub": self.stub,
            "baud": self.baud, "seconds": round(self.seconds, 3),
        }


class FlashError(Exception):
    """A flash that did not end verified. `step` is where it failed; `result` holds what was learnt."""

    def __init__(self, step: str, message: str, result: FlashResult) -> None:
        super().__init__(f"{result.port}: {message}")
        self.step = step
        self.message = message
        self.result = result


# --- esptool's logger, per thread --------------------------------------------------------------


class _Cancelled(Exception):
    """Raised inside esptool's write loop (from its logger) when the caller's cancel event is set."""


class _Sink:
    def __init__(self, result: FlashResult, progress: Callable[[FlashProgress], None] | None,
                 cancel: threading.Event | None = None) -> None:
        self.result = result
        self.progress = progress
        self.cancel = cancel
        self.line = ""

    def phase(self, phase: str, done: int = 0, total: int = 0) -> None:
        if self.cancel is not None and self.cancel.is_set() and phase != "done":
            raise _Cancelled
        self.result.step = phase if phase in STEPS else self.result.step
        if self.progress is not None:
            self.progress(FlashProgress(self.result.port, phase, done, total))

    def text(self, text: str, end: str = "\n") -> None:
        self.line += text
        if end.endswith("\n") or "\n" in text:
            for ln in self.line.splitlines():
                if ln.strip():
                    self.result.log.append(ln.rstrip())
            self.line = ""
        else:
            self.line += end
        if "Verifying written data" in text:
            self.phase("verify")


_lock = threading.Lock()
_sinks: dict[int, _Sink] = {}
_installed: Any = None  # the dispatcher while any flash runs
_previous: Any = None


def _make_dispatcher() -> Any:
    from esp_pylib.logger import EspLogBase

    class Dispatcher(EspLogBase):
        """Routes esptool's output of a flashing thread to its sink; other threads to the previous logger."""

        def _sink(self) -> _Sink | None:
            return _sinks.get(threading.get_ident())

        def _fallback(self, name: str, *args: Any, **kwargs: Any) -> None:
            prev = _previous
            if prev is not None:
                getattr(prev, name)(*args, **kwargs)

        def print(self, *args: Any, **kwargs: Any) -> None:
            s = self._sink()
            if s is None:
                self._fallback("print", *args, **kwargs)
                return
            s.text(" ".join(str(a) for a in args), kwargs.get("end", "\n"))

        def err(self, *args: Any, suggestion: str | None = None) -> None:
            s = self._sink()
            if s is None:
                self._fallback("err", *args, suggestion=suggestion)
            else:
                s.text("error: " + " ".join(str(a) for a in args))

        def warn(self, *args: Any, suggestion: str | None = None) -> None:
            s = self._sink()
            if s is None:
                self._fallback("warn", *args, suggestion=suggestion)
            else:
                s.text("warning: " + " ".join(str(a) for a in args))

        def note(self, *args: Any) -> None:
            s = self._sink()
            if s is None:
                self._fallback("note", *args)
            else:
                s.text("note: " + " ".join(str(a) for a in args))

        def hint(self, *args: Any) -> None:
            s = self._sink()
            if s is None:
                self._fallback("hint", *args)
            else:
                s.text("hint: " + " ".join(str(a) for a in args))

        def debug(self, *args: Any) -> None:
            if self._sink() is None:
                self._fallback("debug", *args)

        def set_verbosity(self, mode: int | str) -> None:
            self._fallback("set_verbosity", mode)

        def stage(self, finish: bool = False) -> None:
            if self._sink() is None:
                self._fallback("stage", finish)

        def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                         bar_length: int = 30) -> None:
            s = self._sink()
            if s is None:
                self._fallback("progress_bar", cur_iter, total_iters, prefix, suffix, bar_length)
            else:
                s.phase("write", cur_iter, total_iters)

    return Dispatcher()


def _attach(sink: _Sink) -> None:
    global _installed, _previous
    import esptool  # noqa: F401 - installs esptool's own logger first, so it is the one restored
    from esp_pylib.logger import EspLog

    with _lock:
        if not _sinks:
            _previous = EspLog.instance
            _installed = _make_dispatcher()
            EspLog.instance = _installed
        _sinks[threading.get_ident()] = sink


def _detach() -> None:
    global _installed, _previous
    from esp_pylib.logger import EspLog

    with _lock:
        _sinks.pop(threading.get_ident(), None)
        if not _sinks and _installed is not None:
            if EspLog.instance is _installed:
                EspLog.instance = _previous
            _installed = _previous = None


# --- the flash -------------------------------------------------------------------------------


def _first(exc: BaseException) -> str:
    """The first line of an esptool error (the rest is a link to its troubleshooting page)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _size_text(n: int) -> str:
    return f"{n // (1024 * 1024)} MB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def flash_unit(
    port: str,
    image_path: str | Path,
    *,
    offset: int = DEFAULT_OFFSET,
    chip: str = "esp32",
    baud: int = 921600,
    stub: bool = True,
    connect_mode: str = "default-reset",
    connect_attempts: int = 7,
    after: str = "hard-reset",
    expect_flash_size: int | None = None,
    progress: Callable[[FlashProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> FlashResult:
    """Write `image_path` at `offset` on the unit on `port`, compressed, and verify it by MD5.

    Returns a FlashResult with ok=True only after esptool's MD5 check passed; every failure
    raises FlashError (its `.result` has ok=False, the failed step and the error).
    `stub=False` is esptool's --no-stub (ROM loader only; the virtual unit needs it).
    `after`: "hard-reset" (RTS; real units), "soft-reset" (ROM: FLASH_END run user code) or
    "no-reset". `expect_flash_size`: refuse a module whose flash differs (the build's size).
    `cancel`: when set (Ctrl-C on the bench), the flash stops at the next block and fails as
    "interrupted" — a half-written unit is never reported as flashed.
    """
    import serial
    from esptool.cmds import attach_flash, detect_chip, detect_flash_size, reset_chip, write_flash
    from esptool.targets import CHIP_DEFS
    from esptool.util import FatalError, flash_size_bytes

    t0 = time.monotonic()
    path = Path(image_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        res = FlashResult(port, str(path), offset, 0, "", "", error=f"cannot read image {path}: {exc.strerror}")
        raise FlashError("image", res.error or "", res) from None
    padded = data + b"\xff" * (-len(data) % 4)
    res = FlashResult(port, str(path), offset, len(data), hashlib.sha256(data).hexdigest(),
                      hashlib.md5(padded).hexdigest())
    sink = _Sink(res, progress, cancel)

    def fail(step: str, message: str) -> FlashError:
        res.ok, res.step, res.error = False, step, message
        res.seconds = time.monotonic() - t0
        return FlashError(step, message, res)

    if chip not in CHIP_DEFS:
        raise fail("image", f"unknown chip {chip!r}; esptool knows {', '.join(sorted(CHIP_DEFS))}")
    if not data:
        raise fail("image", f"{path} is empty")
    if offset < 0 or offset % 0x1000:
        raise fail("image", f"offset {offset:#x} is not a multiple of the 4 KB flash sector")
    wanted_name = CHIP_DEFS[chip].CHIP_NAME

    esp: Any = None
    _attach(sink)
    step = "connect"
    try:
        sink.phase("connect")
        try:
            esp = detect_chip(port, ROM_BAUD, connect_mode=connect_mode, connect_attempts=connect_attempts)
        except serial.SerialException as exc:
            raise fail("connect", f"cannot open the port ({exc})") from None
        except FatalError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else "no answer"
            if "Could not open" in msg:
                raise fail("connect", f"cannot open the port ({msg})") from None
            raise fail("connect", f"no ROM loader answered ({msg}); is the unit in download mode, "
                                  "on this port, powered?") from None
        step = "chip"
        sink.phase("chip")
        res.chip_name = esp.CHIP_NAME
        res.chip = esp.get_chip_description()
        if wanted_name != esp.CHIP_NAME:
            raise fail("chip", f"the unit is an {res.chip}, not an {wanted_name}: this bench is configured for "
                               f"--chip {chip}; refused, nothing written")
        res.mac = ":".join(f"{b:02x}" for b in esp.read_mac())
        if stub:
            step = "stub"
            sink.phase("stub")
            try:
                esp = esp.run_stub()
            except FatalError as exc:
                raise fail("stub", f"the stub flasher did not start ({_first(exc)}); retry with --no-stub") from None
            res.stub = True
        if baud and baud != ROM_BAUD:
            step = "baud"
            sink.phase("baud")
            esp.change_baud(baud)
            res.baud = baud
        step = "size"
        sink.phase("size")
        attach_flash(esp)
        size_str = detect_flash_size(esp)
        flash_size = flash_size_bytes(size_str) if size_str else None
        res.flash_size = flash_size
        if flash_size is None:
            raise fail("size", "could not detect the flash size (unknown flash chip id); refused")
        end = offset + len(padded)
        if end > flash_size:
            raise fail("size", f"image too large: {len(data)} bytes at {offset:#x} end at {end:#x}, past the "
                               f"{_size_text(flash_size)} flash; refused before writing")
        if expect_flash_size is not None and flash_size != expect_flash_size:
            raise fail("size", f"the module has {_size_text(flash_size)} of flash, the image was built for "
                               f"{_size_text(expect_flash_size)} (its filesystem would not mount); refused")
        step = "write"
        sink.phase("write", 0, 0)
        tw = time.monotonic()
        write_flash(esp, [(offset, data)], compress=True, flash_mode="keep", flash_freq="keep",
                    flash_size="keep")
        res.write_seconds = time.monotonic() - tw
        step = res.step  # "verify" once esptool said it verifies; it raised if the MD5 differed
        if not any("Hash of data verified" in ln for ln in res.log):
            raise fail("verify", "esptool did not report the MD5 check as verified; not counted as flashed")
        step = "reset"
        sink.phase("reset")
        res.ok = True  # written and verified: what happens to the unit next is the reset's business
        if after != "no-reset":
            reset_chip(esp, after)
    except FlashError:
        raise
    except _Cancelled:
        raise fail(res.step, f"interrupted at {res.step}: the unit is not flashed (flash it again)") from None
    except FatalError as exc:
        step = res.step if res.step in STEPS else step
        if "MD5" in str(exc) or "empty" in str(exc):
            step = "verify"
        raise fail(step, _first(exc)) from None
    except (serial.SerialException, OSError) as exc:
        step = res.step if res.step in STEPS else step
        raise fail(step, f"the port went away ({_first(exc)})") from None
    finally:
        if esp is not None:
            with contextlib.suppress(Exception):  # a port that is gone cannot be closed twice
                esp._port.close()
        _detach()
    res.step = "done"
    res.seconds = time.monotonic() - t0
    sink.phase("done", len(data), len(data))
    return res


__all__ = ["DEFAULT_OFFSET", "STEPS", "FlashError", "FlashProgress", "FlashResult", "flash_unit"]
