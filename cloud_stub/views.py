"""Read-only views over the registry, shared by `Cloud`, the CLI and (later) the HTTP API.

Plain JSON-ready dicts; no MQTT needed, so `simsock account show` works without a broker.
"""

from __future__ import annotations

from typing import Any

from cloud_stub.accounts import Account
from cloud_stub.lifecycle import restore_deadline
from cloud_stub.registry import NotFound, Registry


def device_view(row: dict[str, Any]) -> dict[str, Any]:
    """A registry device row plus `online` (bool), `status`, `applied_version` and `converged`."""
    row["online"] = bool(row.get("online"))
    row["status"] = row.get("status") or "unknown"
    row["applied_version"] = row.get("applied_version") or 0
    dv = row.get("desired_version")
    row["converged"] = dv is None or row["applied_version"] >= dv
    return row


def devices(registry: Registry, account: int | str | None = None) -> list[dict[str, Any]]:
    account_id = None if account is None else registry.find_account(account)["id"]
    return [device_view(r) for r in registry.devices(account_id)]


def device(registry: Registry, device_id: str) -> dict[str, Any] | None:
    row = registry.device(device_id)
    return None if row is None else device_view(row)


def convergence(registry: Registry, account: int | str) -> dict[str, list[str]]:
    """{'converged': [...], 'pending': [...]}: device ids whose applied version is / is not
    at least their latest desired version. NotFound for an unknown account."""
    out: dict[str, list[str]] = {"converged": [], "pending": []}
    for d in devices(registry, account):
        out["converged" if d["converged"] else "pending"].append(d["device_id"])
    return out


def account(registry: Registry, ref: int | str) -> dict[str, Any] | None:
    try:
        a = Account.from_row(registry.find_account(ref))
    except NotFound:
        return None
    delinked = [
        {"device_id": d["device_id"], "delinked_at": d["delinked_at"],
         "restore_until": restore_deadline(d["delinked_at"]), "converged": d["converged"]}
        for d in map(device_view, registry.delinked_devices(a.id))
    ]
    # devices / convergence count the linked devices only: a delinked one no longer follows the account
    return {**a.to_dict(), "devices": registry.device_ids(a.id), "convergence": convergence(registry, a.id),
            "delinked": delinked}
