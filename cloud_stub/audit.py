"""The audit log: who changed what, when, with the state before and after.

One row per change: the actor (token id, name and role, or `local:<user>` for the
bootstrap command working on the database), the action (`account.topup`,
`token.create`, …), the target (`account` 3, `device` dev-1, …), the account it
concerns, how it came in (`POST /v1/accounts/3/topup`), and `before`/`after` as JSON.

`change()` writes the row in the same transaction as the change itself: either both
are in the database or neither. Rows are never updated or deleted.

Timestamps come from the cloud's clock (`Cloud.clock`), the same one that stamps the
events, so an account walked through two years by a test has an audit trail on the same
time line as its events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cloud_stub.registry import Registry


@dataclass(frozen=True)
class Actor:
    name: str
    role: str
    token_id: int | None = None


def dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def record(
    reg: Registry,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | None,
    *,
    before: Any,
    after: Any,
    at: float,
    account_id: int | None = None,
    via: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Write one audit row (call inside the change's transaction)."""
    return reg.add_audit(
        at=at, token_id=actor.token_id, actor=actor.name, role=actor.role, action=action,
        target_type=target_type, target_id=target_id, account_id=account_id, via=via,
        before=dumps(before), after=dumps(after), detail=dumps(detail),
    )


@dataclass
class Entry:
    """What `change()` will write; the caller fills `before`/`after` (and may retarget)."""

    action: str
    target_type: str
    target_id: str | None
    before: Any = None
    after: Any = None
    account_id: int | None = None
    detail: dict[str, Any] | None = field(default=None)
    id: int | None = None


@contextmanager
def change(
    registry: Registry,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | None,
    *,
    at: float,
    via: str | None = None,
) -> Iterator[Entry]:
    """One transaction around a change and its audit row; nothing is written if the body raises."""
    entry = Entry(action, target_type, target_id)
    with registry.transaction() as reg:
        yield entry
        entry.id = record(reg, actor, entry.action, entry.target_type, entry.target_id, before=entry.before,
                          after=entry.after, at=at, account_id=entry.account_id, via=via, detail=entry.detail)


def entries(registry: Registry, **filters: Any) -> list[dict[str, Any]]:
    """Audit rows (newest `limit`, oldest first) with before/after/detail decoded."""
    rows = registry.audit_entries(**filters)
    for r in rows:
        for k in ("before", "after", "detail"):
            r[k] = None if r[k] is None else json.loads(r[k])
    return rows


__all__ = ["Actor", "Entry", "change", "dumps", "entries", "record"]
