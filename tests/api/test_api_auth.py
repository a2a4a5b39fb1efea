"""Tokens and roles on every operation of the spec: 401 without a valid token, 403 for a role that lacks the
permission, and the roles each operation names in the spec (x-roles) are the ones that get through."""

from __future__ import annotations

import re

import httpx
import pytest

from cloud_stub import auth
from cloud_stub.api import openapi_spec

SPEC = openapi_spec()
OPERATIONS = [
    (method.upper(), path, op)
    for path, item in SPEC["paths"].items()
    for method, op in item.items()
    if path != "/v1/health"
]
MUTATING = [(m, p, op) for m, p, op in OPERATIONS if m != "GET"]


def concrete(path: str) -> str:
    """A path with its parameters filled (the permission check comes before any lookup)."""
    return re.sub(r"\{[^}]+\}", "1", path)


def call(stack, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.request(method, stack.url + concrete(path), json={} if method != "GET" else None,
                         headers=headers or {}, timeout=10)


def test_every_operation_names_its_permission_and_only_reads_are_open_to_read_only() -> None:
    assert OPERATIONS and MUTATING
    for method, path, op in OPERATIONS:
        assert op.get("x-permission") and op.get("x-roles"), (method, path)
        assert op["x-roles"] == auth.roles_with(auth.Permission(op["x-permission"]))
        assert "admin" in op["x-roles"]
        if method != "GET":
            assert "read-only" not in op["x-roles"], (method, path)
    assert "security" not in SPEC["paths"]["/v1/health"]["get"]


@pytest.mark.parametrize("method,path", [(m, p) for m, p, _ in OPERATIONS])
@pytest.mark.parametrize(
    "headers,message",
    [
        ({}, "missing API token"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "malformed Authorization header"),
        ({"Authorization": "Bearer sst_00000000_" + "A" * 43}, "invalid or revoked API token"),
        ({"Authorization": "Bearer nonsense"}, "invalid or revoked API token"),
    ],
    ids=["none", "basic", "unknown", "malformed"],
)
def test_without_a_valid_token_401(stack, method: str, path: str, headers: dict[str, str], message: str) -> None:
    r = call(stack, method, path, headers)
    assert r.status_code == 401, (method, path, r.text)
    assert r.json()["error"] == "unauthorized" and message in r.json()["message"]
    assert r.headers["www-authenticate"] == "Bearer"


def _denied() -> list:
    return [pytest.param(m, p, role, id=f"{m} {p} as {role}") for m, p, op in OPERATIONS
            for role in auth.ROLES if role not in op["x-roles"]]


@pytest.mark.parametrize("method,path,role", _denied())
def test_wrong_role_403_and_nothing_changes(stack, method: str, path: str, role: str) -> None:
    audit_before = stack.cloud.registry.audit_entries(limit=1)
    r = call(stack, method, path, {"Authorization": f"Bearer {stack.tokens[role]}"})
    assert r.status_code == 403, (method, path, role, r.text)
    body = r.json()
    assert body["error"] == "forbidden" and f"role {role!r} may not" in body["message"]
    assert stack.cloud.registry.audit_entries(limit=1) == audit_before


def test_every_mutating_operation_is_refused_to_read_only() -> None:
    denied = {(m, p) for m, p, role in ((x.values[0], x.values[1], x.values[2]) for x in _denied())
              if role == "read-only"}
    assert {(m, p) for m, p, _ in MUTATING} <= denied


@pytest.mark.parametrize("method,path,role", [
    (m, p, role) for m, p, op in OPERATIONS for role in op["x-roles"]
])
def test_allowed_roles_get_past_the_check(stack, method: str, path: str, role: str) -> None:
    """Not 401/403 (the request itself may still be a 404 or 422: path ids are placeholders)."""
    if (method, path) == ("DELETE", "/v1/tokens/{token_id}"):
        path = "/v1/tokens/999999"  # do not revoke the module's own token 1
    r = call(stack, method, path, {"Authorization": f"Bearer {stack.tokens[role]}"})
    assert r.status_code not in (401, 403), (method, path, role, r.text)


def test_revoked_token_is_refused_at_once(stack, admin) -> None:
    made = admin.create_token("short-lived", "operator")
    h = {"Authorization": f"Bearer {made.token}"}
    assert httpx.get(stack.url + "/v1/accounts", headers=h).status_code == 200
    admin.revoke_token(made.id)
    r = httpx.get(stack.url + "/v1/accounts", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_a_token_with_a_right_key_and_wrong_secret_is_refused(stack, admin) -> None:
    made = admin.create_token("forged", "admin")
    forged = made.token[:-4] + ("AAAA" if not made.token.endswith("AAAA") else "BBBB")
    r = httpx.get(stack.url + "/v1/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
