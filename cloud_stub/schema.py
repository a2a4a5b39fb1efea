"""The registry's database schema, as numbered migrations.

`schema_version` records every migration applied; `registry.Registry` applies the missing
ones in order inside one transaction when it opens a database. Migrations are append-only:
never edit a released one, add the next number. The SQL sticks to what SQLite and
PostgreSQL share (REAL Unix-second timestamps, INTEGER money in cents, TEXT JSON details)
so a PostgreSQL backend behind `postgresql://` can reuse it with a few dialect
substitutions (`INTEGER PRIMARY KEY` -> identity columns).
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "accounts, devices, status, desired state, acks, commands, events",
        """
        CREATE TABLE accounts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            balance_cents INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('active', 'suspended', 'sleep', 'deep_sleep', 'deletion_eligible', 'deleted')),
            state_since REAL NOT NULL,
            created REAL NOT NULL
        );

        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            account_id INTEGER REFERENCES accounts(id),
            serial TEXT,
            created REAL NOT NULL
        );
        CREATE INDEX devices_account ON devices(account_id);

        CREATE TABLE device_status (
            device_id TEXT PRIMARY KEY REFERENCES devices(device_id),
            status TEXT NOT NULL DEFAULT 'unknown'
                CHECK (status IN ('unknown', 'online', 'offline', 'dormant')),
            online INTEGER NOT NULL DEFAULT 0,
            status_at REAL,
            status_reason TEXT,
            last_seen REAL,
            hb_count INTEGER NOT NULL DEFAULT 0,
            hb_at REAL,
            last_seq INTEGER,
            hb_fw TEXT,
            hb_uptime_s INTEGER,
            hb_mode TEXT,
            hb_desired_version INTEGER,
            hb_flags INTEGER,
            hb_temperature_c REAL,
            hb_signal_dbm INTEGER,
            hb_free_heap INTEGER,
            hb_interval_s REAL,
            applied_version INTEGER NOT NULL DEFAULT 0,
            applied_at REAL
        );

        CREATE TABLE desired (
            device_id TEXT PRIMARY KEY REFERENCES devices(device_id),
            version INTEGER NOT NULL CHECK (version >= 1),
            mode TEXT NOT NULL,
            created REAL NOT NULL,
            published_at REAL
        );

        CREATE TABLE commands (
            id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL REFERENCES devices(device_id),
            op TEXT NOT NULL,
            arg TEXT,
            exp INTEGER,
            sent_at REAL NOT NULL
        );

        CREATE TABLE acks (
            id INTEGER PRIMARY KEY,
            device_id TEXT NOT NULL,
            cmd_id TEXT,
            version INTEGER,
            ok INTEGER NOT NULL,
            err TEXT,
            res TEXT,
            at REAL NOT NULL,
            CHECK ((cmd_id IS NULL) <> (version IS NULL))
        );
        CREATE INDEX acks_cmd ON acks(cmd_id);
        CREATE INDEX acks_device ON acks(device_id, id);

        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            account_id INTEGER,
            device_id TEXT,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_account ON events(account_id, id);
        CREATE INDEX events_device ON events(device_id, id);
        """,
    ),
    (
        3,
        "HTTP API tokens (hash only) and the audit log",
        """
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'rma', 'bench', 'read-only')),
            key TEXT NOT NULL UNIQUE,
            token_hash TEXT NOT NULL,
            created REAL NOT NULL,
            created_by TEXT,
            last_used REAL,
            revoked REAL
        );

        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            token_id INTEGER,
            actor TEXT NOT NULL,
            role TEXT,
            action TEXT NOT NULL,
            target_type TEXT NOT NULL,
            target_id TEXT,
            account_id INTEGER,
            via TEXT,
            before TEXT,
            after TEXT,
            detail TEXT
        );
        CREATE INDEX audit_target ON audit(target_type, target_id, id);
        CREATE INDEX audit_account ON audit(account_id, id);
        CREATE INDEX audit_token ON audit(token_id, id);
        """,
    ),
    (
        2,
        "account lifecycle: currency, price list, billing and sleep calendars, delinked devices, "
        "ledger, features, notifications",
        """
        ALTER TABLE accounts ADD COLUMN currency TEXT NOT NULL DEFAULT 'USD';
        ALTER TABLE accounts ADD COLUMN price_list TEXT NOT NULL DEFAULT '2026-11';
        ALTER TABLE accounts ADD COLUMN billing_anchor REAL;
        ALTER TABLE accounts ADD COLUMN bill_month INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE accounts ADD COLUMN sleep_since REAL;
        ALTER TABLE accounts ADD COLUMN sleep_month INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE accounts ADD COLUMN next_due_at REAL DEFAULT 0;
        UPDATE accounts SET billing_anchor = created;
        CREATE INDEX accounts_due ON accounts(next_due_at);

        ALTER TABLE devices ADD COLUMN delinked_at REAL;

        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts(id),
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            amount_cents INTEGER NOT NULL,
            balance_cents INTEGER NOT NULL,
            device_id TEXT,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX ledger_account ON ledger(account_id, id);

        CREATE TABLE account_features (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts(id),
            feature TEXT NOT NULL,
            monthly_cents INTEGER NOT NULL,
            added_at REAL NOT NULL,
            cancelled_at REAL
        );
        CREATE INDEX account_features_account ON account_features(account_id, feature);

        CREATE TABLE notifications (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts(id),
            device_id TEXT,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            at REAL NOT NULL,
            event_id INTEGER
        );
        CREATE INDEX notifications_account ON notifications(account_id, id);
        """,
    ),
    (
        4,
        "per-unit MQTT credentials (hash only), revocations and their broker sync",
        """
        CREATE TABLE credentials (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL,
            pw_hash TEXT NOT NULL,
            created REAL NOT NULL,
            revoked_at REAL,
            revoke_reason TEXT,
            broker_synced_at REAL
        );
        CREATE UNIQUE INDEX credentials_live ON credentials(username) WHERE revoked_at IS NULL;
        CREATE INDEX credentials_username ON credentials(username, id);
        """,
    ),
    (
        5,
        "factory registration: units (serial, hardware ids, device id, bundle, station, operator), "
        "their step results, serial sequences",
        """
        CREATE TABLE serial_sequences (
            prefix TEXT NOT NULL,
            year INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            PRIMARY KEY (prefix, year)
        );

        CREATE TABLE units (
            serial TEXT PRIMARY KEY,
            year INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            uid TEXT NOT NULL UNIQUE,
            imei TEXT NOT NULL UNIQUE,
            iccid TEXT NOT NULL UNIQUE,
            device_id TEXT,
            status TEXT NOT NULL CHECK (status IN
                ('allocated', 'credentials_issued', 'registered', 'verified', 'failed', 'void')),
            bundle_hash TEXT,
            station TEXT NOT NULL,
            operator TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            credentials_at REAL,
            credentials_confirmed_at REAL,
            registered_at REAL,
            verified_at REAL,
            void_at REAL,
            void_reason TEXT,
            UNIQUE (year, seq)
        );
        CREATE UNIQUE INDEX units_device ON units(device_id) WHERE device_id IS NOT NULL;

        CREATE TABLE unit_steps (
            id INTEGER PRIMARY KEY,
            serial TEXT NOT NULL REFERENCES units(serial),
            step TEXT NOT NULL,
            ok INTEGER NOT NULL,
            detail TEXT,
            station TEXT,
            operator TEXT,
            bundle_hash TEXT,
            at REAL NOT NULL
        );
        CREATE INDEX unit_steps_serial ON unit_steps(serial, id);
        """,
    ),
]

SCHEMA_VERSION = max(number for number, _, _ in MIGRATIONS)  # numbers are assigned per change, not by list order

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""
