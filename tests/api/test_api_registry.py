"""Tokens and the audit log on the registry itself, on SQLite and on PostgreSQL (tests/conftest.py registry_url)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cloud_stub import audit, auth
from cloud_stub.registry import Registry


@pytest.fixture
def reg(registry_url: str) -> Iterator[Registry]:
    r = Registry(registry_url)
    try:
        yield r
    finally:
        r.close()


def test_tokens_authenticate_until_revoked_and_are_audited(reg: Registry) -> None:
    actor = auth.local_actor()
    row, token = auth.create_token(reg, "boot", "admin", actor=actor, at=1000.0)
    assert "token_hash" not in row and row["key"] in token
    caller = auth.authenticate(reg, token, 1001.0)
    assert caller is not None and (caller.name, caller.role, caller.token_id) == ("boot", "admin", row["id"])
    assert reg.token(row["id"])["last_used"] == 1001.0
    auth.authenticate(reg, token, 1030.0)
    assert reg.token(row["id"])["last_used"] == 1001.0  # at most one write a minute
    assert auth.authenticate(reg, token[:-1] + ("A" if token[-1] != "A" else "B"), 1002.0) is None
    assert auth.authenticate(reg, "sst_nothing", 1002.0) is None
    auth.revoke_token(reg, row["id"], actor=actor, at=1100.0)
    assert auth.authenticate(reg, token, 1101.0) is None
    assert reg.tokens() == [] and len(reg.tokens(include_revoked=True)) == 1
    entries = audit.entries(reg)
    assert [e["action"] for e in entries] == ["token.create", "token.revoke"]
    assert entries[1]["before"]["revoked"] is None and entries[1]["after"]["revoked"] == 1100.0
    with pytest.raises(auth.TokenError, match="unknown role"):
        auth.create_token(reg, "x", "root", actor=actor, at=1.0)


def test_audit_change_commits_with_the_change_or_not_at_all(reg: Registry) -> None:
    actor = audit.Actor("alice", "operator", 7)
    with audit.change(reg, actor, "account.create", "account", None, at=5.0, via="test") as e:
        account_id = reg.insert_account("acme", 100, "active", 5.0)
        e.target_id, e.account_id, e.after = str(account_id), account_id, reg.account(account_id)
    with pytest.raises(RuntimeError), audit.change(reg, actor, "account.create", "account", None, at=6.0) as e:
        reg.insert_account("ghost", 100, "active", 6.0)
        raise RuntimeError("the change fails half way")
    assert [a["name"] for a in reg.accounts()] == ["acme"]
    rows = audit.entries(reg)
    assert len(rows) == 1
    r = rows[0]
    assert (r["actor"], r["role"], r["token_id"], r["target_id"], r["account_id"], r["via"]) == (
        "alice", "operator", 7, str(account_id), account_id, "test")
    assert r["after"]["name"] == "acme" and r["before"] is None
    assert audit.entries(reg, account_id=account_id) == rows and audit.entries(reg, action="x") == []
    assert audit.entries(reg, after_id=r["id"]) == []


def test_audit_filters_and_limit(reg: Registry) -> None:
    actor = audit.Actor("bob", "admin", 1)
    for i in range(5):
        with reg.transaction():
            audit.record(reg, actor, "token.create" if i % 2 else "account.topup", "account", str(i), before={"i": i},
                         after={"i": i + 1}, at=time.time(), account_id=i)
    assert [e["target_id"] for e in audit.entries(reg, limit=2)] == ["3", "4"]
    assert [e["target_id"] for e in audit.entries(reg, action="token.create")] == ["1", "3"]
    assert [e["target_id"] for e in audit.entries(reg, target_type="account", target_id="2")] == ["2"]
