"""The account lifecycle as pure rules (seed 003, 9.3–9.4): states, time, fees. No I/O, no clock.

An account's lifecycle is a small value (`Lifecycle`): state, since when, balance, where
its billing calendar stands and, while it sleeps, where its sleep calendar stands. The
functions here take one such value plus an instant and return the next value and the
`Step`s that led to it (fees taken, transitions made, each with its instant and cause).
`accounts.Accounts` stores the result; nothing here reads a clock or a database, so the
whole lifecycle can be walked through years in a test without waiting.

Time-driven rules (`advance`):

- `active`: on every billing anniversary (the account's opening instant plus whole
  calendar months, UTC, day clamped to the month's end) the plan fee of every linked
  device and the fee of every feature is taken, in advance for the month that starts.
  A balance at or below zero afterwards suspends the account at that instant.
- `suspended`: nothing is billed; 15 days (exactly 15 × 24 h) after the suspension the
  account enters `sleep`.
- `sleep`: the sleep-mode fee per linked device is taken at entry and on each monthly
  anniversary of the entry; 12 calendar months after entry -> `deep_sleep`, where the
  fee continues; 12 more months -> `deletion_eligible`, where fees stop.

Every due item is applied at its own instant, oldest first, so catching up after a long
gap gives exactly what ticking every second would have given, and applying the same
instant twice changes nothing (`advance(advance(x, t), t) == advance(x, t)`).

Balance rules (`move`): a balance above zero makes any state but `deleted` `active` at
once (a top-up that covers what is owed); at or below zero an active account is
suspended; a suspended or sleeping account stays where it is (its calendar keeps going).
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

DAY_S = 86_400.0
SUSPENDED_DAYS = 15  # 9.4: "will not be billed for next 15 days"
SLEEP_MONTHS = 12  # 9.4: sleep mode "for maximum 12 month"
DEEP_SLEEP_MONTHS = 12  # 9.4: "After 12 months in the Deep Sleep Mode … qualified for deletion"
RESTORE_WINDOW_MONTHS = 12  # 9.4: a delinked device can be restored "within a year"
FEATURE_MIN_MONTHS = 1  # 9.3: cancellation "only possible after a one calendar month of their usage"


class LifecycleError(ValueError):
    """An operation the lifecycle rules refuse (with a message a customer can read)."""


class AccountState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    SLEEP = "sleep"
    DEEP_SLEEP = "deep_sleep"
    DELETION_ELIGIBLE = "deletion_eligible"
    DELETED = "deleted"


_MODE_FOR_STATE = {
    AccountState.ACTIVE: "active",
    AccountState.SUSPENDED: "suspended",
    AccountState.SLEEP: "sleep",
    AccountState.DEEP_SLEEP: "deep_sleep",
    AccountState.DELETION_ELIGIBLE: "deep_sleep",
    AccountState.DELETED: "delinked",  # a deleted account has no linked devices left
}

# causes recorded with every transition (events.detail.cause, notifications)
CAUSE_TOP_UP = "top_up"
CAUSE_CHARGE = "charge"
CAUSE_BILLING = "billing"
CAUSE_SUSPENDED_15_DAYS = "suspended_15_days"
CAUSE_SLEEP_12_MONTHS = "sleep_12_months"
CAUSE_DEEP_SLEEP_12_MONTHS = "deep_sleep_12_months"
CAUSE_REQUESTED = "requested"
CAUSE_RESTORE_FEE = "restore_fee"


def mode_for_state(state: str) -> str:
    """The device mode an account state asks of every linked unit on the account."""
    return _MODE_FOR_STATE[AccountState(state)]


def state_for_balance(state: str | None, balance_cents: int) -> AccountState:
    """The account state after the balance became `balance_cents` (None: a new account).

    A positive balance makes any state `active` (a top-up re-activates at once, 9.4); a
    balance at or below zero suspends an active account and leaves a suspended/sleeping
    one where it is (its lifecycle clock keeps running). `deleted` never changes.
    """
    if state == AccountState.DELETED:
        return AccountState.DELETED
    if balance_cents > 0:
        return AccountState.ACTIVE
    if state is None or state == AccountState.ACTIVE:
        return AccountState.SUSPENDED
    return AccountState(state)


# --- calendar -----------------------------------------------------------------------------


def add_months(ts: float, months: int) -> float:
    """`ts` plus whole calendar months in UTC; the day is clamped to the target month's end
    (Jan 31 + 1 month = Feb 28/29). Always computed from the anchor, so no drift."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return d.replace(year=year, month=month, day=day).timestamp()


