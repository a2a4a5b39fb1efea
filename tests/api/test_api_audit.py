"""The audit log: every change through the API leaves one entry (who, what, when, before/after) written in the
same transaction as the change; refused requests leave none; operators and admins can read it."""

from __future__ import annotations

import pytest

from cloud_stub import audit
from provisioning.api_client import ApiError


def latest(admin, **filters):
    entries = admin.audit(**filters, limit=1)
    assert entries, filters
    return entries[0]


def test_each_change_is_audited_with_before_and_after(stack, name) -> None:
    acct, dev = name("aud"), name("aud-dev")
    with stack.client("operator") as op, stack.client("admin") as admin:
        me = op.me()
        a = op.create_account(acct, "10.00")
        e = latest(admin, action="account.create")
        assert (e.actor, e.token_id, e.role, e.target_type, e.target_id, e.account_id) == (
            me.name, me.token_id, "operator", "account", str(a.id), a.id)
        assert e.before is None and e.after["balance_cents"] == 1000 and e.after["name"] == acct
        assert e.via == "POST /v1/accounts"

        op.add_device(acct, dev, serial="SN-9")
        e = latest(admin, action="account.add_device")
        assert (e.target_type, e.target_id, e.account_id) == ("device", dev, a.id)
        assert e.before is None
        assert e.after["account_id"] == a.id and e.after["serial"] == "SN-9"
        assert e.after["desired"] == {"version": 1, "mode": "active"}

        op.charge(acct, "12.50", reason="march")
        e = latest(admin, action="account.charge")
        assert (e.before["balance_cents"], e.before["state"]) == (1000, "active")
        assert (e.after["balance_cents"], e.after["state"]) == (-250, "suspended")
        assert e.detail == {"amount_cents": 1250, "reason": "march"}
        assert e.via == f"POST /v1/accounts/{acct}/charge"

        op.top_up(a.id, "20")  # the minimum top-up (seed 9.3)
        e = latest(admin, action="account.topup")
        assert (e.before["balance_cents"], e.after["balance_cents"], e.after["state"]) == (-250, 1750, "active")
        assert e.at >= latest(admin, action="account.charge").at

        op.republish_desired(dev)
        e = latest(admin, action="desired.publish")
        assert e.target_id == dev and e.before["version"] == e.after["version"]

        c = op.send_command(dev, "relay", "off")
        e = latest(admin, action="command.send")
        assert e.target_id == dev and e.after["id"] == c.id and e.after["arg"] == "off" and e.before is None

        t = admin.create_token(name("tok"), "rma")
        e = latest(admin, action="token.create")
        assert e.target_id == str(t.id) and e.after["role"] == "rma" and "token_hash" not in e.after
        assert t.token not in str(e.model_dump())  # the secret never reaches the audit log
        admin.revoke_token(t.id)
        e = latest(admin, action="token.revoke")
        assert e.before["revoked"] is None and e.after["revoked"] is not None

        mine = admin.audit(account=acct)
        assert [x.action for x in mine] == ["account.create", "account.add_device", "account.charge",
                                            "account.topup", "desired.publish", "command.send"]
        assert admin.audit(token_id=me.token_id, limit=10_000)[-1].action == "command.send"
        newer = admin.audit(after_id=mine[2].id, account=acct)
        assert [x.id for x in newer] == [x.id for x in mine[3:]]


def test_operator_and_admin_read_the_audit_log_others_do_not(stack) -> None:
    for role in ("operator", "admin"):
        with stack.client(role) as c:
            c.audit()
    for role in ("read-only", "bench", "rma"):
        with stack.client(role) as c, pytest.raises(ApiError) as e:
            c.audit()
        assert e.value.status == 403


def test_change_and_audit_entry_commit_together(stack, admin, name, monkeypatch) -> None:
    """Fault injection (a mock: an audit insert that fails cannot be produced for real): the top-up is
    rolled back with it, nothing half-written, and the client gets a clean 500."""
    acct = name("atomic")
    admin.create_account(acct, "1.00")
    n = len(admin.audit(limit=10_000))

    def broken(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(stack.cloud.registry, "add_audit", broken)
    with pytest.raises(ApiError) as e:
        admin.top_up(acct, "20")
    assert e.value.status == 500 and e.value.code == "internal"
    monkeypatch.undo()
    assert admin.account(acct).balance_cents == 100
    assert len(admin.audit(limit=10_000)) == n
    assert [ev.kind for ev in admin.events(account=acct)] == ["account.created"]


def test_bootstrap_token_is_audited_as_the_local_user(stack) -> None:
    entries = audit.entries(stack.cloud.registry, action="token.create", limit=10_000)
    assert entries and entries[0]["actor"].startswith("local:") and entries[0]["token_id"] is None
