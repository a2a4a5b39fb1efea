"""API tokens with roles: who may call which part of the HTTP API.

A token is `sst_<key>_<secret>`: `key` (8 hex digits) is public and names the token in
listings and the audit log; `secret` is 32 random bytes (base64url). The database keeps
only the key and the SHA-256 of the whole token, so a stolen database copy holds no
usable token. A token is shown once, when it is created. SHA-256 (not a slow password
hash) is enough here: the secret is 256 random bits, not something a person chose, so
there is nothing to guess; a slow hash would only slow down every API call.

Roles and what they may do (docs/api.md has the table per endpoint):

| role | may |
|---|---|
| `read-only` | read accounts, devices, desired state, commands, events |
| `bench` | read; register units (factory bench, a later step) |
| `rma` | read; delink / restore / swap a unit in a slot |
| `operator` | read; accounts (money, devices, lifecycle), commands, desired state, OTA (later); audit log |
| `admin` | everything, including API tokens |

Every role may read; only the permissions below change anything.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cloud_stub import audit
from cloud_stub.registry import NotFound, Registry, RegistryError

TOKEN_PREFIX = "sst"
_TOKEN_RE = re.compile(r"^sst_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    RMA = "rma"
    BENCH = "bench"
    READ_ONLY = "read-only"


ROLES: tuple[str, ...] = tuple(r.value for r in Role)


class Permission(StrEnum):
    READ = "read"  # GET accounts, devices, desired, commands, events
    ACCOUNTS_WRITE = "accounts:write"  # create, top up, charge, add devices, lifecycle
    COMMANDS_SEND = "commands:send"  # relay/status/reboot commands to units
    DESIRED_WRITE = "desired:write"  # re-publish desired state
    DEVICES_RMA = "devices:rma"  # delink / restore / swap a unit
    DEVICES_REGISTER = "devices:register"  # factory bench registration
    AUDIT_READ = "audit:read"
    TOKENS_MANAGE = "tokens:manage"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.READ_ONLY: frozenset({Permission.READ}),
    Role.BENCH: frozenset({Permission.READ, Permission.DEVICES_REGISTER}),
    Role.RMA: frozenset({Permission.READ, Permission.DEVICES_RMA}),
    Role.OPERATOR: frozenset({
        Permission.READ, Permission.ACCOUNTS_WRITE, Permission.COMMANDS_SEND, Permission.DESIRED_WRITE,
        Permission.AUDIT_READ,
    }),
    Role.ADMIN: frozenset(Permission),
}


class TokenError(RegistryError):
    """A token request that cannot be served (bad role or name, unknown token)."""


def allowed(role: str, permission: Permission) -> bool:
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


def roles_with(permission: Permission) -> list[str]:
    """The roles that hold `permission`, most specific first (admin last)."""
    return [r.value for r in (Role.READ_ONLY, Role.BENCH, Role.RMA, Role.OPERATOR, Role.ADMIN)
            if permission in ROLE_PERMISSIONS[r]]


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise TokenError(f"unknown role {role!r} (one of: {', '.join(ROLES)})") from None


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise TokenError(f"bad token name {name!r} (1-100 printable characters)")
    return name


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """(key, token): a fresh random token and its public key."""
    key = secrets.token_hex(4)
    return key, f"{TOKEN_PREFIX}_{key}_{secrets.token_urlsafe(32)}"


def token_key(token: str) -> str | None:
    """The public key of a well-formed token, None for anything else."""
    m = _TOKEN_RE.match(token.strip())
    return m.group(1) if m else None


@dataclass(frozen=True)
class Caller:
    """Who is calling: an authenticated token (or the local bootstrap user, token_id None)."""

    name: str
    role: str
    token_id: int | None = None
    key: str | None = None

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(name=self.name, role=self.role, token_id=self.token_id)

    def may(self, permission: Permission) -> bool:
        return allowed(self.role, permission)


def token_view(row: dict[str, Any]) -> dict[str, Any]:
    """A token row without its hash (what listings and the audit log show)."""
    return {k: row[k] for k in ("id", "name", "role", "key", "created", "created_by", "last_used", "revoked")}


def create_token(registry: Registry, name: str, role: str, *, actor: audit.Actor, at: float,
                 via: str | None = None) -> tuple[dict[str, Any], str]:
    """Store a new token (hash only) and audit it in one transaction; returns (row, plaintext token)."""
    r = check_role(role)
    name = check_name(name)
    with registry.transaction() as reg:
        for _ in range(5):  # a key collision is a 1-in-4-billion event; try again
            key, token = new_token()
            if reg.token_by_key(key) is None:
                break
        else:  # pragma: no cover
            raise TokenError("could not find a free token key")
        token_id = reg.insert_token(name, r.value, key, hash_token(token), at, actor.name)
        row = reg.token(token_id)
        assert row is not None
        audit.record(reg, actor, "token.create", "token", str(token_id), before=None, after=token_view(row),
                     at=at, via=via)
    return token_view(row), token


def revoke_token(registry: Registry, token_id: int, *, actor: audit.Actor, at: float,
                 via: str | None = None) -> dict[str, Any]:
    with registry.transaction() as reg:
        row = reg.token(token_id)
        if row is None:
            raise NotFound(f"unknown token {token_id}")
        before = token_view(row)
        if row["revoked"] is None:
            reg.revoke_token(token_id, at)
            row = reg.token(token_id)
            assert row is not None
            audit.record(reg, actor, "token.revoke", "token", str(token_id), before=before,
                         after=token_view(row), at=at, via=via)
    return token_view(row)


def authenticate(registry: Registry, token: str, at: float, *, touch_every: float = 60.0) -> Caller | None:
    """The caller a presented token belongs to; None if it is malformed, unknown or revoked."""
    key = token_key(token)
    if key is None:
        return None
    row = registry.token_by_key(key)
    if row is None or row["revoked"] is not None:
        return None
    if not hmac.compare_digest(row["token_hash"], hash_token(token.strip())):
        return None
    if row["last_used"] is None or at - row["last_used"] >= touch_every:
        registry.touch_token(row["id"], at)  # at most one write a minute per token
    return Caller(name=row["name"], role=row["role"], token_id=row["id"], key=row["key"])


def local_actor() -> audit.Actor:
    """The person at this machine, working on the database directly (`simsock token create --db`)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return audit.Actor(name=f"local:{user}", role=Role.ADMIN.value, token_id=None)


__all__ = [
    "ROLES",
    "ROLE_PERMISSIONS",
    "Caller",
    "Permission",
    "Role",
    "TokenError",
    "allowed",
    "authenticate",
    "check_role",
    "create_token",
    "hash_token",
    "local_actor",
    "revoke_token",
    "roles_with",
    "token_key",
    "token_view",
]