def first_anniversary_after(anchor: float, t: float) -> int:
    """The smallest k >= 1 with add_months(anchor, k) > t."""
    a, b = dt.datetime.fromtimestamp(anchor, dt.UTC), dt.datetime.fromtimestamp(t, dt.UTC)
    k = max(1, (b.year - a.year) * 12 + (b.month - a.month) - 1)
    while add_months(anchor, k) <= t:
        k += 1
    while k > 1 and add_months(anchor, k - 1) > t:
        k -= 1
    return k


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lifecycle:
    """The lifecycle-relevant part of an account.

    bill_month: index k of the next billing anniversary, due at add_months(billing_anchor, k)
    (0 = not scheduled yet: an account from before this module; scheduled at the first
    anniversary after the next tick, nothing billed backwards). sleep_since: when the
    account entered sleep (None unless sleep/deep_sleep). sleep_month: index m of the next
    sleep fee, due at add_months(sleep_since, m); the fee at m = 0 is the entry fee.
    """

    state: str
    state_since: float
    balance_cents: int
    billing_anchor: float
    bill_month: int = 1
    sleep_since: float | None = None
    sleep_month: int = 0


@dataclass(frozen=True)
class Billable:
    """What the account pays for, at the moment the due items are applied."""

    devices: int  # linked (not delinked) devices
    plan_fee_cents: int  # per device per month
    sleep_fee_cents: int  # per device per sleep month
    features: tuple[tuple[str, int], ...] = ()  # (feature, monthly cents)


@dataclass(frozen=True)
class Step:
    """One thing that happened to the account at `at`: a fee taken or a transition made."""

    at: float
    kind: str  # "fee" | "transition"
    cause: str
    balance_cents: int  # after this step
    fee: str | None = None  # plan_fee | feature_fee | sleep_fee (kind == "fee")
    amount_cents: int = 0  # cents taken (kind == "fee")
    old_state: str | None = None  # kind == "transition"
    new_state: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# --- time-driven rules --------------------------------------------------------------------

_TRANSITION_FIRST = 0  # at the same instant a transition is applied before a fee
_FEE_AFTER = 1


def _due(lc: Lifecycle) -> tuple[float, int, str] | None:
    """The next due item (instant, tie order, action) or None if nothing is ever due."""
    state = AccountState(lc.state)
    if state is AccountState.ACTIVE:
        if lc.bill_month <= 0:
            return None  # unscheduled; `advance` schedules it
        return add_months(lc.billing_anchor, lc.bill_month), _FEE_AFTER, "bill"
    if state is AccountState.SUSPENDED:
        return lc.state_since + SUSPENDED_DAYS * DAY_S, _TRANSITION_FIRST, "sleep"
    if state in (AccountState.SLEEP, AccountState.DEEP_SLEEP):
        assert lc.sleep_since is not None
        if state is AccountState.SLEEP:
            nxt = (add_months(lc.sleep_since, SLEEP_MONTHS), _TRANSITION_FIRST, "deep_sleep")
        else:
            nxt = (add_months(lc.sleep_since, SLEEP_MONTHS + DEEP_SLEEP_MONTHS), _TRANSITION_FIRST,
                   "deletion_eligible")
        fee = (add_months(lc.sleep_since, lc.sleep_month), _FEE_AFTER, "sleep_fee")
        return min(nxt, fee)
    return None


