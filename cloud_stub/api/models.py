"""Request and response bodies of the HTTP API (pydantic), shared by the server and the typed client.

Money: requests carry amounts as decimal strings in currency units (`"12.50"`, at most
two decimals, never a JSON number, so no float ever touches money); responses carry
both `balance` (the same string form) and `balance_cents` (an integer).
Timestamps are Unix seconds (float) of the cloud's clock.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud_stub.accounts import AccountError, parse_amount

RoleName = Literal["admin", "operator", "rma", "bench", "read-only"]


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _amount(value: object, allow_zero: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f'amounts are decimal strings like "12.50", not {type(value).__name__} {value!r}')
    try:
        parse_amount(value, allow_zero=allow_zero)
    except AccountError as exc:
        raise ValueError(str(exc)) from None
    return value.strip()


# --- errors and meta ----------------------------------------------------------------------


class ErrorBody(Model):
    error: str = Field(description="machine-readable code: unauthorized, forbidden, not_found, conflict, "
                                   "rejected, invalid_request, unavailable, internal")
    message: str = Field(description="what went wrong, for a person")
    detail: list[dict[str, Any]] | None = Field(default=None, description="field errors of an invalid request")


class Health(Model):
    ok: bool
    api: str = "v1"
    broker_connected: bool
    schema_version: int


class Me(Model):
    token_id: int | None
    name: str
    role: RoleName
    permissions: list[str]


# --- accounts -----------------------------------------------------------------------------


class AccountCreate(Model):
    name: str = Field(min_length=1, max_length=100, examples=["acme"])
    balance: str = Field(default="0", description="opening balance, currency units", examples=["20.00"])
    currency: str = Field(default="USD", description="USD or EUR: the price list the account is billed from")

    @field_validator("balance", mode="before")
    @classmethod
    def _balance(cls, v: object) -> str:
        return _amount(v, allow_zero=True)


class AmountIn(Model):
    amount: str = Field(description="currency units, at most two decimals, > 0", examples=["12.50"])
    reason: str | None = Field(default=None, max_length=200, description="kept in the event log")

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, v: object) -> str:
        return _amount(v)


class Account(Model):
    id: int
    name: str
    balance: str = Field(examples=["12.50"])
    balance_cents: int
    state: str
    mode: str = Field(description="the mode the account's state asks of every unit")
    state_since: float
    created: float
    device_count: int = 0
    currency: str | None = Field(default=None, examples=["USD"])
    price_list: str | None = Field(default=None, description="the price list the account is billed from")
    sleep_since: float | None = Field(default=None, description="when the account entered sleep mode")
    next_due_at: float | None = Field(default=None, description="the next monthly billing instant")


class Convergence(Model):
    converged: list[str]
    pending: list[str]
    converged_count: int
    pending_count: int


class AccountDetail(Account):
    devices: list[str]
    convergence: Convergence


class DesiredChange(Model):
    device_id: str
    version: int
    mode: str
    published: bool = Field(description="handed to the broker; if false the cloud publishes it within a second")


class Step(Model):
    """A fee taken or a transition made (lifecycle), at its own instant."""

    at: float
    kind: Literal["fee", "transition"]
    cause: str
    balance_cents: int = Field(description="after this step")
    fee: str | None = None
    amount_cents: int = 0
    old_state: str | None = None
    new_state: str | None = None


class Notification(Model):
    """An essential notification (cannot be muted)."""

    id: int
    account_id: int
    device_id: str | None
    kind: str
    text: str
    at: float


class AccountChange(Model):
    account: Account
    old_state: str | None
    state_changed: bool
    desired: list[DesiredChange]
    steps: list[Step] = Field(default_factory=list, description="fees and transitions, oldest first")
    notifications: list[Notification] = Field(default_factory=list)


class DeviceAdd(Model):
    device_id: str = Field(examples=["dev-1"])
    serial: str | None = Field(default=None, max_length=64)


# --- devices ------------------------------------------------------------------------------


class Heartbeat(Model):
    at: float | None
    seq: int | None
    fw: str | None
    uptime_s: int | None
    mode: str | None
    desired_version: int | None
    flags: int | None
    temperature_c: float | None
    signal_dbm: int | None
    free_heap: int | None
    interval_s: float | None


class DeviceStatus(Model):
    device_id: str
    status: str = Field(description="unknown, online, offline or dormant")
    online: bool
    status_at: float | None
    status_reason: str | None
    last_seen: float | None
    hb_count: int
    heartbeat: Heartbeat | None


class Device(DeviceStatus):
    account_id: int | None
    serial: str | None
    created: float
    desired_version: int | None
    desired_mode: str | None
    desired_published_at: float | None
    applied_version: int
    applied_at: float | None
    converged: bool


class DesiredState(Model):
    device_id: str
    version: int | None = Field(description="None: no desired state stored yet")
    mode: str | None
    created: float | None
    published_at: float | None
    applied_version: int
    converged: bool


# --- commands -----------------------------------------------------------------------------


class CommandIn(Model):
    op: Literal["relay", "status", "reboot"]
    arg: str | None = Field(default=None, description="relay: on, off or toggle; other ops take none")
    exp: int | None = Field(default=None, ge=0, description="Unix seconds after which the unit ignores it")
    wait: float = Field(default=0, ge=0, le=30, description="seconds to wait for the unit's ack before answering")


class Ack(Model):
    ok: bool
    err: str | None
    res: dict[str, Any] | None
    at: float


class Command(Model):
    id: str
    device_id: str
    op: str
    arg: str | None
    exp: int | None
    sent_at: float
    acked: bool
    ack: Ack | None


# --- events, audit, tokens ----------------------------------------------------------------


class Event(Model):
    id: int
    at: float
    kind: str
    account_id: int | None
    device_id: str | None
    detail: dict[str, Any]


class AuditEntry(Model):
    id: int
    at: float
    actor: str = Field(description="token name, or local:<user> for the bootstrap command")
    token_id: int | None
    role: str | None
    action: str
    target_type: str
    target_id: str | None
    account_id: int | None
    via: str | None = Field(description="how the change came in, e.g. POST /v1/accounts/3/topup")
    before: Any
    after: Any
    detail: dict[str, Any] | None


class TokenCreate(Model):
    name: str = Field(min_length=1, max_length=100, examples=["bench-line-2"])
    role: RoleName


class Token(Model):
    id: int
    name: str
    role: RoleName
    key: str = Field(description="public part of the token (sst_<key>_…), safe to show")
    created: float
    created_by: str | None
    last_used: float | None
    revoked: float | None


class TokenCreated(Token):
    token: str = Field(description="the token itself; shown only in this response, store it now")


# --- account lifecycle --------------------------------------------------------------------


class DeleteIn(Model):
    signed_notice: bool = Field(default=False, description="the owner's signed notice (needed unless the "
                                                           "account is in deep sleep or eligible for deletion)")


class DelinkIn(Model):
    signed_application: bool = Field(default=False, description="the owner's signed application (seed 9.4)")


class ReopenIn(Model):
    name: str = Field(min_length=1, max_length=100, description="name of the new account")
    device_ids: list[str] | None = Field(default=None, description="devices to take over (default: all)")


class FeatureIn(Model):
    feature: str = Field(examples=["sms"])


class FeatureQuote(Model):
    feature: str
    title: str
    monthly_cents: int
    currency: str
    first_billed_at: float
    next_bill_cents: int
    next_bill_without_cents: int
    cancellable_from: float


class FeatureAdded(Model):
    change: AccountChange
    quote: FeatureQuote


class LedgerEntry(Model):
    id: int
    account_id: int
    at: float
    kind: str
    amount_cents: int
    balance_cents: int
    device_id: str | None
    detail: dict[str, Any]


class TickResult(Model):
    changes: list[AccountChange] = Field(description="the accounts the tick billed or moved")


# --- factory registration (cloud_stub/units.py, docs/bench.md) ---------------------------


class UnitRegister(Model):
    uid: str = Field(min_length=1, max_length=64, description="MCU unique id / MAC, hex", examples=["a4cf12b3c4d5"])
    imei: str = Field(min_length=1, max_length=32, description="modem IMEI (15 digits, Luhn)")
    iccid: str = Field(min_length=1, max_length=32, description="SIM ICCID (18-20 digits, 89…, Luhn)")
    station: str = Field(min_length=1, max_length=200, description="bench station name")
    operator: str = Field(min_length=1, max_length=200, description="who runs the bench")
    bundle_hash: str | None = Field(default=None, max_length=200, description="firmware bundle hash on the unit")
    rotate: bool = Field(default=False, description="issue new credentials even if the unit holds confirmed "
                                                    "ones (the old ones are revoked at once)")

    @field_validator("uid", "imei", "iccid", mode="after")
    @classmethod
    def _hardware_id(cls, v: str, info: Any) -> str:
        from cloud_stub import serials

        check = {"uid": serials.check_uid, "imei": serials.check_imei, "iccid": serials.check_iccid}[info.field_name]
        try:
            return check(v)
        except serials.SerialError as exc:
            raise ValueError(str(exc)) from None


class UnitCredentials(Model):
    mqtt_user: str
    mqtt_pass: str = Field(description="plaintext, in this response only (the cloud keeps its hash)")


class UnitStep(Model):
    id: int
    step: str
    ok: bool
    detail: dict[str, Any] | None = None
    station: str | None = None
    operator: str | None = None
    bundle_hash: str | None = None
    at: float


class Unit(Model):
    serial: str
    device_id: str | None
    status: Literal["allocated", "credentials_issued", "registered", "verified", "failed", "void"]
    uid: str
    imei: str
    iccid: str
    bundle_hash: str | None = None
    station: str
    operator: str
    created: float
    updated: float
    credentials_at: float | None = None
    credentials_confirmed_at: float | None = None
    registered_at: float | None = None
    verified_at: float | None = None
    void_at: float | None = None
    void_reason: str | None = None
    steps: list[UnitStep] = Field(default_factory=list, description="every step result, oldest first")


class UnitRegistration(Model):
    serial: str
    device_id: str
    mqtt_user: str = Field(description="the unit's MQTT username (= device_id)")
    created: bool = Field(description="true: a new serial was allocated; false: these hardware ids already had it")
    rotated: bool = Field(default=False, description="the unit's earlier credentials were revoked for these")
    credentials: UnitCredentials | None = Field(description="new credentials, or null: the unit already holds "
                                                            "confirmed ones (read its identity back to check)")
    unit: Unit


class UnitResult(Model):
    step: Literal["flash", "register", "verify", "label"]
    ok: bool
    detail: dict[str, Any] | None = Field(default=None, description="free-form facts: error, durations, …")
    station: str | None = Field(default=None, max_length=200)
    operator: str | None = Field(default=None, max_length=200)
    bundle_hash: str | None = Field(default=None, max_length=200)


class UnitVoid(Model):
    reason: str = Field(min_length=1, max_length=200, description="why the unit will never ship")
