"""The CLI through the HTTP API: `simsock account …`, `token …`, `devices …`, `audit` (typer's CliRunner in-process,
against the module's real uvicorn server)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cloud_stub.broker import free_port
from provisioning.cli import app

runner = CliRunner()


def sim(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200", **(env or {})})


@pytest.fixture
def cli(stack):
    """sim() with SIMSOCK_API and an operator's SIMSOCK_TOKEN in the environment."""
    env = {"SIMSOCK_API": stack.url, "SIMSOCK_TOKEN": stack.tokens["operator"]}
    return lambda *args, **kw: sim(*args, env={**env, **kw.get("env", {})})


def snapshot(stack) -> tuple:
    """What a request could change (status events come from units falling silent meanwhile: left out)."""
    reg = stack.cloud.registry
    events = [e for e in reg.events(limit=100_000) if e["kind"] != "device.status"]
    desired = [{k: v for k, v in d.items() if k != "published_at"} for d in reg.all_desired()]
    return reg.accounts(), events, desired, reg.audit_entries(limit=100_000)


def test_account_commands_drive_the_cloud_through_the_api(stack, cli, name) -> None:
    acct, dev = name("shop"), name("u")
    unit = stack.unit(dev)
    r = cli("account", "create", acct, "--balance", "10")
    assert r.exit_code == 0 and f"created account {acct}" in r.output and "state active" in r.output, r.output
    r = cli("account", "add-device", acct, dev, "--serial", "SN1")
    assert r.exit_code == 0 and "v1 active" in r.output and "published" in r.output, r.output
    assert stack.cloud.wait_converged(acct, 5)
    r = cli("account", "charge", acct, "12.50", "--reason", "march")
    assert r.exit_code == 0 and "balance -2.50" in r.output and "was active" in r.output, r.output
    assert stack.cloud.wait_converged(acct, 5) and unit.mode == "suspended"
    account_id = stack.cloud.account(acct)["id"]
    r = cli("account", "topup", str(account_id), "20")  # by id; the minimum top-up
    assert r.exit_code == 0 and "state active" in r.output and "v3 active" in r.output, r.output
    assert stack.cloud.wait_converged(acct, 5)
    r = cli("account", "show", acct)
    assert r.exit_code == 0 and acct in r.output and "17.50" in r.output and dev in r.output
    assert "converged 1/1" in r.output and "yes" in r.output
    r = cli("account", "list")
    assert r.exit_code == 0 and acct in r.output
    actions = [e["action"] for e in stack.cloud.registry.audit_entries(account_id=account_id)]
    assert actions == ["account.create", "account.add_device", "account.charge", "account.topup"]