def next_due(lc: Lifecycle) -> float | None:
    """When `advance` will next have something to do (None: never, e.g. deleted)."""
    if lc.state == AccountState.ACTIVE and lc.bill_month <= 0:
        return 0.0  # due at once: `advance` schedules it
    d = _due(lc)
    return None if d is None else d[0]


def _transition(lc: Lifecycle, at: float, to: AccountState, cause: str, **detail: Any) -> tuple[Lifecycle, Step]:
    step = Step(at, "transition", cause, lc.balance_cents, old_state=lc.state, new_state=to.value, detail=detail)
    return replace(lc, state=to.value, state_since=at), step


def _fee(lc: Lifecycle, at: float, fee: str, cents: int, cause: str, **detail: Any) -> tuple[Lifecycle, Step]:
    lc = replace(lc, balance_cents=lc.balance_cents - cents)
    return lc, Step(at, "fee", cause, lc.balance_cents, fee=fee, amount_cents=cents, detail=detail)


def advance(lc: Lifecycle, billable: Billable, now: float) -> tuple[Lifecycle, list[Step]]:
    """Apply everything due up to and including `now`, oldest first."""
    steps: list[Step] = []
    if lc.state == AccountState.ACTIVE and lc.bill_month <= 0:
        lc = replace(lc, bill_month=first_anniversary_after(lc.billing_anchor, now))
    while True:
        due = _due(lc)
        if due is None or due[0] > now:
            return lc, steps
        at, _, action = due
        if action == "bill":
            month = lc.bill_month
            if billable.devices and billable.plan_fee_cents:
                lc, s = _fee(lc, at, "plan_fee", billable.devices * billable.plan_fee_cents, CAUSE_BILLING,
                             month=month, devices=billable.devices, unit_cents=billable.plan_fee_cents)
                steps.append(s)
            for name, cents in billable.features:
                if cents:
                    lc, s = _fee(lc, at, "feature_fee", cents, CAUSE_BILLING, month=month, feature=name)
                    steps.append(s)
            lc = replace(lc, bill_month=month + 1)
            if lc.balance_cents <= 0:
                lc, s = _transition(lc, at, AccountState.SUSPENDED, CAUSE_BILLING, month=month)
                steps.append(s)
        elif action == "sleep":
            lc, s = _transition(lc, at, AccountState.SLEEP, CAUSE_SUSPENDED_15_DAYS)
            lc = replace(lc, sleep_since=at, sleep_month=0)
            steps.append(s)
        elif action == "sleep_fee":
            m = lc.sleep_month
            cents = billable.devices * billable.sleep_fee_cents
            if cents:
                lc, s = _fee(lc, at, "sleep_fee", cents, CAUSE_BILLING, sleep_month=m, devices=billable.devices,
                             unit_cents=billable.sleep_fee_cents)
                steps.append(s)
            lc = replace(lc, sleep_month=m + 1)
        elif action == "deep_sleep":
            lc, s = _transition(lc, at, AccountState.DEEP_SLEEP, CAUSE_SLEEP_12_MONTHS)
            steps.append(s)
        elif action == "deletion_eligible":
            lc, s = _transition(lc, at, AccountState.DELETION_ELIGIBLE, CAUSE_DEEP_SLEEP_12_MONTHS)
            steps.append(s)
        else:  # pragma: no cover - _due only returns the actions above
            raise AssertionError(action)


# --- balance and requests -----------------------------------------------------------------


def move(lc: Lifecycle, delta_cents: int, at: float, cause: str) -> tuple[Lifecycle, list[Step]]:
    """Change the balance by `delta_cents` at `at` and apply the balance rule.

    Call `advance(…, at)` first so that everything due before `at` has happened.
    Re-activation schedules the next plan fee on the first billing anniversary after `at`
    (the anniversaries that passed while not active are not billed) and ends the sleep
    calendar.
    """
    if lc.state == AccountState.DELETED:
        raise LifecycleError("the account is deleted; a deleted account cannot be restored")
    lc = replace(lc, balance_cents=lc.balance_cents + delta_cents)
    new = state_for_balance(lc.state, lc.balance_cents)
    if new.value == lc.state:
        return lc, []
    lc, s = _transition(lc, at, new, cause)
    if new is AccountState.ACTIVE:
        lc = replace(lc, bill_month=first_anniversary_after(lc.billing_anchor, at), sleep_since=None, sleep_month=0)
    return lc, [s]


