"""The registry on both engines: every migration on PostgreSQL, same behaviour, exact balances
under concurrent writers (separate connections, as separate processes would have)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from cloud_stub import db, schema
from cloud_stub.registry import Registry, RegistryError


def _columns(url: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ).fetchall()
    return {(t, c): ty for t, c, ty in rows}


def test_every_migration_applies_on_postgresql(pg_server: Any) -> None:
    url = pg_server.create_database()
    with Registry(url) as reg:
        assert reg.dialect == "postgresql"
        assert reg.schema_version() == schema.SCHEMA_VERSION
        applied = [r["version"] for r in reg._all("SELECT version FROM schema_version ORDER BY version")]
        assert applied == sorted(n for n, _, _ in schema.MIGRATIONS)
    with Registry(url) as reg:  # re-open: nothing re-applied, nothing fails
        assert reg.schema_version() == schema.SCHEMA_VERSION
    cols = _columns(url)
    tables = {t for t, _ in cols}
    assert {"accounts", "devices", "device_status", "desired", "acks", "events", "commands"} <= tables
    # the translation's point: SQLite's 64-bit integers and 8-byte reals everywhere
    assert {ty for (t, c), ty in cols.items() if ty in ("integer", "real", "smallint")} == set()
    assert cols[("accounts", "balance_cents")] == "bigint"
    assert cols[("accounts", "created")] == "double precision"


def test_two_processes_opening_a_fresh_database_migrate_it_once(pg_server: Any) -> None:
    url = pg_server.create_database()
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Registry(url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Registry(url) as reg:
        n = reg._one("SELECT COUNT(*) AS n FROM schema_version")
        assert n is not None and n["n"] == len(schema.MIGRATIONS)


def test_same_results_on_both_engines(registry_url: str) -> None:
    with Registry(registry_url) as reg:
        a = reg.insert_account("acme", 10**13, "active", 1_700_000_000.123456)  # > 2^31 cents, sub-second time
        with pytest.raises(RegistryError, match="already exists"):
            reg.insert_account("acme", 1, "active", 1.0)
        row = reg.account(a)
        assert row is not None and (row["balance_cents"], row["created"]) == (10**13, 1_700_000_000.123456)
        assert reg.ensure_device("d1", 1.0) is True and reg.ensure_device("d1", 2.0) is False
        reg.record_heartbeat("d1", {"seq": 2**32 - 1, "fw": "1.2.3", "uptime_s": 5, "mode": "active",
                                    "desired_version": 0, "flags": 1, "temperature_c": 21.5, "signal_dbm": -71,
                                    "free_heap": 50_000}, 10.5, None)
        reg.touch("d1", 3.0)  # MAX(last_seen, 3.0): never goes back
        st = reg.status("d1")
        assert st is not None and (st["last_seq"], st["last_seen"], st["hb_count"]) == (2**32 - 1, 10.5, 1)
        assert reg.heartbeat_count() == 1 and type(reg.heartbeat_count()) is int
        e1 = reg.add_event("x", 1.0, detail={"a": 1})
        e2 = reg.add_event("y", 2.0, device_id="d1")
        assert e2 == e1 + 1
        assert [e["kind"] for e in reg.events()] == ["x", "y"]
        ack = reg.insert_ack("d1", ok=True, at=1.0, version=1)
        assert reg.acks(device_id="d1")[0]["id"] == ack and reg.acks()[0]["ok"] is True
        with pytest.raises(db.IntegrityError):  # the same class on both engines
            reg.insert_ack("d1", ok=True, at=1.0)  # neither cmd_id nor version: CHECK fails


@pytest.mark.parametrize("writers", [4])
def test_concurrent_read_modify_writes_keep_the_balance_exact(registry_url: str, writers: int) -> None:
    """Each writer has its own connection; each transaction reads the balance and writes it back."""
    with Registry(registry_url) as reg:
        account_id = reg.insert_account("acme", 0, "suspended", 1.0)
    per_writer = 40
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def writer(k: int) -> None:
        try:
            with Registry(registry_url, busy_timeout=30) as mine:
                start.wait()
                for i in range(per_writer):
                    delta = 7 if (i + k) % 2 else -3  # top-ups and charges interleaved
                    with mine.transaction() as r:
                        row = r.account(account_id)  # FOR UPDATE on PostgreSQL
                        assert row is not None
                        r.update_account(account_id, balance_cents=row["balance_cents"] + delta,
                                         state=row["state"], state_since=row["state_since"])
                        r.add_event("account.move", 1.0, account_id=account_id, detail={"delta": delta})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Registry(registry_url) as reg:
        moves = [e["detail"]["delta"] for e in reg.events(account_id=account_id, limit=10_000)]
        row = reg.account(account_id)
        assert row is not None
        assert len(moves) == writers * per_writer
        assert row["balance_cents"] == sum(moves) == writers * per_writer // 2 * 4