def test_api_and_token_options_beat_the_environment(stack, name) -> None:
    acct = name("opt")
    r = sim("account", "create", acct, "--api", stack.url, "--token", stack.tokens["admin"],
            env={"SIMSOCK_API": f"http://127.0.0.1:{free_port()}", "SIMSOCK_TOKEN": "sst_nope"})
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["account", "charge", "nobody", "1"], {}, "unknown account 'nobody'"),
        (["account", "charge", "ACCT", "-5"], {}, "must not be negative"),
        (["account", "topup", "ACCT", "0"], {}, "greater than zero"),
        (["account", "charge", "ACCT", "1.234"], {}, "two decimals"),
        (["account", "charge", "ACCT", "lots"], {}, "bad amount"),
        (["account", "add-device", "nobody", "dev-1"], {}, "unknown account"),
        (["account", "add-device", "ACCT", "a/b"], {}, "invalid device id"),
        (["account", "create", "ACCT"], {}, "already exists"),
        (["account", "create", "42"], {}, "all digits"),
        (["account", "create", "x", "--balance", "-1"], {}, "must not be negative"),
        (["account", "show", "nobody"], {}, "unknown account"),
        (["account", "charge", "ACCT", "1"], {"SIMSOCK_API": "ftp://x:1"}, "bad API URL"),
        (["account", "charge", "ACCT", "1"], {"SIMSOCK_API": "UNREACHABLE"}, "cannot reach the cloud API"),
        (["account", "list"], {"SIMSOCK_TOKEN": ""}, "no API token"),
        (["account", "charge", "ACCT", "1"], {"SIMSOCK_TOKEN": "sst_00000000_" + "x" * 43}, "invalid or revoked"),
        (["account", "charge", "ACCT", "1"], {"SIMSOCK_TOKEN": "READ-ONLY"}, "role 'read-only' may not"),
        (["account", "add-device", "ACCT", "d"], {"SIMSOCK_TOKEN": "BENCH"}, "role 'bench' may not"),
        (["token", "create", "--role", "operator"], {}, "role 'operator' may not"),
        (["token", "create", "--role", "root"], {}, "unknown role 'root'"),
        (["devices", "cmd", "ACCT-none", "relay", "sideways"], {}, "unknown device"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(stack, cli, name, args, env, message) -> None:
    acct = name("bad")
    assert cli("account", "create", acct, "--balance", "5").exit_code == 0
    before = snapshot(stack)
    subst = {"ACCT": acct, "UNREACHABLE": f"http://127.0.0.1:{free_port()}",
             "READ-ONLY": stack.tokens["read-only"], "BENCH": stack.tokens["bench"]}
    args = [a.replace("ACCT", acct) for a in args]
    env = {k: subst.get(v, v) for k, v in env.items()}
    r = cli(*args, env=env)
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    assert snapshot(stack) == before


def test_token_bootstrap_on_the_database_then_the_api(stack, name) -> None:
    r = sim("token", "create", "--role", "admin", "--name", "boot", "--db", stack.db_url, "-q")
    assert r.exit_code == 0, r.output
    boot = r.output.strip()
    assert boot.startswith("sst_") and "\n" not in boot
    env = {"SIMSOCK_API": stack.url, "SIMSOCK_TOKEN": boot}
    r = sim("token", "create", "--role", "bench", "--name", "line-2", env=env)
    assert r.exit_code == 0 and "shown only this once" in r.output and "role bench" in r.output, r.output
    bench = r.output.strip().splitlines()[-1]
    assert bench.startswith("sst_")
    r = sim("token", "list", env=env)
    assert r.exit_code == 0 and "line-2" in r.output and "boot" in r.output and bench not in r.output
    r = sim("token", "list", "--db", stack.db_url)
    assert r.exit_code == 0 and "line-2" in r.output
    bench_id = next(t["id"] for t in stack.cloud.registry.tokens() if t["name"] == "line-2")
    r = sim("token", "revoke", str(bench_id), env=env)
    assert r.exit_code == 0 and "revoked" in r.output
    r = sim("account", "list", env={**env, "SIMSOCK_TOKEN": bench})
    assert r.exit_code == 1 and "invalid or revoked" in r.output
    r = sim("token", "revoke", "999999", "--db", stack.db_url)
    assert r.exit_code == 1 and "unknown token" in r.output
    r = sim("token", "list", "--db", "nope.db")
    assert r.exit_code == 1 and "bad database URL" in r.output


def test_devices_and_audit_commands(stack, cli, name) -> None:
    acct, dev = name("dv"), name("d")
    stack.unit(dev)
    assert cli("account", "create", acct, "--balance", "5").exit_code == 0
    assert cli("account", "add-device", acct, dev).exit_code == 0
    r = cli("devices", "list", "--account", acct)
    assert r.exit_code == 0 and dev in r.output
    r = cli("devices", "show", dev)
    assert r.exit_code == 0 and f'"device_id": "{dev}"' in r.output
    r = cli("devices", "cmd", dev, "relay", "on", "--wait", "5")
    assert r.exit_code == 0 and "ok" in r.output and "relay" in r.output, r.output
    r = cli("audit", "--account", acct)
    assert r.exit_code == 0 and "account.create" in r.output and "command.send" in r.output, r.output
    r = cli("audit", env={"SIMSOCK_TOKEN": stack.tokens["read-only"]})
    assert r.exit_code == 1 and "may not" in r.output