def enter_sleep(lc: Lifecycle, at: float) -> tuple[Lifecycle, list[Step]]:
    """A customer's request to enter sleep mode now (instead of after 15 days suspended).

    Refused with a positive balance (9.4: "You may not enter to the Sleep Mode manually
    with a positive balance") and outside `suspended`. The entry fee follows from
    `advance(…, at)`.
    """
    if lc.balance_cents > 0:
        raise LifecycleError("sleep mode cannot be entered manually with a positive balance (seed 9.4)")
    if lc.state != AccountState.SUSPENDED:
        raise LifecycleError(f"only a suspended account can be put to sleep; this one is {lc.state}")
    lc, s = _transition(lc, at, AccountState.SLEEP, CAUSE_REQUESTED)
    return replace(lc, sleep_since=at, sleep_month=0), [s]


def delete(lc: Lifecycle, at: float, *, signed_notice: bool) -> tuple[Lifecycle, list[Step]]:
    """Deletion on request. Outside deep sleep it needs the owner's written signed notice."""
    if lc.state == AccountState.DELETED:
        raise LifecycleError("the account is already deleted")
    if lc.state not in (AccountState.DEEP_SLEEP, AccountState.DELETION_ELIGIBLE) and not signed_notice:
        raise LifecycleError(
            f"deleting an account in state {lc.state} needs a written signed notice from the owner with "
            "the account id (seed 9.4); pass signed_notice once it is received"
        )
    lc, s = _transition(lc, at, AccountState.DELETED, CAUSE_REQUESTED, signed_notice=signed_notice)
    return replace(lc, sleep_since=None, sleep_month=0), [s]


def restore_deadline(delinked_at: float) -> float:
    """The last instant a delinked device can be restored to its account."""
    return add_months(delinked_at, RESTORE_WINDOW_MONTHS)


def check_restore(delinked_at: float, now: float) -> None:
    if now > restore_deadline(delinked_at):
        since = dt.datetime.fromtimestamp(delinked_at, dt.UTC).date().isoformat()
        raise LifecycleError(
            f"the device was delinked on {since}, more than a year ago: it can no longer be restored "
            "to the service (seed 9.4)"
        )


def feature_cancellable_from(added_at: float) -> float:
    return add_months(added_at, FEATURE_MIN_MONTHS)


def check_feature_cancel(added_at: float, now: float) -> None:
    earliest = feature_cancellable_from(added_at)
    if now < earliest:
        day = dt.datetime.fromtimestamp(earliest, dt.UTC).date().isoformat()
        raise LifecycleError(
            f"a feature can be cancelled only after one calendar month of use (seed 9.3): from {day}"
        )


def check_top_up(amount_cents: int, minimum_cents: int) -> None:
    if amount_cents < minimum_cents:
        raise LifecycleError(
            f"a top-up must be at least {minimum_cents // 100}.{minimum_cents % 100:02d} (seed 9.3), "
            f"got {amount_cents // 100}.{amount_cents % 100:02d}"
        )


__all__ = [
    "DAY_S",
    "DEEP_SLEEP_MONTHS",
    "FEATURE_MIN_MONTHS",
    "RESTORE_WINDOW_MONTHS",
    "SLEEP_MONTHS",
    "SUSPENDED_DAYS",
    "AccountState",
    "Billable",
    "Lifecycle",
    "LifecycleError",
    "Step",
    "add_months",
    "advance",
    "check_feature_cancel",
    "check_restore",
    "check_top_up",
    "delete",
    "enter_sleep",
    "feature_cancellable_from",
    "first_anniversary_after",
    "mode_for_state",
    "move",
    "next_due",
    "restore_deadline",
    "state_for_balance",
]
