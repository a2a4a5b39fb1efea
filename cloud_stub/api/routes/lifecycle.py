"""Account lifecycle (seed 003, 9.3–9.4): sleep on request, deletion, reopening, delinking and restoring a unit,
features, the ledger, essential notifications, and a billing run now."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from cloud_stub import audit
from cloud_stub.accounts import Change
from cloud_stub.api import convert
from cloud_stub.api import models as m
from cloud_stub.api.deps import CallerDep, CloudDep, account_id_of, needs, via
from cloud_stub.auth import Caller
from cloud_stub.auth import Permission as P
from cloud_stub.service import Cloud

router = APIRouter(prefix="/v1", tags=["lifecycle"])


def _account_change(cloud: Cloud, caller: Caller, request: Request, account: str, action: str,
                    run: Callable[[int], Change], *, device_id: str | None = None,
                    detail: dict[str, Any] | None = None) -> Change:
    """Run one account operation and its audit row in one transaction (target: the device if given)."""
    account_id = account_id_of(cloud, account)
    target = ("device", device_id) if device_id is not None else ("account", str(account_id))
    with audit.change(cloud.registry, caller.actor, action, *target, at=cloud.clock(), via=via(request)) as entry:
        entry.account_id = account_id
        entry.detail = detail
        snap = (lambda: convert.device_snapshot(cloud.registry, device_id)) if device_id is not None else (
            lambda: convert.account_snapshot(cloud.registry, account_id))
        entry.before = snap()
        change = run(account_id)
        entry.after = snap()
    return change


@router.post("/accounts/{account}/sleep", response_model=m.AccountChange, summary="Sleep mode on request",
             description="From `suspended` only; refused with a positive balance (seed 9.4).",
             **needs(P.ACCOUNTS_WRITE))
def enter_sleep(account: str, cloud: CloudDep, caller: CallerDep, request: Request) -> m.AccountChange:
    change = _account_change(cloud, caller, request, account, "account.sleep", cloud.enter_sleep)
    return convert.change(change, cloud.registry)


@router.delete("/accounts/{account}", response_model=m.AccountChange, summary="Delete an account for good",
               description="Its devices become `delinked`; a deleted account cannot be restored (a new one can "
               "be opened for its devices: reopen). Needs `signed_notice=true` unless the account is in deep "
               "sleep or eligible for deletion.", **needs(P.ACCOUNTS_WRITE))
def delete_account(account: str, cloud: CloudDep, caller: CallerDep, request: Request,
                   signed_notice: Annotated[bool, Query(description="the owner's signed notice")] = False
                   ) -> m.AccountChange:
    change = _account_change(cloud, caller, request, account, "account.delete",
                             lambda a: cloud.delete_account(a, signed_notice=signed_notice),
                             detail={"signed_notice": signed_notice})
    return convert.change(change, cloud.registry)


@router.post("/accounts/{account}/reopen", status_code=201, response_model=m.AccountChange,
             summary="A new account for the devices of a deleted one",
             description="Charges the per-device handling fee (seed 9.4) to the new account.",
             **needs(P.ACCOUNTS_WRITE))
def reopen(account: str, body: m.ReopenIn, cloud: CloudDep, caller: CallerDep, request: Request) -> m.AccountChange:
    deleted_id = account_id_of(cloud, account)
    with audit.change(cloud.registry, caller.actor, "account.reopen", "account", None, at=cloud.clock(),
                      via=via(request)) as entry:
        entry.before = convert.account_snapshot(cloud.registry, deleted_id)
        change = cloud.reopen_account(deleted_id, body.name, body.device_ids)
        new_id = change.account.id
        entry.target_id, entry.account_id = str(new_id), new_id
        entry.after = convert.account_snapshot(cloud.registry, new_id)
        entry.detail = {"from_account": deleted_id, "device_ids": body.device_ids}
    return convert.change(change, cloud.registry)


@router.post("/accounts/{account}/devices/{device_id}/delink", response_model=m.AccountChange,
             summary="Remove one unit from the service", description="The unit's desired mode becomes "
             "`delinked`; the account's other units keep running. Needs the owner's signed application.",
             **needs(P.DEVICES_RMA))
def delink(account: str, device_id: str, body: m.DelinkIn, cloud: CloudDep, caller: CallerDep,
           request: Request) -> m.AccountChange:
    change = _account_change(cloud, caller, request, account, "device.delink",
                             lambda a: cloud.delink_device(a, device_id,
                                                           signed_application=body.signed_application),
                             device_id=device_id, detail={"signed_application": body.signed_application})
    return convert.change(change, cloud.registry)


@router.post("/accounts/{account}/devices/{device_id}/restore", response_model=m.AccountChange,
             summary="Link a delinked unit again", description="Within a year of delinking, for the restore fee "
             "(seed 9.4); refused after a year.", **needs(P.DEVICES_RMA))
def restore(account: str, device_id: str, cloud: CloudDep, caller: CallerDep, request: Request) -> m.AccountChange:
    change = _account_change(cloud, caller, request, account, "device.restore",
                             lambda a: cloud.restore_device(a, device_id), device_id=device_id)
    return convert.change(change, cloud.registry)


@router.get("/accounts/{account}/features/{feature}/quote", response_model=m.FeatureQuote,
            summary="What adding a feature would cost", **needs(P.READ))
def quote_feature(account: str, feature: str, cloud: CloudDep) -> m.FeatureQuote:
    return m.FeatureQuote(**cloud.quote_feature(account_id_of(cloud, account), feature))


@router.post("/accounts/{account}/features", status_code=201, response_model=m.FeatureAdded,
             summary="Add a feature", description="At once, on an active account; billed with the plan from the "
             "next billing anniversary.", **needs(P.ACCOUNTS_WRITE))
def add_feature(account: str, body: m.FeatureIn, cloud: CloudDep, caller: CallerDep,
                request: Request) -> m.FeatureAdded:
    quotes: list[dict[str, Any]] = []

    def run(a: int) -> Change:
        change, quote = cloud.add_feature(a, body.feature)
        quotes.append(quote)
        return change

    change = _account_change(cloud, caller, request, account, "feature.add", run, detail={"feature": body.feature})
    return m.FeatureAdded(change=convert.change(change, cloud.registry), quote=m.FeatureQuote(**quotes[0]))


@router.delete("/accounts/{account}/features/{feature}", response_model=m.AccountChange,
               summary="Cancel a feature", description="Only after one calendar month of use (seed 9.3).",
               **needs(P.ACCOUNTS_WRITE))
def cancel_feature(account: str, feature: str, cloud: CloudDep, caller: CallerDep,
                   request: Request) -> m.AccountChange:
    change = _account_change(cloud, caller, request, account, "feature.cancel",
                             lambda a: cloud.cancel_feature(a, feature), detail={"feature": feature})
    return convert.change(change, cloud.registry)


@router.get("/accounts/{account}/ledger", response_model=list[m.LedgerEntry],
            summary="The account's money movements, oldest first", **needs(P.READ))
def ledger(account: str, cloud: CloudDep) -> list[m.LedgerEntry]:
    return [m.LedgerEntry(**r) for r in cloud.ledger(account_id_of(cloud, account))]


@router.get("/accounts/{account}/notifications", response_model=list[m.Notification],
            summary="The account's essential notifications, oldest first", **needs(P.READ))
def notifications(account: str, cloud: CloudDep) -> list[m.Notification]:
    return [m.Notification(**n) for n in cloud.notifications(account_id_of(cloud, account))]


@router.post("/lifecycle/tick", response_model=m.TickResult, summary="Run billing and lifecycle transitions now",
             description="Applies every monthly fee and time-driven transition due by now on every account "
             "(the cloud also does this by itself every sweep); idempotent.", **needs(P.ACCOUNTS_WRITE))
def tick(cloud: CloudDep, caller: CallerDep, request: Request) -> m.TickResult:
    reg = cloud.registry
    with audit.change(reg, caller.actor, "lifecycle.tick", "lifecycle", None, at=cloud.clock(),
                      via=via(request)) as entry:
        before = {a["id"]: convert.account_snapshot(reg, a["id"]) for a in reg.accounts()}
        changes = cloud.run_lifecycle()
        ids = sorted({c.account.id for c in changes})
        entry.before = {str(i): before.get(i) for i in ids}
        entry.after = {str(i): convert.account_snapshot(reg, i) for i in ids}
        entry.detail = {"accounts": ids}
    return m.TickResult(changes=[convert.change(c, reg) for c in changes])
