"""/v1/accounts: list, create, get (with convergence), top up, charge, add a device."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cloud_stub import audit
from cloud_stub.accounts import parse_amount
from cloud_stub.api import convert
from cloud_stub.api import models as m
from cloud_stub.api.deps import ApiError, CallerDep, CloudDep, account_id_of, needs, via
from cloud_stub.auth import Permission as P

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])


@router.get("", response_model=list[m.Account], summary="List accounts", **needs(P.READ))
def list_accounts(cloud: CloudDep) -> list[m.Account]:
    accounts = cloud.accounts.list_accounts()
    return [convert.account(a, len(cloud.registry.device_ids(a.id))) for a in accounts]


@router.post("", status_code=201, response_model=m.Account, summary="Create an account",
             description="A positive opening balance makes the account `active`, otherwise it starts `suspended`.",
             **needs(P.ACCOUNTS_WRITE))
def create_account(body: m.AccountCreate, cloud: CloudDep, caller: CallerDep, request: Request) -> m.Account:
    with audit.change(cloud.registry, caller.actor, "account.create", "account", None, at=cloud.clock(),
                      via=via(request)) as entry:
        a = cloud.create_account(body.name, parse_amount(body.balance, allow_zero=True), body.currency)
        entry.target_id, entry.account_id = str(a.id), a.id
        entry.after = convert.account_snapshot(cloud.registry, a.id)
    return convert.account(a, 0)


@router.get("/{account}", response_model=m.AccountDetail, summary="An account with its devices and convergence",
            description="`account` is the id or the name. `convergence` lists the devices that have applied "
                        "their latest desired state and the ones still pending (offline units converge at "
                        "their next check-in).", **needs(P.READ))
def get_account(account: str, cloud: CloudDep) -> m.AccountDetail:
    view = cloud.account(account)
    if view is None:
        raise ApiError(404, "not_found", f"unknown account {account!r}")
    return convert.account_detail(view)


def _money(cloud: CloudDep, caller: CallerDep, request: Request, account: str, body: m.AmountIn,
           action: str) -> m.AccountChange:
    account_id = account_id_of(cloud, account)
    cents = parse_amount(body.amount)
    with audit.change(cloud.registry, caller.actor, action, "account", str(account_id), at=cloud.clock(),
                      via=via(request)) as entry:
        entry.account_id = account_id
        entry.before = convert.account_snapshot(cloud.registry, account_id)
        move = cloud.top_up if action == "account.topup" else cloud.charge
        change = move(account_id, cents, body.reason)
        entry.after = convert.account_snapshot(cloud.registry, account_id)
        entry.detail = {"amount_cents": cents, "reason": body.reason}
    return convert.change(change, cloud.registry)


@router.post("/{account}/topup", response_model=m.AccountChange, summary="Top up the balance",
             description="Above zero the account is `active` again at once and every unit gets a new desired "
                         "state.", **needs(P.ACCOUNTS_WRITE))
def top_up(account: str, body: m.AmountIn, cloud: CloudDep, caller: CallerDep, request: Request) -> m.AccountChange:
    return _money(cloud, caller, request, account, body, "account.topup")


@router.post("/{account}/charge", response_model=m.AccountChange, summary="Charge the balance",
             description="At zero or below an active account is `suspended`.", **needs(P.ACCOUNTS_WRITE))
def charge(account: str, body: m.AmountIn, cloud: CloudDep, caller: CallerDep, request: Request) -> m.AccountChange:
    return _money(cloud, caller, request, account, body, "account.charge")


@router.post("/{account}/devices", status_code=201, response_model=m.AccountChange,
             summary="Put a device on the account", description="The device gets the account's mode as a new "
             "desired state.", **needs(P.ACCOUNTS_WRITE))
def add_device(account: str, body: m.DeviceAdd, cloud: CloudDep, caller: CallerDep,
               request: Request) -> m.AccountChange:
    account_id = account_id_of(cloud, account)
    with audit.change(cloud.registry, caller.actor, "account.add_device", "device", body.device_id,
                      at=cloud.clock(), via=via(request)) as entry:
        entry.account_id = account_id
        entry.before = convert.device_snapshot(cloud.registry, body.device_id)
        change = cloud.add_device(account_id, body.device_id, body.serial)
        entry.after = convert.device_snapshot(cloud.registry, body.device_id)
    return convert.change(change, cloud.registry)
