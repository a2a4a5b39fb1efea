"""Essential notifications: the customer-facing text of every lifecycle transition.

Seed 9.4: notifications about the suspend, sleep and deep-sleep modes "cannot be muted as
they are a part of essential notifications". So there is deliberately no mute flag, no
per-account preference and no "kind" filter anywhere: every transition stores exactly one
row in the `notifications` table (account, kind, text, at) in the same transaction as the
transition itself, and `Cloud` tells its listeners (a `notification` CloudEvent) so a
mailer can deliver it. Delivery (e-mail to the account's primary address, 9.2) is outside
this stand-in; the table is the outbox.

`render(kind, **facts)` is pure: it turns the facts of a transition into the text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

ACCOUNT_KINDS = (
    "account.active",
    "account.suspended",
    "account.sleep",
    "account.deep_sleep",
    "account.deletion_eligible",
    "account.deleted",
)
DEVICE_KINDS = ("device.delinked", "device.restored")
KINDS = ACCOUNT_KINDS + DEVICE_KINDS


@dataclass(frozen=True)
class Notification:
    id: int
    account_id: int
    device_id: str | None
    kind: str
    text: str
    at: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Notification:
        return cls(**{k: row[k] for k in ("id", "account_id", "device_id", "kind", "text", "at")})


def money(cents: int, currency: str) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d} {currency}"


def day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


_CAUSES = {
    "top_up": "after a top-up",
    "charge": "after a charge",
    "billing": "after the monthly billing",
    "suspended_15_days": "15 days after the suspension",
    "sleep_12_months": "after 12 months in sleep mode",
    "deep_sleep_12_months": "after 12 months in deep sleep mode",
    "requested": "on your request",
    "restore_fee": "after a device restoration fee",
}


def render(kind: str, *, name: str, currency: str, balance_cents: int, cause: str = "", **f: Any) -> str:
    """The text of one essential notification. `f` holds the facts the kind needs."""
    why = _CAUSES.get(cause, cause)
    bal = money(balance_cents, currency)
    if kind == "account.active":
        return (f"Account {name} is active again ({why}); balance {bal}. "
                "Your devices start work within 10-60 minutes.")
    if kind == "account.suspended":
        return (f"Account {name} is suspended ({why}): the balance is {bal}. Your devices have stopped work. "
                f"Top up at least {money(f['min_top_up_cents'], currency)} (and enough to bring the balance above "
                f"zero) before {day(f['sleep_at'])} to avoid sleep mode and its fee of "
                f"{money(f['sleep_fee_cents'], currency)} per device per month.")
    if kind == "account.sleep":
        return (f"Account {name} is in sleep mode ({why}). A sleep-mode fee of "
                f"{money(f['sleep_fee_cents'], currency)} per device ({f['devices']} devices) is charged now and "
                f"each month the account stays asleep; balance {bal}. A top-up that brings the balance above zero "
                "re-activates the account at once.")
    if kind == "account.deep_sleep":
        return (f"Account {name} is in deep sleep mode ({why}); the sleep-mode fee continues; balance {bal}. "
                "We do not guarantee that the devices start operating after deep sleep ends. "
                f"After 12 more months (on {day(f['deletion_at'])}) the account qualifies for deletion.")
    if kind == "account.deletion_eligible":
        return (f"Account {name} qualifies for deletion ({why}); balance {bal}. "
                "A top-up that brings the balance above zero still re-activates it.")
    if kind == "account.deleted":
        return (f"Account {name} is deleted ({why}); its {f['devices']} devices are removed from the service. "
                "A deleted account cannot be restored; a new account for the same devices costs "
                f"{money(f['new_account_fee_cents'], currency)} per device and is not guaranteed.")
    if kind == "device.delinked":
        return (f"Device {f['device_id']} is removed from the service (delinked from account {name}). "
                f"It can be restored until {day(f['restore_until'])} for "
                f"{money(f['restore_fee_cents'], currency)}; restoration is not guaranteed.")
    if kind == "device.restored":
        return (f"Device {f['device_id']} is back on account {name}; a restoration fee of "
                f"{money(f['restore_fee_cents'], currency)} was charged; balance {bal}.")
    raise ValueError(f"unknown notification kind {kind!r}")


__all__ = ["ACCOUNT_KINDS", "DEVICE_KINDS", "KINDS", "Notification", "day", "money", "render"]
