"""Prepaid accounts and the desired mode they give their devices (seed 003, 9.2–9.4).

Two layers:

- pure rules (`state_for_balance`, `mode_for_state`, `parse_amount`, `format_cents`): no
  I/O, no clock, easy to test and to grow;
- `Accounts`: applies them to the registry in one transaction per operation, writes an
  event for each change, and after the commit hands every new desired state to a
  `publish` callback (the MQTT side; `None` leaves them for `Cloud` to publish).

Step 1 implements the balance rule only: balance <= 0 -> `suspended`, balance > 0 ->
`active` (from any state, as a top-up does in the seed). The time-driven lifecycle
(`sleep` after 15 days suspended, `deep_sleep` after 12 months, deletion eligibility
after 12 more, monthly sleep fees) belongs in a `tick(now)` here, driven by the same
injectable `clock`; the states already exist in the schema and in `mode_for_state`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from cloud_stub import protocol
from cloud_stub.registry import NotFound, Registry, RegistryError

Clock = Callable[[], float]


class AccountError(RegistryError):
    """A request the account rules refuse (bad amount, device on another account, …)."""


class AccountState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    SLEEP = "sleep"
    DEEP_SLEEP = "deep_sleep"
    DELETION_ELIGIBLE = "deletion_eligible"


_MODE_FOR_STATE = {
    AccountState.ACTIVE: "active",
    AccountState.SUSPENDED: "suspended",
    AccountState.SLEEP: "sleep",
    AccountState.DEEP_SLEEP: "deep_sleep",
    AccountState.DELETION_ELIGIBLE: "deep_sleep",
}


# --- pure rules ---------------------------------------------------------------------------


def mode_for_state(state: str) -> str:
    """The device mode an account state asks of every unit on the account."""
    return _MODE_FOR_STATE[AccountState(state)]


def state_for_balance(state: str | None, balance_cents: int) -> AccountState:
    """The account state after the balance became `balance_cents` (None: a new account).

    A positive balance makes any state `active` (a top-up re-activates at once, 9.4); a
    balance at or below zero suspends an active account and leaves a suspended/sleeping
    one where it is (its lifecycle clock keeps running).
    """
    if balance_cents > 0:
        return AccountState.ACTIVE
    if state is None or state == AccountState.ACTIVE:
        return AccountState.SUSPENDED
    return AccountState(state)


def parse_amount(text: str | int | Decimal, *, allow_zero: bool = False) -> int:
    """'12.50' / '12' / 1250-cents-free input -> integer cents; AccountError for anything else.

    Amounts are written in currency units with at most two decimals. Negative amounts
    are refused: `charge` and `top_up` say which way the money goes.
    """
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise AccountError(f"bad amount {text!r}: expected a number like 12.50") from None
    if not value.is_finite():
        raise AccountError(f"bad amount {text!r}")
    cents = value * 100
    if cents != cents.to_integral_value():
        raise AccountError(f"bad amount {text!r}: at most two decimals")
    if value < 0:
        raise AccountError(f"amount must not be negative, got {text}")
    if value == 0 and not allow_zero:
        raise AccountError("amount must be greater than zero")
    if cents > 10**13:
        raise AccountError(f"amount {text} is too large")
    return int(cents)


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


# --- applying the rules -------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    balance_cents: int
    state: str
    state_since: float
    created: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Account:
        return cls(**{k: row[k] for k in ("id", "name", "balance_cents", "state", "state_since", "created")})

    @property
    def mode(self) -> str:
        return mode_for_state(self.state)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "balance": format_cents(self.balance_cents), "mode": self.mode}


@dataclass(frozen=True)
class Desired:
    device_id: str
    version: int
    mode: str

    def payload(self) -> bytes:
        return protocol.encode_desired(self.version, self.mode)


@dataclass(frozen=True)
class Change:
    """What one account operation did: the account after it, the transition, what to publish."""

    account: Account
    old_state: str | None
    desired: list[Desired] = field(default_factory=list)
    published: list[Desired] = field(default_factory=list)

    @property
    def state_changed(self) -> bool:
        return self.old_state != self.account.state


# publish(desired) -> True once the broker client took it; False/exception leaves it unpublished
Publisher = Callable[[Desired], bool]


class Accounts:
    def __init__(self, registry: Registry, publish: Publisher | None = None, clock: Clock = time.time) -> None:
        self.registry = registry
        self.publish = publish
        self.clock = clock

    def get(self, ref: int | str) -> Account:
        return Account.from_row(self.registry.find_account(ref))

    def list_accounts(self) -> list[Account]:
        return [Account.from_row(r) for r in self.registry.accounts()]

    def create(self, name: str, balance_cents: int = 0) -> Account:
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise AccountError(f"bad account name {name!r} (1-100 printable characters)")
        if name.isdigit():
            raise AccountError(f"account name {name!r} cannot be all digits (digits mean an account id)")
        now = self.clock()
        state = state_for_balance(None, balance_cents)
        with self.registry.transaction() as reg:
            account_id = reg.insert_account(name, balance_cents, state.value, now)
            reg.add_event("account.created", now, account_id=account_id,
                          detail={"name": name, "balance_cents": balance_cents, "state": state.value})
        return self.get(account_id)

    def add_device(self, account_ref: int | str, device_id: str, serial: str | None = None) -> Change:
        """Put a device (new or unassigned) on an account and give it the account's mode."""
        try:
            protocol.check_device_id(device_id)
        except protocol.ProtocolError as exc:
            raise AccountError(str(exc)) from None
        now = self.clock()
        with self.registry.transaction() as reg:
            account = Account.from_row(reg.find_account(account_ref))
            row = reg.device_row(device_id)
            if row is not None and row["account_id"] is not None:
                if row["account_id"] == account.id:
                    raise AccountError(f"device {device_id} is already on account {account.name}")
                raise AccountError(f"device {device_id} belongs to another account (id {row['account_id']})")
            reg.ensure_device(device_id, now)
            reg.assign_device(device_id, account.id, serial)
            d = reg.put_desired(device_id, account.mode, now)
            reg.add_event("device.added", now, account_id=account.id, device_id=device_id,
                          detail={"serial": serial, "desired": {"v": d["version"], "mode": d["mode"]}})
        desired = [Desired(device_id, d["version"], d["mode"])]
        return Change(account, account.state, desired, self._publish(desired))

    def charge(self, account_ref: int | str, amount_cents: int, reason: str | None = None) -> Change:
        return self._move(account_ref, -self._positive(amount_cents), "account.charge", reason)

    def top_up(self, account_ref: int | str, amount_cents: int, reason: str | None = None) -> Change:
        return self._move(account_ref, self._positive(amount_cents), "account.topup", reason)

    @staticmethod
    def _positive(amount_cents: int) -> int:
        if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
            raise AccountError(f"amount must be a positive number of cents, got {amount_cents!r}")
        return amount_cents

    def _move(self, account_ref: int | str, delta: int, kind: str, reason: str | None) -> Change:
        now = self.clock()
        desired: list[Desired] = []
        with self.registry.transaction() as reg:
            before = Account.from_row(reg.find_account(account_ref))
            balance = before.balance_cents + delta
            state = state_for_balance(before.state, balance)
            since = now if state != before.state else before.state_since
            reg.update_account(before.id, balance_cents=balance, state=state.value, state_since=since)
            reg.add_event(kind, now, account_id=before.id,
                          detail={"amount_cents": abs(delta), "balance_cents": balance, "reason": reason})
            if state != before.state:
                reg.add_event("account.state", now, account_id=before.id,
                              detail={"from": before.state, "to": state.value, "balance_cents": balance})
                mode = mode_for_state(state)
                for device_id in reg.device_ids(before.id):
                    d = reg.put_desired(device_id, mode, now)
                    desired.append(Desired(device_id, d["version"], d["mode"]))
                    reg.add_event("desired.set", now, account_id=before.id, device_id=device_id,
                                  detail={"v": d["version"], "mode": d["mode"]})
            after = Account.from_row(reg.find_account(before.id))
        return Change(after, before.state, desired, self._publish(desired))

    def _publish(self, desired: list[Desired]) -> list[Desired]:
        """Hand each desired state to the publisher after the commit; mark the ones it took."""
        done: list[Desired] = []
        if self.publish is None:
            return done
        for d in desired:
            try:
                ok = self.publish(d)
            except Exception:
                ok = False
            if ok:
                self.registry.mark_published(d.device_id, d.version, self.clock())
                done.append(d)
        return done


__all__ = [
    "Account",
    "AccountError",
    "AccountState",
    "Accounts",
    "Change",
    "Clock",
    "Desired",
    "NotFound",
    "format_cents",
    "mode_for_state",
    "parse_amount",
    "state_for_balance",
]
