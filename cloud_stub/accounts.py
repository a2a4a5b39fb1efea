"""Prepaid accounts and the desired mode they give their devices (seed 003, 9.2–9.4).

Three layers:

- pure rules: `lifecycle` (states, time-driven transitions, fees), `pricing` (price
  lists), `notifications` (texts), plus `parse_amount` / `format_cents` here. No I/O;
- `Accounts`: applies them to the registry, one transaction per operation. Every
  operation first catches the account up to "now" (every fee and transition that fell
  due since it was last touched, each at its own instant), then does its own work,
  then stores the account's lifecycle, the ledger rows, an event per step (with its
  cause), a notification per transition and a new desired-state version for every
  linked device per transition. After the commit it hands the new desired states to a
  `publish` callback (the MQTT side; `None` leaves them for `Cloud` to publish).
- `tick(now)` does the catching-up for every account that has something due (an
  indexed `next_due_at` column says which), so a running cloud applies billing and
  time-driven transitions on its own. Ticking twice for one instant changes nothing.

Money is integer cents in the account's currency. Concurrency: each operation is one
`BEGIN IMMEDIATE` transaction that re-reads the account inside it, so concurrent top-ups,
charges and ticks (threads or processes) serialise and the balance stays exact.

The rules and every choice where the seed is silent are in docs/accounts.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from cloud_stub import lifecycle, notifications, pricing, protocol
from cloud_stub.lifecycle import (
    AccountState,
    Billable,
    Lifecycle,
    LifecycleError,
    Step,
    mode_for_state,
    state_for_balance,
)
from cloud_stub.notifications import Notification
from cloud_stub.pricing import PriceList, PricingError
from cloud_stub.registry import NotFound, Registry, RegistryError

Clock = Callable[[], float]

log = logging.getLogger("simsock.accounts")


class AccountError(RegistryError):
    """A request the account rules refuse (bad amount, device on another account, …)."""


# --- pure helpers -------------------------------------------------------------------------


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


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    balance_cents: int
    state: str
    state_since: float
    created: float
    currency: str = pricing.DEFAULT_CURRENCY
    price_list: str = pricing.CURRENT
    sleep_since: float | None = None
    next_due_at: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Account:
        keys = ("id", "name", "balance_cents", "state", "state_since", "created", "currency", "price_list",
                "sleep_since", "next_due_at")
        return cls(**{k: row[k] for k in keys if k in row})

    @property
    def mode(self) -> str:
        return mode_for_state(self.state)

    @property
    def prices(self) -> PriceList:
        return pricing.price_list(self.currency, self.price_list)

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
    """What one account operation did: the account after it, the transitions and fees it
    applied (`steps`, oldest first), the notifications it wrote, what to publish."""

    account: Account
    old_state: str | None
    desired: list[Desired] = field(default_factory=list)
    published: list[Desired] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)

    @property
    def state_changed(self) -> bool:
        return self.old_state != self.account.state

    @property
    def transitions(self) -> list[tuple[str, str, str]]:
        """(from, to, cause) of every transition, oldest first."""
        return [(s.old_state or "", s.new_state or "", s.cause) for s in self.steps if s.kind == "transition"]


# publish(desired) -> True once the broker client took it; False/exception leaves it unpublished
Publisher = Callable[[Desired], bool]


def _lifecycle(row: dict[str, Any]) -> Lifecycle:
    return Lifecycle(
        state=row["state"],
        state_since=row["state_since"],
        balance_cents=row["balance_cents"],
        billing_anchor=row.get("billing_anchor") if row.get("billing_anchor") is not None else row["created"],
        bill_month=row.get("bill_month") or 0,
        sleep_since=row.get("sleep_since"),
        sleep_month=row.get("sleep_month") or 0,
    )


class _Op:
    """One account inside one transaction: its lifecycle, and what the operation did to it."""

    def __init__(self, reg: Registry, row: dict[str, Any], now: float) -> None:
        self.reg = reg
        self.row = row
        self.id: int = row["id"]
        self.now = now
        self.lc = _lifecycle(row)
        self.old_state = row["state"]
        self.prices = pricing.price_list(row.get("currency") or pricing.DEFAULT_CURRENCY,
                                         row.get("price_list") or pricing.CURRENT)
        self.steps: list[Step] = []
        self.desired: dict[str, Desired] = {}
        self.notes: list[int] = []

    # --- reading -----------------------------------------------------------------------

    def linked(self) -> list[str]:
        return self.reg.device_ids(self.id)

    def billable(self) -> Billable:
        feats = tuple((f["feature"], f["monthly_cents"]) for f in self.reg.features(self.id))
        return Billable(len(self.linked()), self.prices.plan_fee_cents, self.prices.sleep_fee_cents, feats)

    def facts(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.row["name"], "currency": self.prices.currency, "balance_cents": self.lc.balance_cents,
                **extra}

    # --- writing -----------------------------------------------------------------------

    def catch_up(self) -> None:
        self.lc, steps = lifecycle.advance(self.lc, self.billable(), self.now)
        self.record(steps)

    def move(self, delta: int, kind: str, cause: str, **detail: Any) -> None:
        """Put money in (delta > 0) or take it out, with a ledger row, then the balance rule."""
        lc, steps = lifecycle.move(self.lc, delta, self.now, cause)
        self.reg.add_ledger(self.id, self.now, kind, delta, lc.balance_cents, device_id=detail.get("device_id"),
                            detail=detail or None)
        self.lc = lc
        self.record(steps)

    def record(self, steps: list[Step]) -> None:
        """Store each step: ledger + event for a fee; event, notification, desired states for a transition."""
        for s in steps:
            self.steps.append(s)
            if s.kind == "fee":
                assert s.fee is not None
                self.reg.add_ledger(self.id, s.at, s.fee, -s.amount_cents, s.balance_cents, detail=s.detail)
                self.reg.add_event("account.fee", s.at, account_id=self.id,
                                   detail={"fee": s.fee, "amount_cents": s.amount_cents,
                                           "balance_cents": s.balance_cents, "cause": s.cause, **s.detail})
                continue
            assert s.new_state is not None
            event_id = self.reg.add_event(
                "account.state", s.at, account_id=self.id,
                detail={"from": s.old_state, "to": s.new_state, "cause": s.cause, "balance_cents": s.balance_cents,
                        **s.detail})
            self.notify(f"account.{s.new_state}", s.at, event_id=event_id, cause=s.cause,
                        balance_cents=s.balance_cents, state_since=s.at)
            self.publish_mode(mode_for_state(s.new_state), s.at, cause=f"account.{s.new_state}")

    def notify(self, kind: str, at: float, *, event_id: int | None = None, device_id: str | None = None,
               balance_cents: int | None = None, state_since: float | None = None, **facts: Any) -> None:
        p = self.prices
        since = state_since if state_since is not None else self.lc.state_since
        sleep_since = self.lc.sleep_since if self.lc.sleep_since is not None else since
        text = notifications.render(
            kind,
            **{**self.facts(), "balance_cents": self.lc.balance_cents if balance_cents is None else balance_cents},
            min_top_up_cents=p.min_top_up_cents,
            sleep_fee_cents=p.sleep_fee_cents,
            restore_fee_cents=p.restore_fee_cents,
            new_account_fee_cents=p.new_account_fee_cents,
            sleep_at=since + lifecycle.SUSPENDED_DAYS * lifecycle.DAY_S,
            deletion_at=lifecycle.add_months(sleep_since, lifecycle.SLEEP_MONTHS + lifecycle.DEEP_SLEEP_MONTHS),
            devices=len(self.linked()),
            device_id=device_id,
            **facts,
        )
        self.notes.append(self.reg.add_notification(self.id, kind, text, at, device_id=device_id, event_id=event_id))

    def publish_mode(self, mode: str, at: float, *, cause: str, devices: list[str] | None = None) -> None:
        """A new desired-state version for every linked device (or `devices`)."""
        for device_id in self.linked() if devices is None else devices:
            d = self.reg.put_desired(device_id, mode, at)
            self.desired[device_id] = Desired(device_id, d["version"], d["mode"])
            self.reg.add_event("desired.set", at, account_id=self.id, device_id=device_id,
                               detail={"v": d["version"], "mode": d["mode"], "cause": cause})

    def save(self) -> None:
        lc = self.lc
        self.reg.set_account_fields(
            self.id, balance_cents=lc.balance_cents, state=lc.state, state_since=lc.state_since,
            billing_anchor=lc.billing_anchor, bill_month=lc.bill_month, sleep_since=lc.sleep_since,
            sleep_month=lc.sleep_month, next_due_at=lifecycle.next_due(lc))


def _refuse(exc: Exception) -> AccountError:
    return AccountError(str(exc))


class Accounts:
    def __init__(self, registry: Registry, publish: Publisher | None = None, clock: Clock = time.time) -> None:
        self.registry = registry
        self.publish = publish
        self.clock = clock

    # --- reading ---------------------------------------------------------------------------

    def get(self, ref: int | str) -> Account:
        return Account.from_row(self.registry.find_account(ref))

    def list_accounts(self) -> list[Account]:
        return [Account.from_row(r) for r in self.registry.accounts()]

    def prices(self, ref: int | str) -> PriceList:
        """The price list the account is billed from (fixed when it was opened)."""
        return self.get(ref).prices

    def ledger(self, ref: int | str) -> list[dict[str, Any]]:
        """Every money movement of the account, oldest first (amount_cents signed, balance after)."""
        return self.registry.ledger(self.get(ref).id)

    def notifications(self, ref: int | str) -> list[Notification]:
        """The account's essential notifications, oldest first (there is no mute: see notifications.py)."""
        return [Notification.from_row(r) for r in self.registry.notifications(account_id=self.get(ref).id)]

    def features(self, ref: int | str) -> list[dict[str, Any]]:
        return self.registry.features(self.get(ref).id)

    # --- the core: one operation in one transaction ------------------------------------

    def _run(self, account_ref: int | str, action: Callable[[_Op], Any] | None = None,
             now: float | None = None, *, publish: bool = True) -> tuple[Change, Any]:
        now = self.clock() if now is None else now
        result = None
        try:
            with self.registry.transaction() as reg:
                op = _Op(reg, reg.find_account(account_ref), now)
                if op.lc.state != AccountState.DELETED:
                    op.catch_up()
                if action is not None:
                    result = action(op)
                op.save()
                after = Account.from_row(reg.find_account(op.id))
                notes = [Notification.from_row(r) for r in reg.notifications(account_id=op.id,
                                                                              after_id=min(op.notes) - 1)
                         if r["id"] in op.notes] if op.notes else []
        except (LifecycleError, PricingError) as exc:
            raise _refuse(exc) from None
        desired = list(op.desired.values())
        change = Change(after, op.old_state, desired, self._publish(desired) if publish else [], op.steps, notes)
        return change, result

    # --- accounts and devices ------------------------------------------------------------

    def create(self, name: str, balance_cents: int = 0, currency: str = pricing.DEFAULT_CURRENCY) -> Account:
        """Open an account (prices: the current list in `currency`); a positive balance makes it active.

        The opening instant is the billing anchor: the plan fee is taken one calendar month
        later and monthly after that.
        """
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise AccountError(f"bad account name {name!r} (1-100 printable characters)")
        if name.isdigit():
            raise AccountError(f"account name {name!r} cannot be all digits (digits mean an account id)")
        if not isinstance(balance_cents, int) or isinstance(balance_cents, bool) or balance_cents < 0:
            raise AccountError(f"opening balance must be a number of cents >= 0, got {balance_cents!r}")
        try:
            prices = pricing.price_list(currency)
        except PricingError as exc:
            raise _refuse(exc) from None
        now = self.clock()
        state = state_for_balance(None, balance_cents)
        lc = Lifecycle(state.value, now, balance_cents, billing_anchor=now, bill_month=1)
        with self.registry.transaction() as reg:
            account_id = reg.insert_account(name, balance_cents, state.value, now)
            reg.set_account_fields(account_id, currency=prices.currency, price_list=prices.id, billing_anchor=now,
                                   bill_month=1, sleep_since=None, sleep_month=0,
                                   next_due_at=lifecycle.next_due(lc))
            if balance_cents:
                reg.add_ledger(account_id, now, "opening", balance_cents, balance_cents)
            reg.add_event("account.created", now, account_id=account_id,
                          detail={"name": name, "balance_cents": balance_cents, "state": state.value,
                                  "currency": prices.currency, "price_list": prices.id})
        return self.get(account_id)

    def add_device(self, account_ref: int | str, device_id: str, serial: str | None = None) -> Change:
        """Put a device (new or unassigned) on an account and give it the account's mode.

        Billed from the account's next billing anniversary on (no proration)."""
        try:
            protocol.check_device_id(device_id)
        except protocol.ProtocolError as exc:
            raise AccountError(str(exc)) from None

        def act(op: _Op) -> None:
            name = op.row["name"]
            if op.lc.state == AccountState.DELETED:
                raise AccountError(f"account {name} is deleted; devices cannot be added to it")
            row = op.reg.device_row(device_id)
            if row is not None and row["account_id"] is not None:
                if row.get("delinked_at") is not None:
                    raise AccountError(self._delinked_message(op.reg, row))
                if row["account_id"] == op.id:
                    raise AccountError(f"device {device_id} is already on account {name}")
                raise AccountError(f"device {device_id} belongs to another account (id {row['account_id']})")
            op.reg.ensure_device(device_id, op.now)
            op.reg.assign_device(device_id, op.id, serial)
            op.publish_mode(mode_for_state(op.lc.state), op.now, cause="device.added", devices=[device_id])
            d = op.desired[device_id]
            op.reg.add_event("device.added", op.now, account_id=op.id, device_id=device_id,
                             detail={"serial": serial, "desired": {"v": d.version, "mode": d.mode}})

        return self._run(account_ref, act)[0]

    @staticmethod
    def _delinked_message(reg: Registry, row: dict[str, Any]) -> str:
        owner = reg.account(row["account_id"]) or {}
        if owner.get("state") == AccountState.DELETED:
            return (f"device {row['device_id']} belonged to the deleted account {owner.get('name')}; "
                    "use a new account for the devices of a deleted one (reopen)")
        return (f"device {row['device_id']} is delinked from account {owner.get('name')}; "
                "restore it there (restore_device) instead")

    # --- money ---------------------------------------------------------------------------

    def charge(self, account_ref: int | str, amount_cents: int, reason: str | None = None) -> Change:
        """Take a one-time amount from the balance (may go negative); at or below zero an active
        account is suspended."""
        cents = self._positive(amount_cents)

        def act(op: _Op) -> None:
            self._not_deleted(op)
            op.move(-cents, "charge", lifecycle.CAUSE_CHARGE, reason=reason)
            op.reg.add_event("account.charge", op.now, account_id=op.id,
                             detail={"amount_cents": cents, "balance_cents": op.lc.balance_cents, "reason": reason})

        return self._run(account_ref, act)[0]

    def top_up(self, account_ref: int | str, amount_cents: int, reason: str | None = None) -> Change:
        """Add money (at least the price list's minimum top-up, seed 9.3). A balance above zero
        afterwards makes the account active at once, from suspended, sleep, deep sleep or
        deletion-eligible."""
        cents = self._positive(amount_cents)

        def act(op: _Op) -> None:
            self._not_deleted(op)
            lifecycle.check_top_up(cents, op.prices.min_top_up_cents)
            op.move(cents, "top_up", lifecycle.CAUSE_TOP_UP, reason=reason)
            op.reg.add_event("account.topup", op.now, account_id=op.id,
                             detail={"amount_cents": cents, "balance_cents": op.lc.balance_cents, "reason": reason})

        return self._run(account_ref, act)[0]

    @staticmethod
    def _positive(amount_cents: int) -> int:
        if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
            raise AccountError(f"amount must be a positive number of cents, got {amount_cents!r}")
        return amount_cents

    @staticmethod
    def _not_deleted(op: _Op) -> None:
        if op.lc.state == AccountState.DELETED:
            raise AccountError(f"account {op.row['name']} is deleted; a deleted account cannot be restored")

    # --- time ----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[Change]:
        """Apply every fee and time-driven transition due at or before `now` (default: the clock),
        for every account, each account in its own transaction. Idempotent: a second tick for
        the same instant finds nothing due and changes nothing. Returns the changes that did
        something."""
        now = self.clock() if now is None else now
        changes = []
        for account_id in self.registry.due_account_ids(now):
            try:
                change, _ = self._run(account_id, None, now)
            except Exception:  # one broken account must not stop the others' billing
                log.exception("lifecycle tick failed for account %s", account_id)
                continue
            if change.steps:
                changes.append(change)
        return changes

    run_lifecycle = tick

    def enter_sleep(self, account_ref: int | str) -> Change:
        """The customer asks for sleep mode now (only from `suspended`, never with a positive balance)."""

        def act(op: _Op) -> None:
            self._not_deleted(op)
            lc, steps = lifecycle.enter_sleep(op.lc, op.now)
            op.lc = lc
            op.record(steps)
            op.catch_up()  # the entry fee

        return self._run(account_ref, act)[0]

    def delete(self, account_ref: int | str, *, signed_notice: bool = False) -> Change:
        """Delete the account on request: `deleted` for good, every linked device `delinked`.

        Outside deep sleep (and deletion-eligible) the owner's written signed notice is
        required (seed 9.4): pass `signed_notice=True` once it is received. The balance is
        not refunded (seed 9.3)."""

        def act(op: _Op) -> None:
            devices = op.linked()
            lc, steps = lifecycle.delete(op.lc, op.now, signed_notice=signed_notice)
            op.lc = lc
            event_id = op.reg.add_event(
                "account.state", op.now, account_id=op.id,
                detail={"from": steps[0].old_state, "to": lc.state, "cause": steps[0].cause,
                        "balance_cents": lc.balance_cents, "signed_notice": signed_notice, "devices": devices})
            op.steps.extend(steps)
            op.notify("account.deleted", op.now, event_id=event_id, cause=steps[0].cause)
            for device_id in devices:
                op.reg.set_delinked(device_id, op.now)
                op.reg.add_event("device.delinked", op.now, account_id=op.id, device_id=device_id,
                                 detail={"cause": "account.deleted"})
            op.publish_mode("delinked", op.now, cause="account.deleted", devices=devices)

        return self._run(account_ref, act)[0]

    # --- delinking one device ------------------------------------------------------------

    def delink_device(self, account_ref: int | str, device_id: str, *, signed_application: bool = False) -> Change:
        """Remove one device from the service (seed 9.4): it gets desired mode `delinked`, leaves
        billing and the account's state changes; the other devices keep running. Needs the
        owner's signed application; not for the last linked device (delete the account)."""

        def act(op: _Op) -> None:
            self._not_deleted(op)
            linked = op.linked()
            if device_id not in linked:
                row = op.reg.device_row(device_id)
                if row is not None and row["account_id"] == op.id:
                    raise AccountError(f"device {device_id} is already delinked")
                raise AccountError(f"device {device_id} is not on account {op.row['name']}")
            if not signed_application:
                raise AccountError("removing a device from the service needs the owner's signed application "
                                   "(seed 9.4); pass signed_application once it is received")
            if len(linked) == 1:
                raise AccountError(f"device {device_id} is the only device on account {op.row['name']}: "
                                   "delete the account to leave the service")
            op.reg.set_delinked(device_id, op.now)
            until = lifecycle.restore_deadline(op.now)
            event_id = op.reg.add_event("device.delinked", op.now, account_id=op.id, device_id=device_id,
                                        detail={"cause": lifecycle.CAUSE_REQUESTED, "restore_until": until})
            op.publish_mode("delinked", op.now, cause="device.delinked", devices=[device_id])
            op.notify("device.delinked", op.now, event_id=event_id, device_id=device_id, restore_until=until)

        return self._run(account_ref, act)[0]

    def restore_device(self, account_ref: int | str, device_id: str) -> Change:
        """Link a delinked device again, within a year of delinking, for the restore fee (charged
        to the balance: it may suspend the account). After a year: refused."""

        def act(op: _Op) -> None:
            self._not_deleted(op)
            row = op.reg.device_row(device_id)
            if row is None or row["account_id"] != op.id:
                raise AccountError(f"device {device_id} was never on account {op.row['name']}")
            if row.get("delinked_at") is None:
                raise AccountError(f"device {device_id} is not delinked")
            lifecycle.check_restore(row["delinked_at"], op.now)
            fee = op.prices.restore_fee_cents
            op.reg.set_delinked(device_id, None)
            event_id = op.reg.add_event("device.restored", op.now, account_id=op.id, device_id=device_id,
                                        detail={"fee_cents": fee, "delinked_at": row["delinked_at"]})
            before = op.lc.state
            op.move(-fee, "restore_fee", lifecycle.CAUSE_RESTORE_FEE, device_id=device_id)
            if op.lc.state == before:  # a transition already published to every linked device
                op.publish_mode(mode_for_state(op.lc.state), op.now, cause="device.restored", devices=[device_id])
            op.notify("device.restored", op.now, event_id=event_id, device_id=device_id)

        return self._run(account_ref, act)[0]

    def reopen(self, deleted_ref: int | str, name: str, device_ids: list[str] | None = None) -> Change:
        """A new account for devices of a deleted one (seed 9.4: "a new account for a handling-fee …
        per device"). The fee is charged on the new account, which therefore starts suspended
        until a top-up brings its balance above zero. Same currency; today's price list."""
        now = self.clock()
        old = self.get(deleted_ref)
        if old.state != AccountState.DELETED:
            raise AccountError(f"account {old.name} is not deleted ({old.state}); only a deleted account's "
                               "devices go to a new account this way")
        mine = [d["device_id"] for d in self.registry.delinked_devices(old.id)]
        devices = mine if device_ids is None else device_ids
        for d in devices:
            if d not in mine:
                raise AccountError(f"device {d} was not on the deleted account {old.name}")
        if not devices:
            raise AccountError(f"the deleted account {old.name} has no devices to move")

        def act(op: _Op) -> None:
            fee = op.prices.new_account_fee_cents * len(devices)
            for d in devices:
                row = op.reg.device_row(d)
                if row is None or row["account_id"] != old.id or row.get("delinked_at") is None:
                    raise AccountError(f"device {d} is no longer on the deleted account {old.name}")
                op.reg.assign_device(d, op.id, None)
                op.reg.set_delinked(d, None)
                op.reg.add_event("device.added", op.now, account_id=op.id, device_id=d,
                                 detail={"from_deleted_account": old.id})
            op.move(-fee, "new_account_fee", lifecycle.CAUSE_CHARGE, devices=len(devices), from_account=old.id)
            op.publish_mode(mode_for_state(op.lc.state), op.now, cause="account.reopened", devices=devices)

        with self.registry.transaction():  # one transaction: no empty new account if a check fails
            new = self.create(name, 0, old.currency)
            change = self._run(new.id, act, now, publish=False)[0]
        return Change(change.account, None, change.desired, self._publish(change.desired), change.steps,
                      change.notifications)

    # --- features ------------------------------------------------------------------------

    def quote_feature(self, account_ref: int | str, feature: str) -> dict[str, Any]:
        """What adding `feature` costs, before adding it (seed 9.3: pricing and a calculation
        shown before submitting)."""
        with self.registry.transaction() as reg:
            op = _Op(reg, reg.find_account(account_ref), self.clock())
            return self._quote(op, feature)

    def _quote(self, op: _Op, feature: str) -> dict[str, Any]:
        try:
            f = op.prices.feature(feature)
        except PricingError as exc:
            raise _refuse(exc) from None
        b = op.billable()
        plan = b.devices * b.plan_fee_cents + sum(c for _, c in b.features)
        first = lifecycle.add_months(op.lc.billing_anchor, op.lc.bill_month or
                                     lifecycle.first_anniversary_after(op.lc.billing_anchor, op.now))
        return {"feature": f.name, "title": f.title, "monthly_cents": f.monthly_cents,
                "currency": op.prices.currency, "first_billed_at": first,
                "next_bill_cents": plan + f.monthly_cents, "next_bill_without_cents": plan,
                "cancellable_from": lifecycle.feature_cancellable_from(op.now)}

    def add_feature(self, account_ref: int | str, feature: str) -> tuple[Change, dict[str, Any]]:
        """Add a feature at once (active accounts); billed monthly with the plan from the next
        billing anniversary, at today's price for as long as the account keeps it."""

        def act(op: _Op) -> dict[str, Any]:
            self._not_deleted(op)
            if op.lc.state != AccountState.ACTIVE:
                raise AccountError(f"features can be added to an active account only; this one is {op.lc.state}")
            if any(f["feature"] == feature for f in op.reg.features(op.id)):
                raise AccountError(f"feature {feature} is already on account {op.row['name']}")
            quote = self._quote(op, feature)
            op.reg.insert_feature(op.id, feature, quote["monthly_cents"], op.now)
            op.reg.add_event("feature.added", op.now, account_id=op.id, detail=quote)
            return quote

        return self._run(account_ref, act)

    def cancel_feature(self, account_ref: int | str, feature: str) -> Change:
        """Cancel a feature: only after one calendar month of use (seed 9.3)."""

        def act(op: _Op) -> None:
            self._not_deleted(op)
            rows = [f for f in op.reg.features(op.id) if f["feature"] == feature]
            if not rows:
                raise AccountError(f"feature {feature} is not on account {op.row['name']}")
            lifecycle.check_feature_cancel(rows[0]["added_at"], op.now)
            op.reg.cancel_feature(rows[0]["id"], op.now)
            op.reg.add_event("feature.cancelled", op.now, account_id=op.id,
                             detail={"feature": feature, "added_at": rows[0]["added_at"]})

        return self._run(account_ref, act)[0]

    # --- publishing ----------------------------------------------------------------------

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
