"""What every route needs: the Cloud, the authenticated caller, a permission check, the audit context."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud_stub import auth
from cloud_stub.auth import Caller, Permission
from cloud_stub.registry import NotFound
from cloud_stub.service import Cloud

bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer sst_…`")


class ApiError(HTTPException):
    """An error answered as {"error": code, "message": message}."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


def get_cloud(request: Request) -> Cloud:
    cloud = request.app.state.cloud
    if cloud is None:
        raise ApiError(503, "unavailable", "this API has no cloud behind it")
    return cloud


CloudDep = Annotated[Cloud, Depends(get_cloud)]


def authenticated(
    request: Request,
    cloud: CloudDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller behind the bearer token; 401 if it is missing, malformed, unknown or revoked."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        if request.headers.get("authorization"):
            raise ApiError(401, "unauthorized", "malformed Authorization header: expected 'Bearer <token>'",
                           challenge)
        raise ApiError(401, "unauthorized", "missing API token: send 'Authorization: Bearer <token>'", challenge)
    caller = auth.authenticate(cloud.registry, credentials.credentials, cloud.clock())
    if caller is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API token", challenge)
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(authenticated)]


def needs(permission: Permission) -> dict[str, Any]:
    """Route keyword arguments: the permission check, and the roles that pass it in the OpenAPI spec."""

    def check(caller: CallerDep) -> None:
        if not caller.may(permission):
            roles = auth.roles_with(permission)
            raise ApiError(403, "forbidden", f"role {caller.role!r} may not do this ({permission.value}); "
                                             f"it needs one of: {', '.join(roles)}")

    return {
        "dependencies": [Depends(check)],
        "openapi_extra": {"x-permission": permission.value, "x-roles": auth.roles_with(permission)},
    }


def via(request: Request) -> str:
    """How a change came in, for the audit log: 'POST /v1/accounts/3/topup'."""
    return f"{request.method} {request.url.path}"


def account_id_of(cloud: Cloud, ref: str) -> int:
    """An account id from an id or name; 404 if unknown."""
    try:
        return int(cloud.registry.find_account(ref)["id"])
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
