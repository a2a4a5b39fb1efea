"""docs/openapi.json is the spec the code serves; regenerate with `python -m cloud_stub.api`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from cloud_stub.api import openapi_spec

SPEC_FILE = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_exported_spec_is_up_to_date() -> None:
    on_disk = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    assert on_disk == openapi_spec(), "docs/openapi.json is stale: run `python -m cloud_stub.api`"


def test_served_spec_is_the_exported_one(stack) -> None:
    served = httpx.get(stack.url + "/openapi.json", timeout=10).json()
    assert served == json.loads(SPEC_FILE.read_text(encoding="utf-8"))


def test_spec_is_versioned_and_documents_bearer_tokens_and_errors() -> None:
    spec = openapi_spec()
    assert all(p.startswith("/v1/") for p in spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    topup = spec["paths"]["/v1/accounts/{account}/topup"]["post"]
    assert {"401", "403", "422"} <= set(topup["responses"])
    assert topup["x-roles"] == ["operator", "admin"]
