"""Device and account registry: the cloud's one source of truth, in SQLite (WAL) or PostgreSQL.

`Registry(url)` opens `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`,
`sqlite:///:memory:` or `postgresql://user:pass@host:port/db` and applies the migrations of
`cloud_stub.schema`. The SQL is written once, in the subset SQLite and PostgreSQL share
(SQLite spelling); `cloud_stub.db` translates it for PostgreSQL and raises the `sqlite3`
exception classes on both engines. On PostgreSQL `transaction()` is a READ COMMITTED
transaction and the single-row reads below (`account`, `find_account`, `device_row`,
`status`, `desired`) lock the row they read (`SELECT … FOR UPDATE`) while inside one, so a
read-modify-write (a balance, a version) is never lost between processes. New methods
that read a row to write it back inside a transaction should append `self._for_update`.

Several processes may share one database file (the `cloud serve` process and
`simsock account …` commands): WAL lets readers run beside a writer, writers wait up to
`busy_timeout`, and every multi-row change runs in one `transaction()` (BEGIN IMMEDIATE),
so nothing is ever half-written. Within a process one connection is shared by all threads
behind a lock; methods are thread-safe.

This module is data access only: no MQTT, no business rules (those live in
`accounts.py` and `service.py`). Timestamps are Unix seconds (float), money integer cents.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloud_stub import db, schema

DEFAULT_DB_URL = "sqlite:///simsock-cloud.db"


class RegistryError(Exception):
    """A database URL or request the registry cannot serve."""


class NotFound(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


def sqlite_path(url: str) -> str:
    """The file path (or ':memory:') of a `sqlite:///…` URL; RegistryError for anything else."""
    try:
        return db.sqlite_path(url)
    except db.URLError as exc:
        raise RegistryError(str(exc)) from None


def _row(row: Any) -> dict[str, Any] | None:
    return None if row is None else dict(row)


class Registry:
    def __init__(self, url: str = DEFAULT_DB_URL, *, busy_timeout: float = 10.0) -> None:
        self.url = url
        try:
            self.dialect = db.dialect_of(url)
        except db.URLError as exc:
            raise RegistryError(str(exc)) from None
        self.path = sqlite_path(url) if self.dialect == db.SQLITE else None
        if self.path is not None and self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise RegistryError(f"database directory {parent} does not exist")
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self._db = db.connect(url, busy_timeout=busy_timeout)
        except db.URLError as exc:
            raise RegistryError(str(exc)) from None
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open database {db.redact(url)}: {exc}") from exc
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise RegistryError(f"cannot use database {db.redact(url)}: {exc}") from exc

    # --- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Registry]:
        """One atomic write (BEGIN IMMEDIATE … COMMIT, ROLLBACK on any exception); nests."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._db.begin()  # SQLite: BEGIN IMMEDIATE; PostgreSQL: BEGIN (+ row locks, see _for_update)
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._db.rollback()
                raise
            else:
                self._db.commit()
            finally:
                self._depth = 0

    @property
    def _for_update(self) -> str:
        """' FOR UPDATE' inside a transaction on PostgreSQL (lock what you read to write back), else ''."""
        return self._db.for_update if self._depth else ""

    def _x(self, sql: str, params: tuple | dict = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, params)

    def _one(self, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None:
        with self._lock:
            return _row(self._db.execute(sql, params).fetchone())

    def _all(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, params).fetchall()]

    def _migrate(self) -> None:
        with self.transaction():
            self._db.lock_migrations()
            self._db.execute(schema.VERSION_TABLE)
            applied = {r[0] for r in self._db.execute("SELECT version FROM schema_version").fetchall()}
            have = max(applied, default=0)
            if have > schema.SCHEMA_VERSION:
                raise RegistryError(
                    f"database schema version {have} is newer than this code ({schema.SCHEMA_VERSION})"
                )
            # every missing number, lowest first: numbers are assigned per change, so a database
            # may hold 1 and 3 when the code that brings 2 arrives
            for version, description, sql in sorted(schema.MIGRATIONS):
                if version in applied:
                    continue
                for statement in sql.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, time.time()),
                )

    def schema_version(self) -> int:
        row = self._one("SELECT MAX(version) AS v FROM schema_version")
        return int(row["v"]) if row and row["v"] is not None else 0

    # --- accounts ------------------------------------------------------------------------

    def insert_account(self, name: str, balance_cents: int, state: str, at: float) -> int:
        try:
            cur = self._x(
                "INSERT INTO accounts (name, balance_cents, state, state_since, created) VALUES (?, ?, ?, ?, ?)",
                (name, balance_cents, state, at, at),
            )
        except sqlite3.IntegrityError as exc:
            raise RegistryError(f"account {name!r} already exists") from exc
        return int(cur.lastrowid or 0)

    def account(self, account_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM accounts WHERE id = ?" + self._for_update, (account_id,))

    def find_account(self, ref: int | str) -> dict[str, Any]:
        """An account by id (int or digits) or by name; NotFound otherwise."""
        row = None
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = self.account(int(ref))
        if row is None and isinstance(ref, str):
            row = self._one("SELECT * FROM accounts WHERE name = ?" + self._for_update, (ref,))
        if row is None:
            raise NotFound(f"unknown account {ref!r}")
        return row

    def accounts(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM accounts ORDER BY id")

    def update_account(self, account_id: int, *, balance_cents: int, state: str, state_since: float) -> None:
        self._x(
            "UPDATE accounts SET balance_cents = ?, state = ?, state_since = ? WHERE id = ?",
            (balance_cents, state, state_since, account_id),
        )

    # --- devices -------------------------------------------------------------------------

    def ensure_device(self, device_id: str, at: float) -> bool:
        """Create the device (no account) and its status row if missing; True if created."""
        with self.transaction():
            cur = self._x(
                "INSERT INTO devices (device_id, account_id, serial, created) VALUES (?, NULL, NULL, ?) "
                "ON CONFLICT(device_id) DO NOTHING",
                (device_id, at),
            )
            self._x("INSERT INTO device_status (device_id) VALUES (?) ON CONFLICT(device_id) DO NOTHING", (device_id,))
            return cur.rowcount > 0

    def assign_device(self, device_id: str, account_id: int, serial: str | None) -> None:
        self._x(
            "UPDATE devices SET account_id = ?, serial = COALESCE(?, serial) WHERE device_id = ?",
            (account_id, serial, device_id),
        )

    def device_row(self, device_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM devices WHERE device_id = ?" + self._for_update, (device_id,))

    _DEVICE_VIEW = """
        SELECT d.device_id, d.account_id, d.serial, d.created, d.delinked_at, s.*, ds.version AS desired_version,
               ds.mode AS desired_mode, ds.published_at AS desired_published_at
        FROM devices d
        LEFT JOIN device_status s ON s.device_id = d.device_id
        LEFT JOIN desired ds ON ds.device_id = d.device_id
    """

    def device(self, device_id: str) -> dict[str, Any] | None:
        return self._one(self._DEVICE_VIEW + " WHERE d.device_id = ?", (device_id,))

    def devices(self, account_id: int | None = None, *, include_delinked: bool = False) -> list[dict[str, Any]]:
        """Every device, or an account's linked ones (delinked ones too with include_delinked)."""
        if account_id is None:
            return self._all(self._DEVICE_VIEW + " ORDER BY d.device_id")
        linked = "" if include_delinked else " AND d.delinked_at IS NULL"
        return self._all(self._DEVICE_VIEW + " WHERE d.account_id = ?" + linked + " ORDER BY d.device_id",
                         (account_id,))

    def device_ids(self, account_id: int, *, include_delinked: bool = False) -> list[str]:
        """An account's device ids; delinked devices (still remembered for a restore) only on request."""
        linked = "" if include_delinked else " AND delinked_at IS NULL"
        return [r["device_id"] for r in self._all(
            "SELECT device_id FROM devices WHERE account_id = ?" + linked + " ORDER BY device_id", (account_id,)
        )]

    def delinked_devices(self, account_id: int) -> list[dict[str, Any]]:
        return self._all(self._DEVICE_VIEW + " WHERE d.account_id = ? AND d.delinked_at IS NOT NULL "
                         "ORDER BY d.device_id", (account_id,))

    def set_delinked(self, device_id: str, at: float | None) -> None:
        """Mark a device delinked at `at` (it keeps its account for a restore), or linked again (None)."""
        self._x("UPDATE devices SET delinked_at = ? WHERE device_id = ?", (at, device_id))

    # --- status and heartbeats -----------------------------------------------------------

    def status(self, device_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM device_status WHERE device_id = ?" + self._for_update, (device_id,))

    def set_status(self, device_id: str, status: str, at: float, reason: str) -> None:
        self._x(
            "UPDATE device_status SET status = ?, online = ?, status_at = ?, status_reason = ? WHERE device_id = ?",
            (status, 1 if status == "online" else 0, at, reason, device_id),
        )

    def touch(self, device_id: str, at: float) -> None:
        self._x(
            "UPDATE device_status SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE device_id = ?",
            (at, device_id),
        )

    def record_heartbeat(self, device_id: str, hb: dict[str, Any], at: float, interval_s: float | None) -> None:
        self._x(
            """UPDATE device_status SET
                 last_seen = MAX(COALESCE(last_seen, 0), :at), hb_at = :at, hb_count = hb_count + 1,
                 last_seq = :seq, hb_fw = :fw, hb_uptime_s = :uptime_s, hb_mode = :mode,
                 hb_desired_version = :desired_version, hb_flags = :flags,
                 hb_temperature_c = :temperature_c, hb_signal_dbm = :signal_dbm, hb_free_heap = :free_heap,
                 hb_interval_s = COALESCE(:interval_s, hb_interval_s)
               WHERE device_id = :device_id""",
            {**hb, "at": at, "interval_s": interval_s, "device_id": device_id},
        )

    def set_applied(self, device_id: str, version: int, at: float) -> None:
        self._x(
            "UPDATE device_status SET applied_version = ?, applied_at = ? WHERE device_id = ?",
            (version, at, device_id),
        )

    def heartbeat_count(self, device_id: str | None = None) -> int:
        if device_id is None:
            row = self._one("SELECT COALESCE(SUM(hb_count), 0) AS n FROM device_status")
        else:
            row = self._one("SELECT hb_count AS n FROM device_status WHERE device_id = ?", (device_id,))
        return int(row["n"]) if row and row["n"] is not None else 0

    def online_devices(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM device_status WHERE status = 'online'")

    # --- desired state -------------------------------------------------------------------

    def desired(self, device_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM desired WHERE device_id = ?" + self._for_update, (device_id,))

    def all_desired(self, unpublished_only: bool = False) -> list[dict[str, Any]]:
        where = " WHERE published_at IS NULL" if unpublished_only else ""
        return self._all("SELECT * FROM desired" + where + " ORDER BY device_id")

    def put_desired(self, device_id: str, mode: str, at: float) -> dict[str, Any]:
        """Store a new desired mode with the next version and return the row (unpublished).

        The next version is above both the last one stored and the one the unit last
        reported, so a unit that persisted a higher version (another database, a restore)
        still takes the new state.
        """
        with self.transaction():
            cur = self.desired(device_id)
            st = self.status(device_id)
            version = max(cur["version"] if cur else 0, st["applied_version"] if st else 0,
                          (st["hb_desired_version"] or 0) if st else 0) + 1
            self._x(
                "INSERT INTO desired (device_id, version, mode, created, published_at) VALUES (?, ?, ?, ?, NULL) "
                "ON CONFLICT(device_id) DO UPDATE SET version = excluded.version, mode = excluded.mode, "
                "created = excluded.created, published_at = NULL",
                (device_id, version, mode, at),
            )
            row = self.desired(device_id)
            assert row is not None
            return row

    def mark_published(self, device_id: str, version: int, at: float) -> None:
        self._x("UPDATE desired SET published_at = ? WHERE device_id = ? AND version = ?", (at, device_id, version))

    # --- commands and acks ---------------------------------------------------------------

    def insert_command(self, cmd_id: str, device_id: str, op: str, arg: str | None, exp: int | None, at: float) -> None:
        self._x(
            "INSERT INTO commands (id, device_id, op, arg, exp, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
            (cmd_id, device_id, op, arg, exp, at),
        )

    def command(self, cmd_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM commands WHERE id = ?", (cmd_id,))

    def insert_ack(
        self,
        device_id: str,
        *,
        ok: bool,
        at: float,
        cmd_id: str | None = None,
        version: int | None = None,
        err: str | None = None,
        res: dict[str, Any] | None = None,
    ) -> int:
        cur = self._x(
            "INSERT INTO acks (device_id, cmd_id, version, ok, err, res, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (device_id, cmd_id, version, 1 if ok else 0, err, None if res is None else json.dumps(res), at),
        )
        return int(cur.lastrowid or 0)

    @staticmethod
    def _ack(row: dict[str, Any]) -> dict[str, Any]:
        row["ok"] = bool(row["ok"])
        row["res"] = None if row["res"] is None else json.loads(row["res"])
        return row

    def acks(self, device_id: str | None = None, cmd_id: str | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if cmd_id is not None:
            where.append("cmd_id = ?")
            params.append(cmd_id)
        sql = "SELECT * FROM acks" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [self._ack(r) for r in self._all(sql, tuple(params))]

    def last_desired_ack(self, device_id: str, version: int) -> dict[str, Any] | None:
        row = self._one(
            "SELECT * FROM acks WHERE device_id = ? AND version = ? ORDER BY id DESC LIMIT 1", (device_id, version)
        )
        return None if row is None else self._ack(row)

    # --- MQTT credentials (hashes only; see cloud_stub/credentials.py) ------------------

    def live_credential(self, username: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM credentials WHERE username = ? AND revoked_at IS NULL", (username,))

    def live_credentials(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM credentials WHERE revoked_at IS NULL ORDER BY username")

    def credential_history(self, username: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM credentials WHERE username = ? ORDER BY id", (username,))

    def insert_credential(self, username: str, pw_hash: str, at: float) -> int:
        """A new live credential; the previous live one (if any) is revoked as `reissued`, synced at `at`."""
        with self.transaction():
            self._x(
                "UPDATE credentials SET revoked_at = ?, revoke_reason = 'reissued', broker_synced_at = ? "
                "WHERE username = ? AND revoked_at IS NULL",
                (at, at, username),
            )
            cur = self._x(
                "INSERT INTO credentials (username, pw_hash, created, broker_synced_at) VALUES (?, ?, ?, ?)",
                (username, pw_hash, at, at),
            )
            return int(cur.lastrowid or 0)

    def revoke_credential(self, username: str, at: float, reason: str) -> bool:
        """Revoke the live credential of `username` (broker sync pending); False if there was none."""
        cur = self._x(
            "UPDATE credentials SET revoked_at = ?, revoke_reason = ?, broker_synced_at = NULL "
            "WHERE username = ? AND revoked_at IS NULL",
            (at, reason, username),
        )
        return cur.rowcount > 0

    def unsynced_revocations(self) -> list[str]:
        """Usernames revoked here whose removal the broker has not confirmed yet (and not re-issued since)."""
        return [r["username"] for r in self._all(
            "SELECT DISTINCT c.username FROM credentials c WHERE c.revoked_at IS NOT NULL "
            "AND c.broker_synced_at IS NULL AND NOT EXISTS (SELECT 1 FROM credentials l "
            "WHERE l.username = c.username AND l.revoked_at IS NULL) ORDER BY c.username"
        )]

    def mark_revocation_synced(self, username: str, at: float) -> None:
        self._x(
            "UPDATE credentials SET broker_synced_at = ? WHERE username = ? AND revoked_at IS NOT NULL "
            "AND broker_synced_at IS NULL",
            (at, username),
        )

    # --- events --------------------------------------------------------------------------

    def add_event(
        self,
        kind: str,
        at: float,
        *,
        account_id: int | None = None,
        device_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        cur = self._x(
            "INSERT INTO events (at, kind, account_id, device_id, detail) VALUES (?, ?, ?, ?, ?)",
            (at, kind, account_id, device_id, json.dumps(detail or {}, separators=(",", ":"))),
        )
        return int(cur.lastrowid or 0)

    def events(
        self,
        *,
        account_id: int | None = None,
        device_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest `limit` events matching the filters, oldest first."""
        where, params = [], []
        for col, val in (("account_id", account_id), ("device_id", device_id), ("kind", kind)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._all(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows[::-1]

    # --- API tokens and audit (cloud_stub/auth.py, cloud_stub/audit.py) -------------------

    def insert_token(self, name: str, role: str, key: str, token_hash: str, at: float, created_by: str | None) -> int:
        cur = self._x(
            "INSERT INTO api_tokens (name, role, key, token_hash, created, created_by) VALUES (?, ?, ?, ?, ?, ?)",
            (name, role, key, token_hash, at, created_by),
        )
        return int(cur.lastrowid or 0)

    def token(self, token_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM api_tokens WHERE id = ?", (token_id,))

    def token_by_key(self, key: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM api_tokens WHERE key = ?", (key,))

    def tokens(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        where = "" if include_revoked else " WHERE revoked IS NULL"
        return self._all("SELECT * FROM api_tokens" + where + " ORDER BY id")

    def touch_token(self, token_id: int, at: float) -> None:
        self._x("UPDATE api_tokens SET last_used = ? WHERE id = ?", (at, token_id))

    def revoke_token(self, token_id: int, at: float) -> None:
        self._x("UPDATE api_tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (at, token_id))

    def add_audit(
        self,
        *,
        at: float,
        token_id: int | None,
        actor: str,
        role: str | None,
        action: str,
        target_type: str,
        target_id: str | None,
        account_id: int | None,
        via: str | None,
        before: str | None,
        after: str | None,
        detail: str | None,
    ) -> int:
        """One audit row; before/after/detail are JSON text (audit.py encodes and decodes them)."""
        cur = self._x(
            "INSERT INTO audit (at, token_id, actor, role, action, target_type, target_id, account_id, via, "
            "before, after, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, token_id, actor, role, action, target_type, target_id, account_id, via, before, after, detail),
        )
        return int(cur.lastrowid or 0)

    def audit_entries(
        self,
        *,
        account_id: int | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        token_id: int | None = None,
        action: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest `limit` audit rows matching the filters (and with id > after_id), oldest first."""
        where, params = [], []
        for col, val in (("account_id", account_id), ("target_type", target_type), ("target_id", target_id),
                         ("token_id", token_id), ("action", action)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if after_id is not None:
            where.append("id > ?")
            params.append(after_id)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        return self._all(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))[::-1]

    # --- account lifecycle (rules in lifecycle.py / accounts.py) -------------------------

    _LIFECYCLE_COLUMNS = frozenset({
        "balance_cents", "state", "state_since", "currency", "price_list", "billing_anchor", "bill_month",
        "sleep_since", "sleep_month", "next_due_at",
    })

    def set_account_fields(self, account_id: int, **fields: Any) -> None:
        """Update lifecycle columns of one account (names checked against a fixed list)."""
        bad = set(fields) - self._LIFECYCLE_COLUMNS
        if bad or not fields:
            raise RegistryError(f"cannot set account columns {sorted(bad) or 'none'}")
        cols = ", ".join(f"{k} = :{k}" for k in fields)
        self._x(f"UPDATE accounts SET {cols} WHERE id = :id", {**fields, "id": account_id})

    def due_account_ids(self, now: float) -> list[int]:
        """Accounts with a lifecycle item due at or before `now` (oldest due first)."""
        return [r["id"] for r in self._all(
            "SELECT id FROM accounts WHERE next_due_at IS NOT NULL AND next_due_at <= ? AND state <> 'deleted' "
            "ORDER BY next_due_at, id", (now,))]

    def add_ledger(
        self,
        account_id: int,
        at: float,
        kind: str,
        amount_cents: int,
        balance_cents: int,
        *,
        device_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """One money movement: amount_cents > 0 adds to the balance, < 0 takes from it."""
        cur = self._x(
            "INSERT INTO ledger (account_id, at, kind, amount_cents, balance_cents, device_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account_id, at, kind, amount_cents, balance_cents, device_id,
             json.dumps(detail or {}, separators=(",", ":"))),
        )
        return int(cur.lastrowid or 0)

    def ledger(self, account_id: int, *, kind: str | None = None) -> list[dict[str, Any]]:
        """An account's money movements, oldest first."""
        where, params = "account_id = ?", [account_id]
        if kind is not None:
            where += " AND kind = ?"
            params.append(kind)
        rows = self._all("SELECT * FROM ledger WHERE " + where + " ORDER BY id", tuple(params))
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows

    def insert_feature(self, account_id: int, feature: str, monthly_cents: int, at: float) -> int:
        cur = self._x(
            "INSERT INTO account_features (account_id, feature, monthly_cents, added_at) VALUES (?, ?, ?, ?)",
            (account_id, feature, monthly_cents, at),
        )
        return int(cur.lastrowid or 0)

    def features(self, account_id: int, *, include_cancelled: bool = False) -> list[dict[str, Any]]:
        where = "" if include_cancelled else " AND cancelled_at IS NULL"
        return self._all("SELECT * FROM account_features WHERE account_id = ?" + where + " ORDER BY id",
                         (account_id,))

    def cancel_feature(self, feature_row_id: int, at: float) -> None:
        self._x("UPDATE account_features SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL",
                (at, feature_row_id))

    def add_notification(
        self,
        account_id: int,
        kind: str,
        text: str,
        at: float,
        *,
        device_id: str | None = None,
        event_id: int | None = None,
    ) -> int:
        cur = self._x(
            "INSERT INTO notifications (account_id, device_id, kind, text, at, event_id) VALUES (?, ?, ?, ?, ?, ?)",
            (account_id, device_id, kind, text, at, event_id),
        )
        return int(cur.lastrowid or 0)

    def notifications(
        self, *, account_id: int | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Notifications with id > after_id (an outbox cursor), oldest first."""
        where, params = ["id > ?"], [after_id]
        if account_id is not None:
            where.append("account_id = ?")
            params.append(account_id)
        return self._all("SELECT * FROM notifications WHERE " + " AND ".join(where) + " ORDER BY id LIMIT ?",
                         (*params, limit))

    # --- factory registration: units, their steps, serial sequences (cloud_stub/units.py) ---

    def next_serial_seq(self, prefix: str, year: int) -> int:
        """The next sequence number of (prefix, year): increments the counter (call inside the transaction
        that also stores the unit, so a number is never issued twice and never lost)."""
        with self.transaction():
            self._x("INSERT INTO serial_sequences (prefix, year, last_seq) VALUES (?, ?, 0) "
                    "ON CONFLICT(prefix, year) DO NOTHING", (prefix, year))
            self._x("UPDATE serial_sequences SET last_seq = last_seq + 1 WHERE prefix = ? AND year = ?",
                    (prefix, year))
            row = self._one("SELECT last_seq FROM serial_sequences WHERE prefix = ? AND year = ?", (prefix, year))
            assert row is not None
            return int(row["last_seq"])

    def serial_sequences(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM serial_sequences ORDER BY prefix, year")

    def insert_unit(self, row: dict[str, Any]) -> None:
        cols = list(row)
        self._x(f"INSERT INTO units ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                tuple(row[c] for c in cols))

    def unit(self, serial: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM units WHERE serial = ?" + self._for_update, (serial,))

    def unit_by_device(self, device_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM units WHERE device_id = ?" + self._for_update, (device_id,))

    def units_by_hardware(self, uid: str, imei: str, iccid: str) -> list[dict[str, Any]]:
        """Every unit holding any of these hardware ids (0, 1 or several), oldest first."""
        return self._all("SELECT * FROM units WHERE uid = ? OR imei = ? OR iccid = ? ORDER BY year, seq"
                         + self._for_update, (uid, imei, iccid))

    def units(self, *, status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest `limit` units (optionally with one status), oldest first."""
        where, params = ("WHERE status = ? ", (status,)) if status else ("", ())
        rows = self._all(f"SELECT * FROM units {where}ORDER BY year DESC, seq DESC LIMIT ?", (*params, limit))
        return rows[::-1]

    def update_unit(self, serial: str, **fields: Any) -> None:
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._x(f"UPDATE units SET {sets} WHERE serial = ?", (*fields.values(), serial))

    def add_unit_step(self, serial: str, step: str, ok: bool, at: float, *, detail: dict[str, Any] | None = None,
                      station: str | None = None, operator: str | None = None,
                      bundle_hash: str | None = None) -> int:
        cur = self._x(
            "INSERT INTO unit_steps (serial, step, ok, detail, station, operator, bundle_hash, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (serial, step, 1 if ok else 0, None if detail is None else json.dumps(detail, separators=(",", ":")),
             station, operator, bundle_hash, at),
        )
        return int(cur.lastrowid or 0)

    def unit_steps(self, serial: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM unit_steps WHERE serial = ? ORDER BY id", (serial,))
        for r in rows:
            r["ok"] = bool(r["ok"])
            r["detail"] = None if r["detail"] is None else json.loads(r["detail"])
        return rows

    def set_device_serial(self, device_id: str, serial: str | None) -> None:
        self._x("UPDATE devices SET serial = ? WHERE device_id = ?", (serial, device_id))
