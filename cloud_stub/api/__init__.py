"""The cloud's HTTP API (FastAPI): `create_app(cloud)`, served by `ApiServer` (uvicorn in a thread).

Import `cloud_stub.api.models` alone for the request/response bodies (the typed client
does): this package's `__init__` imports FastAPI only when `create_app` or `ApiServer`
is asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiServer", "create_app", "openapi_spec"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "openapi_spec"):
        from cloud_stub.api import app

        return getattr(app, name)
    if name == "ApiServer":
        from cloud_stub.api.server import ApiServer

        return ApiServer
    raise AttributeError(name)
