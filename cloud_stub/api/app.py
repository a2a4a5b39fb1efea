"""The FastAPI application: `create_app(cloud)`.

Errors are always JSON `{"error": code, "message": text}` (plus `detail` for field
errors): 401 unauthorized (no/invalid/revoked token), 403 forbidden (role lacks the
permission), 404 not_found, 409 conflict (already exists), 422 invalid_request (body or
query malformed) or rejected (the account rules refuse it), 503 unavailable (the cloud
has no broker connection right now), 500 internal.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_stub.accounts import AccountError
from cloud_stub.api import models as m
from cloud_stub.api.deps import ApiError
from cloud_stub.api.routes import accounts, devices, events, lifecycle, tokens, units
from cloud_stub.auth import TokenError
from cloud_stub.protocol import ProtocolError
from cloud_stub.registry import NotFound, RegistryError
from cloud_stub.service import Cloud

log = logging.getLogger("simsock.api")

API_VERSION = "1.0.0"

DESCRIPTION = """\
The simsock cloud's HTTP API: what the host tools (bench, RMA, OTA, operators) use to talk to
the cloud. Every path but `/v1/health` needs an API token (`Authorization: Bearer sst_…`) whose
role holds the operation's permission (`x-permission`, `x-roles` on each operation).
Amounts are decimal strings in currency units (`"12.50"`). See docs/api.md.
"""

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorBody, "description": "missing, invalid or revoked token"},
    403: {"model": m.ErrorBody, "description": "the token's role may not do this"},
    422: {"model": m.ErrorBody, "description": "invalid request, or refused by the account rules"},
}


def _answer(status: int, code: str) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return _error(status, code, str(exc))

    return handler


def _error(status: int, code: str, message: str, detail: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = m.ErrorBody(error=code, message=message, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 422: "invalid_request", 503: "unavailable"}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = exc.code if isinstance(exc, ApiError) else _HTTP_CODES.get(exc.status_code, "error")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        parts = []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path")]
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
            errors.append({"loc": loc, "msg": msg, "type": e.get("type")})
        return _error(422, "invalid_request", "; ".join(parts), errors)

    # Domain errors → HTTP: FastAPI picks a handler by the exception's class (most specific
    # first), so NotFound (a RegistryError) still answers 404, not 409.
    for exc_type, status, code in (
        (NotFound, 404, "not_found"),
        (AccountError, 422, "rejected"),
        (TokenError, 422, "rejected"),
        (ProtocolError, 422, "rejected"),
        (RegistryError, 409, "conflict"),
        (ConnectionError, 503, "unavailable"),
    ):
        app.add_exception_handler(exc_type, _answer(status, code))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API %s %s failed", request.method, request.url.path)
        return _error(500, "internal", "internal error (the cloud's log has the details)")


def create_app(cloud: Cloud | None) -> FastAPI:
    """The API over `cloud` (started or not; publishing needs it connected). None: only for the spec."""
    app = FastAPI(title="simsock cloud API", version=API_VERSION, description=DESCRIPTION,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.cloud = cloud
    _install_error_handlers(app)

    @app.get("/v1/health", response_model=m.Health, tags=["meta"], summary="Liveness (no token needed)")
    def health() -> m.Health:
        if cloud is None:
            return m.Health(ok=False, broker_connected=False, schema_version=0)
        return m.Health(ok=True, broker_connected=cloud.connected, schema_version=cloud.registry.schema_version())

    for r in (accounts.router, lifecycle.router, devices.router, events.router, tokens.router, units.router):
        app.include_router(r, responses=_ERRORS)
    return app


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document (docs/openapi.json is this, exported; a test keeps it up to date)."""
    return create_app(None).openapi()
