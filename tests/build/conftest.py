"""Fixtures for the build tests: a fake MicroPython .bin (a test input, see
provisioning.build.esp32img.fake_micropython_bin) and one esp32 build shared by the session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioning.build import BuildResult, build
from provisioning.build.esp32img import fake_micropython_bin
from provisioning.virtual.unit import micropython_exe

HERE = Path(__file__).resolve().parent
MP_SCRIPTS = HERE / "mp"


@pytest.fixture(scope="session")
def mp_exe() -> str:
    return micropython_exe()


def run_mp(exe: str, script: Path, *args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, str(script), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
    )  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mpbin") / "ESP32_GENERIC-fake-v1.29.0.bin"
    path.write_bytes(fake_micropython_bin())
    return path


@pytest.fixture(scope="session")
def esp32_build(tmp_path_factory: pytest.TempPathFactory, fake_bin: Path) -> BuildResult:
    return build(tmp_path_factory.mktemp("build") / "out", micropython_bin=fake_bin)
