"""Registry (SQLite, migrations, transactions) and the prepaid account rules, without MQTT."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloud_stub import schema, views
from cloud_stub.accounts import (
    AccountError,
    Accounts,
    AccountState,
    Desired,
    format_cents,
    mode_for_state,
    parse_amount,
    state_for_balance,
)
from cloud_stub.registry import NotFound, Registry, RegistryError, sqlite_path


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def reg(registry_url: str) -> Registry:
    """A fresh registry on SQLite and on PostgreSQL (tests/conftest.py registry_url)."""
    r = Registry(registry_url)
    yield r
    r.close()


# --- URLs and schema ------------------------------------------------------------------------


def test_sqlite_urls(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///rel/x.db") == "rel/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    for bad, words in (("postgresql://u@h/db", "cannot connect"), ("postgres://u@127.0.0.1:1/db", "cannot connect"),
                       ("postgresql://u@h/", "no database name"), ("postgresql://u@h:x/db", "bad database URL"),
                       ("mysql://h/db", "not supported"), ("x.db", "expected sqlite"), ("sqlite://x.db", "expected"),
                       ("http://x/y", "unknown scheme"), ("sqlite:///x.db?mode=ro", "query")):
        with pytest.raises(RegistryError, match=words):
            Registry(bad)
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_schema_is_versioned_wal_and_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    with Registry(url) as r:
        assert r.schema_version() == schema.SCHEMA_VERSION
    with Registry(url) as r:  # re-open: nothing re-applied
        assert r.schema_version() == schema.SCHEMA_VERSION
    db = sqlite3.connect(tmp_path / "v.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(schema.MIGRATIONS)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "devices", "device_status", "desired", "acks", "events", "commands"} <= tables
    db.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    db.commit()
    db.close()
    with pytest.raises(RegistryError, match="newer"):
        Registry(url)


def test_transaction_rolls_back_everything(reg: Registry) -> None:
    with pytest.raises(RuntimeError), reg.transaction():
        reg.insert_account("a", 100, "active", 1.0)
        reg.add_event("x", 1.0)
        raise RuntimeError("boom")
    assert reg.accounts() == [] and reg.events() == []


# --- pure rules -----------------------------------------------------------------------------


def test_state_rules() -> None:
    assert state_for_balance(None, 1) is AccountState.ACTIVE
    assert state_for_balance(None, 0) is AccountState.SUSPENDED
    assert state_for_balance("active", 0) is AccountState.SUSPENDED
    assert state_for_balance("active", -5) is AccountState.SUSPENDED
    assert state_for_balance("suspended", -5) is AccountState.SUSPENDED
    assert state_for_balance("sleep", 0) is AccountState.SLEEP  # the lifecycle clock keeps it where it is
    for s in ("suspended", "sleep", "deep_sleep", "deletion_eligible"):
        assert state_for_balance(s, 1) is AccountState.ACTIVE  # a top-up re-activates from anywhere
    assert [mode_for_state(s) for s in ("active", "suspended", "sleep", "deep_sleep")] == [
        "active", "suspended", "sleep", "deep_sleep"]


def test_amounts() -> None:
    assert parse_amount("12.50") == 1250 and parse_amount("3") == 300 and parse_amount(" 0.01 ") == 1
    assert parse_amount("0", allow_zero=True) == 0
    for bad, words in (("-1", "negative"), ("0", "greater than zero"), ("1.001", "two decimals"),
                       ("abc", "bad amount"), ("nan", "bad amount"), ("1e20", "too large")):
        with pytest.raises(AccountError, match=words):
            parse_amount(bad)
    assert [format_cents(c) for c in (0, 5, 1250, -250, -5)] == ["0.00", "0.05", "12.50", "-2.50", "-0.05"]


# --- accounts on the registry ---------------------------------------------------------------


def test_account_lifecycle_bumps_desired_and_writes_events(reg: Registry) -> None:
    clock = FakeClock()
    published: list[Desired] = []
    accounts = Accounts(reg, publish=lambda d: published.append(d) or True, clock=clock)
    a = accounts.create("acme", 1000)
    assert (a.state, a.balance_cents, a.created) == ("active", 1000, clock.t)
    for dev in ("d1", "d2"):
        ch = accounts.add_device("acme", dev, serial=f"SN-{dev}")
        assert ch.desired == [Desired(dev, 1, "active")] == ch.published
    assert reg.device_row("d1")["serial"] == "SN-d1"

    clock.t += 10
    ch = accounts.charge(a.id, 400)  # 6.00 left: no state change, nothing published
    assert ch.account.balance_cents == 600 and not ch.state_changed and ch.desired == []

    clock.t += 10
    ch = accounts.charge(str(a.id), 600)  # exactly zero -> suspended
    assert ch.state_changed and (ch.old_state, ch.account.state) == ("active", "suspended")
    assert ch.account.state_since == clock.t
    assert sorted(ch.desired, key=lambda d: d.device_id) == [Desired("d1", 2, "suspended"),
                                                             Desired("d2", 2, "suspended")]
    ch = accounts.charge("acme", 2500)  # deeper below zero: still suspended, no new version
    assert ch.account.balance_cents == -2500 and ch.desired == []

    ch = accounts.top_up("acme", 2000)  # the minimum top-up (20.00), still negative: stays suspended
    assert ch.account.state == "suspended" and ch.desired == []
    ch = accounts.top_up("acme", 2000)
    assert ch.account.state == "active" and {d.version for d in ch.desired} == {3}
    assert [d.mode for d in ch.desired] == ["active", "active"]
    assert all(reg.desired(d)["published_at"] is not None for d in ("d1", "d2"))

    kinds = [e["kind"] for e in reg.events(account_id=a.id)]
    assert kinds.count("account.state") == 2 and kinds[0] == "account.created"
    assert kinds.count("account.charge") == 3 and kinds.count("account.topup") == 2
    state_events = reg.events(account_id=a.id, kind="account.state")
    assert [(e["detail"]["from"], e["detail"]["to"]) for e in state_events] == [("active", "suspended"),
                                                                                ("suspended", "active")]


def test_new_account_without_balance_starts_suspended(reg: Registry) -> None:
    accounts = Accounts(reg)
    a = accounts.create("broke")
    assert a.state == "suspended"
    ch = accounts.add_device(a.id, "d9")
    assert ch.desired == [Desired("d9", 1, "suspended")] and ch.published == []
    assert reg.desired("d9")["published_at"] is None  # left for the running cloud to publish


def test_account_errors_change_nothing(reg: Registry) -> None:
    accounts = Accounts(reg)
    accounts.create("acme", 500)
    accounts.create("other", 500)
    accounts.add_device("acme", "d1")
    before = (reg.accounts(), reg.events(limit=1000), reg.all_desired())
    with pytest.raises(RegistryError, match="already exists"):
        accounts.create("acme")
    with pytest.raises(AccountError, match="all digits"):
        accounts.create("123")
    with pytest.raises(NotFound, match="unknown account 'nobody'"):
        accounts.charge("nobody", 100)
    with pytest.raises(AccountError, match="positive"):
        accounts.charge("acme", -100)
    with pytest.raises(AccountError, match="positive"):
        accounts.top_up("acme", 0)
    with pytest.raises(AccountError, match="already on account acme"):
        accounts.add_device("acme", "d1")
    with pytest.raises(AccountError, match="another account"):
        accounts.add_device("other", "d1")
    with pytest.raises(AccountError, match="invalid device id"):
        accounts.add_device("acme", "bad/id")
    assert (reg.accounts(), reg.events(limit=1000), reg.all_desired()) == before


def test_publish_failure_keeps_the_commit_and_marks_unpublished(reg: Registry) -> None:
    def broken(d: Desired) -> bool:
        raise OSError("broker gone")

    accounts = Accounts(reg, publish=broken)
    accounts.create("acme", 100)
    ch = accounts.add_device("acme", "d1")
    assert ch.published == [] and [r["device_id"] for r in reg.all_desired(unpublished_only=True)] == ["d1"]


def test_desired_version_never_goes_below_what_the_unit_reported(reg: Registry) -> None:
    accounts = Accounts(reg)
    accounts.create("acme", 100)
    reg.ensure_device("d1", 1.0)
    reg.set_applied("d1", 41, 1.0)  # a unit that persisted v41 under another database
    ch = accounts.add_device("acme", "d1")
    assert ch.desired[0].version == 42


def test_views_and_convergence(reg: Registry) -> None:
    accounts = Accounts(reg)
    accounts.create("acme", 100)
    for d in ("d1", "d2", "d3"):
        accounts.add_device("acme", d)
    reg.set_applied("d1", 1, 2.0)
    reg.set_applied("d2", 5, 2.0)
    assert views.convergence(reg, "acme") == {"converged": ["d1", "d2"], "pending": ["d3"]}
    v = views.device(reg, "d3")
    assert (v["status"], v["online"], v["desired_version"], v["applied_version"], v["converged"]) == (
        "unknown", False, 1, 0, False)
    acct = views.account(reg, "acme")
    assert acct["devices"] == ["d1", "d2", "d3"] and acct["balance"] == "1.00" and acct["mode"] == "active"
    assert views.account(reg, "nobody") is None
    with pytest.raises(NotFound):
        views.convergence(reg, "nobody")
