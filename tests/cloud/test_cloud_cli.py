"""`simsock cloud …` and `simsock account …`: typer's CliRunner in-process, `cloud serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from cloud_stub import protocol
from cloud_stub.broker import free_port
from cloud_stub.registry import Registry
from provisioning.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def sim(*args: str) -> object:
    return runner.invoke(app, list(args), catch_exceptions=False)


def snapshot(db_url: str) -> tuple:
    with Registry(db_url) as r:
        return r.accounts(), r.events(limit=10_000), r.all_desired(), r.devices()


def test_account_commands_publish_desired_state(broker, db_url, probe) -> None:
    r = sim("account", "create", "acme", "--balance", "10", "--db", db_url)
    assert r.exit_code == 0 and "state active" in r.output
    r = sim("account", "add-device", "acme", "dev-1", "--serial", "SN1", "--db", db_url, "--broker", broker.url)
    assert r.exit_code == 0 and "v1 active" in r.output and "published" in r.output
    r = sim("account", "charge", "acme", "12.50", "--reason", "march", "--db", db_url, "--broker", broker.url)
    assert r.exit_code == 0 and "balance -2.50" in r.output and "was active" in r.output
    msgs = probe(protocol.topic("dev-1", "desired"))
    assert msgs and all(m.retain for m in msgs)
    assert {json.loads(m.payload)["v"] for m in msgs} == {2}

    r = sim("account", "topup", "1", "5", "--db", db_url, "--broker", broker.url)  # by id
    assert r.exit_code == 0 and "state active" in r.output and "v3 active" in r.output
    r = sim("account", "show", "acme", "--db", db_url)
    assert r.exit_code == 0
    assert "acme" in r.output and "2.50" in r.output and "dev-1" in r.output and "pending" in r.output
    assert "converged 0/1" in r.output
    r = sim("account", "list", "--db", db_url)
    assert r.exit_code == 0 and "acme" in r.output


def test_account_commands_drive_a_running_cloud(cloud, units, db_url, broker) -> None:
    u = units("u1")
    assert sim("account", "create", "shop", "--balance", "3", "--db", db_url).exit_code == 0
    assert sim("account", "add-device", "shop", "u1", "--db", db_url, "--broker", broker.url).exit_code == 0
    assert cloud.wait_converged("shop", 5)
    assert sim("account", "charge", "shop", "3", "--db", db_url, "--broker", broker.url).exit_code == 0
    assert cloud.wait_converged("shop", 5) and u.mode == "suspended"
    assert cloud.account("shop")["state"] == "suspended"
    r = sim("account", "show", "shop", "--db", db_url)
    assert "converged 1/1" in r.output and "yes" in r.output


def test_cloud_publishes_what_the_cli_stored_but_could_not_publish(cloud, units, db_url) -> None:
    from cloud_stub.accounts import Accounts

    u = units("late-pub")
    with Registry(db_url) as reg:  # as if the CLI committed and then lost the broker
        accounts = Accounts(reg)
        accounts.create("acme", 100)
        accounts.add_device("acme", "late-pub")
    assert cloud.wait_converged("acme", 5)
    assert u.applied_v == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["account", "charge", "nobody", "1"], "unknown account 'nobody'"),
        (["account", "charge", "acme", "-5"], "must not be negative"),
        (["account", "topup", "acme", "0"], "greater than zero"),
        (["account", "charge", "acme", "1.234"], "two decimals"),
        (["account", "charge", "acme", "lots"], "bad amount"),
        (["account", "charge", "acme", "1", "--broker", "http://x:1"], "bad broker URL"),
        (["account", "charge", "acme", "1", "--broker", "UNREACHABLE"], "cannot reach the MQTT broker"),
        (["account", "add-device", "acme", "dev-1", "--broker", "UNREACHABLE"], "cannot reach the MQTT broker"),
        (["account", "add-device", "nobody", "dev-1"], "unknown account"),
        (["account", "create", "acme"], "already exists"),
        (["account", "create", "42"], "all digits"),
        (["account", "create", "x", "--balance", "-1"], "must not be negative"),
        (["account", "show", "nobody"], "unknown account"),
        (["account", "show", "acme", "--db", "postgresql://u@127.0.0.1:1/db"], "cannot connect"),
        (["account", "show", "acme", "--db", "nope.db"], "bad database URL"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(db_url: str, args: list[str], message: str) -> None:
    assert sim("account", "create", "acme", "--balance", "5", "--db", db_url).exit_code == 0
    before = snapshot(db_url)
    unreachable = f"mqtt://127.0.0.1:{free_port()}"
    args = [unreachable if a == "UNREACHABLE" else a for a in args]
    if "--db" not in args:
        args += ["--db", db_url]
    if "--broker" not in args and args[1] in ("charge", "topup", "add-device"):
        args += ["--broker", unreachable]
    r = sim(*args)
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    assert snapshot(db_url) == before


def test_serve_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = sim("cloud", "serve", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert r.exit_code == 1 and "already in use" in r.output
    r = sim("cloud", "serve", "--broker", "tcp://x", "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert r.exit_code == 1 and "bad broker URL" in r.output


def test_cloud_serve_runs_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from provisioning.cli import app; app()", "cloud", "serve",
         "--port", str(port), "--db", db, "--hb-timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"mqtt://127.0.0.1:{port}" in line, line
        from conftest import FakeUnit  # tests/cloud/conftest.py

        unit = FakeUnit(SimpleNamespace(host="127.0.0.1", port=port), "sv-1").connect()
        unit.hb(2)
        deadline = time.monotonic() + 10
        with Registry(db) as reg:
            while reg.heartbeat_count("sv-1") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert reg.heartbeat_count("sv-1") == 2
            assert reg.status("sv-1")["status"] == "online"
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
