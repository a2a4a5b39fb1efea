"""Every endpoint through the typed client against a real uvicorn server, a real Cloud and the embedded broker."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cloud_stub.registry import Registry
from provisioning.api_client import ApiClient, ApiError


def test_health_needs_no_token(stack) -> None:
    h = stack.client(None).health()
    assert h.ok and h.broker_connected and h.schema_version >= 3


def test_account_lifecycle_through_the_api_with_convergence(stack, admin, name) -> None:
    acct, dev_on, dev_off = name("acct"), name("on"), name("off")
    unit = stack.unit(dev_on)  # online, acks desired states; dev_off never connects

    a = admin.create_account(acct, balance="20.00")
    assert (a.name, a.balance, a.balance_cents, a.state, a.mode) == (acct, "20.00", 2000, "active", "active")
    assert any(x.id == a.id and x.device_count == 0 for x in admin.accounts())

    ch = admin.add_device(acct, dev_on, serial="SN-1")
    assert [(d.device_id, d.version, d.mode, d.published) for d in ch.desired] == [(dev_on, 1, "active", True)]
    admin.add_device(a.id, dev_off)  # by id
    assert stack.cloud.wait_for(lambda: admin.account(acct).convergence.converged == [dev_on], 5)

    ch = admin.charge(acct, "25.00", reason="march")
    assert (ch.old_state, ch.account.state, ch.account.balance, ch.state_changed) == ("active", "suspended", "-5.00",
                                                                                     True)
    assert {d.device_id: (d.version, d.mode) for d in ch.desired} == {dev_on: (2, "suspended"),
                                                                      dev_off: (2, "suspended")}
    assert stack.cloud.wait_for(lambda: unit.mode == "suspended", 5)
    detail = admin.account(acct)
    assert detail.convergence.converged == [dev_on] and detail.convergence.pending == [dev_off]
    assert (detail.convergence.converged_count, detail.convergence.pending_count, detail.device_count) == (1, 1, 2)
    assert sorted(detail.devices) == sorted([dev_on, dev_off])

    ch = admin.top_up(acct, "20.00")
    assert (ch.account.state, ch.account.balance_cents) == ("active", 1500)

    d = admin.device(dev_on)
    assert (d.account_id, d.serial, d.desired_version, d.desired_mode) == (a.id, "SN-1", 3, "active")
    assert stack.cloud.wait_for(lambda: admin.desired(dev_on).converged, 5)
    ds = admin.desired(dev_on)
    assert (ds.version, ds.mode, ds.applied_version) == (3, "active", 3) and ds.published_at
    assert admin.desired(dev_off).converged is False
    st = admin.device_status(dev_on)
    assert st.status == "online" and st.online
    assert [x.device_id for x in admin.devices(acct)] == sorted([dev_on, dev_off])

    kinds = [e.kind for e in admin.events(account=acct)]
    assert "account.created" in kinds and "account.charge" in kinds and "account.state" in kinds


def test_devices_report_heartbeats(stack, admin, name) -> None:
    acct, dev = name("acct"), name("hb")
    admin.create_account(acct, "5")
    admin.add_device(acct, dev)
    unit = stack.unit(dev)
    unit.hb(2)
    assert stack.cloud.wait_heartbeats(dev, 2, 5)
    st = admin.device_status(dev)
    assert st.hb_count == 2 and st.heartbeat is not None and st.heartbeat.seq == 2 and st.heartbeat.fw == "1.2.3"
    assert admin.device(dev).heartbeat.temperature_c == 21.5


def test_commands_are_sent_and_acked(stack, admin, name) -> None:
    acct, dev = name("acct"), name("cmd")
    admin.create_account(acct, "5")
    admin.add_device(acct, dev)
    unit = stack.unit(dev)
    c = admin.send_command(dev, "relay", "on", wait=5)
    assert c.acked and c.ack is not None and c.ack.ok and c.ack.res == {"relay": True}
    assert unit.cmds and unit.cmds[-1][0]["op"] == "relay"
    got = admin.command(c.id)
    assert got.id == c.id and got.acked and got.op == "relay" and got.arg == "on" and got.device_id == dev

    quiet = name("quiet")
    admin.add_device(acct, quiet)
    stack.unit(quiet, auto_ack=False)
    c = admin.send_command(quiet, "status", wait=0.2)
    assert not c.acked and c.ack is None
    assert admin.command(c.id, wait=0.1).acked is False


def test_republish_desired_state(stack, admin, name) -> None:
    acct, dev = name("acct"), name("rp")
    admin.create_account(acct, "5")
    admin.add_device(acct, dev)
    before = admin.desired(dev)
    after = admin.republish_desired(dev)
    assert after.version == before.version and after.published_at >= before.published_at


def test_me_and_tokens(stack, admin, name) -> None:
    me = admin.me()
    assert me.role == "admin" and "tokens:manage" in me.permissions
    with stack.client("read-only") as ro:
        assert ro.me().permissions == ["read"]
    made = admin.create_token(name("bench"), "bench")
    assert made.token.startswith(f"sst_{made.key}_") and made.role == "bench"
    assert any(t.id == made.id for t in admin.tokens())
    with ApiClient(stack.url, made.token) as bench:
        assert bench.me().name == made.name
        revoked = admin.revoke_token(made.id)
        assert revoked.revoked is not None
        with pytest.raises(ApiError) as e:
            bench.me()
        assert e.value.status == 401 and "revoked" in e.value.message
    assert all(t.id != made.id for t in admin.tokens())
    assert any(t.id == made.id for t in admin.tokens(include_revoked=True))
    assert admin.revoke_token(made.id).revoked == revoked.revoked  # twice: not an error, nothing changes


def test_tokens_are_stored_as_hashes_only(stack, admin, name) -> None:
    made = admin.create_token(name("secret"), "operator")
    with Registry(stack.db_url) as reg:
        row = reg.token(made.id)
    assert row["token_hash"] == hashlib.sha256(made.token.encode()).hexdigest()
    assert made.token not in str(row)
    secret = made.token.rsplit("_", 1)[1]
    db_file = Path(stack.db_url.removeprefix("sqlite:///"))
    for f in [db_file, *db_file.parent.glob(db_file.name + "-*")]:  # the database and its WAL
        assert secret.encode() not in f.read_bytes()


@pytest.mark.parametrize(
    "call,status,code,message",
    [
        (lambda c, n: c.account("nobody-here"), 404, "not_found", "unknown account 'nobody-here'"),
        (lambda c, n: c.charge("nobody-here", "1"), 404, "not_found", "unknown account"),
        (lambda c, n: c.device("no-such-device"), 404, "not_found", "unknown device"),
        (lambda c, n: c.desired("no-such-device"), 404, "not_found", "unknown device"),
        (lambda c, n: c.send_command("no-such-device", "status"), 404, "not_found", "unknown device"),
        (lambda c, n: c.command("c-nothing"), 404, "not_found", "unknown command"),
        (lambda c, n: c.revoke_token(99999), 404, "not_found", "unknown token"),
        (lambda c, n: c.create_account(n), 409, "conflict", "already exists"),
        (lambda c, n: c.create_account("1234"), 422, "rejected", "all digits"),
        (lambda c, n: c.charge(n, "12.345"), 422, "invalid_request", "at most two decimals"),
        (lambda c, n: c.charge(n, "-1"), 422, "invalid_request", "must not be negative"),
        (lambda c, n: c.top_up(n, "0"), 422, "invalid_request", "greater than zero"),
        (lambda c, n: c.top_up(n, "lots"), 422, "invalid_request", "bad amount"),
        (lambda c, n: c.request("POST", f"/v1/accounts/{n}/topup", json={"amount": 12.5}), 422, "invalid_request",
         'decimal strings like "12.50"'),
        (lambda c, n: c.create_token("x", "root"), 422, "invalid_request", "role"),
        (lambda c, n: c.add_device(n, "bad/id"), 422, "rejected", "invalid device id"),
        (lambda c, n: c.add_device(n, "taken-dev"), 422, "rejected", "belongs to another account"),
        (lambda c, n: c.send_command("taken-dev", "relay", "sideways"), 422, "rejected", "relay needs arg"),
        (lambda c, n: c.send_command("taken-dev", "reboot", "now"), 422, "rejected", "takes no arg"),
    ],
)
def test_errors_are_json_with_a_clear_message(stack, admin, name, call, status, code, message) -> None:
    acct = name("err")
    admin.create_account(acct, "5")
    try:
        admin.create_account("owner-of-taken-dev", "5")
        admin.add_device("owner-of-taken-dev", "taken-dev")
    except ApiError:
        pass  # made by an earlier case
    n_audit = len(admin.audit(limit=10_000))
    with pytest.raises(ApiError) as e:
        call(admin, acct)
    assert (e.value.status, e.value.code) == (status, code), e.value
    assert message in e.value.message
    assert len(admin.audit(limit=10_000)) == n_audit  # a refused request changes nothing


def test_unreachable_api_and_bad_url() -> None:
    from cloud_stub.broker import free_port

    with ApiClient(f"http://127.0.0.1:{free_port()}", "x") as c, pytest.raises(ApiError) as e:
        c.health()
    assert e.value.status == 0 and e.value.code == "unreachable" and "cannot reach the cloud API" in e.value.message
    with pytest.raises(ApiError, match="bad API URL"):
        ApiClient("ftp://host:1", "x")
