"""/v1/events (what the cloud saw and did) and /v1/audit (who changed what)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud_stub import audit
from cloud_stub.api import models as m
from cloud_stub.api.deps import CloudDep, account_id_of, needs
from cloud_stub.auth import Permission as P

router = APIRouter(prefix="/v1", tags=["events"])

Limit = Annotated[int, Query(ge=1, le=10_000, description="at most this many, the newest (returned oldest first)")]


@router.get("/events", response_model=list[m.Event], summary="Events: transitions, heartbeat status, acks, "
            "alerts", **needs(P.READ))
def list_events(
    cloud: CloudDep,
    account: Annotated[str | None, Query(description="account id or name")] = None,
    device: str | None = None,
    kind: Annotated[str | None, Query(description="e.g. account.state, desired.ack, device.status")] = None,
    limit: Limit = 100,
) -> list[m.Event]:
    account_id = None if account is None else account_id_of(cloud, account)
    rows = cloud.registry.events(account_id=account_id, device_id=device, kind=kind, limit=limit)
    return [m.Event(**r) for r in rows]


@router.get("/audit", response_model=list[m.AuditEntry], tags=["audit"], summary="The audit log",
            description="Every change made through the API (and the bootstrap token command): who, what, when, "
                        "before and after.", **needs(P.AUDIT_READ))
def list_audit(
    cloud: CloudDep,
    account: Annotated[str | None, Query(description="account id or name")] = None,
    target_type: Annotated[str | None, Query(description="account, device or token")] = None,
    target_id: str | None = None,
    token_id: int | None = None,
    action: Annotated[str | None, Query(description="e.g. account.topup, command.send, token.create")] = None,
    after_id: Annotated[int | None, Query(description="only entries newer than this id (for polling)")] = None,
    limit: Limit = 100,
) -> list[m.AuditEntry]:
    account_id = None if account is None else account_id_of(cloud, account)
    rows = audit.entries(cloud.registry, account_id=account_id, target_type=target_type, target_id=target_id,
                         token_id=token_id, action=action, after_id=after_id, limit=limit)
    return [m.AuditEntry(**r) for r in rows]
