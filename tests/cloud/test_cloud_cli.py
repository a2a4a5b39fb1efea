"""`simsock cloud serve` (CliRunner in-process for refusals, a real process otherwise).

The `simsock account …` commands go through the HTTP API now: tests/api/test_api_cli.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from cloud_stub.broker import free_port
from cloud_stub.registry import Registry
from cloud_stub.service import broker_credentials
from provisioning.api_client import ApiClient
from provisioning.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def sim(*args: str) -> object:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_cloud_publishes_what_the_cli_stored_but_could_not_publish(cloud, units, db_url) -> None:
    from cloud_stub.accounts import Accounts

    u = units("late-pub")
    with Registry(db_url) as reg:  # as if the CLI committed and then lost the broker
        accounts = Accounts(reg)
        accounts.create("acme", 100)
        accounts.add_device("acme", "late-pub")
    assert cloud.wait_converged("acme", 5)
    assert u.applied_v == 1


def test_serve_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = sim("cloud", "serve", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert r.exit_code == 1 and "already in use" in r.output
    r = sim("cloud", "serve", "--broker", "tcp://x", "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert r.exit_code == 1 and "bad broker URL" in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        http_port = s.getsockname()[1]
        r = sim("cloud", "serve", "--port", str(free_port()), "--http-port", str(http_port),
                "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert r.exit_code == 1 and f"HTTP port 127.0.0.1:{http_port} is not available" in r.output, r.output


def test_cloud_serve_runs_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from provisioning.cli import app; app()", "cloud", "serve",
         "--port", str(port), "--db", db, "--hb-timeout", "30", "--http-port", "0", "--bootstrap-token"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"mqtt://127.0.0.1:{port}" in line, line
        api_url = re.search(r"api (http://127\.0\.0\.1:\d+)", line).group(1)
        token = None
        for _ in range(5):  # other banner lines may come first
            m = re.search(r"admin token \(shown once\): (sst_\S+)", proc.stdout.readline())
            if m:
                token = m.group(1)
                break
        assert token, "no admin token printed"
        service = None
        for _ in range(5):  # the broker enforces credentials: FakeUnit logs in with the printed service account
            m = re.search(r"service account.*\(shown once\): (mqtt://\S+)", proc.stdout.readline())
            if m:
                service = broker_credentials(m.group(1))
                break
        assert service, "no service account printed"
        with ApiClient(api_url, token) as api:
            assert api.me().role == "admin" and api.health().broker_connected
            api.create_account("served", "5")
            api.add_device("served", "sv-1")
        from conftest import FakeUnit  # tests/cloud/conftest.py

        served_broker = SimpleNamespace(host="127.0.0.1", port=port, auth=True,
                                        service=SimpleNamespace(username=service[0], password=service[1]))
        unit = FakeUnit(served_broker, "sv-1").connect()
        unit.hb(2)
        deadline = time.monotonic() + 10
        with Registry(db) as reg:
            while reg.heartbeat_count("sv-1") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert reg.heartbeat_count("sv-1") == 2
            assert reg.status("sv-1")["status"] == "online"
        with ApiClient(api_url, token) as api:
            assert api.device_status("sv-1").hb_count == 2
            assert api.audit()[-1].action == "account.add_device"
        unit.disconnect()
        time.sleep(0.5)  # the live lines are printed just after the database commit
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "hb" in out and "sv-1" in out and "stopping" in out, out
