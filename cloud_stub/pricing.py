"""Price lists: every amount the account lifecycle charges, in integer cents, per currency.

Seed 003 gives some figures and leaves the rest to "the Billing section"; the defaults
below take the seed's numbers where it has them and document a choice where it has not
(docs/accounts.md, "Prices"):

| item                         | USD    | EUR    | source                                   |
|------------------------------|--------|--------|------------------------------------------|
| minimum top-up               | 20.00  | 15.00  | seed 9.3 ("15 EUR or 20 USD")            |
| plan fee, per device / month | 4.00   | 4.00   | not in the seed: our choice              |
| sleep-mode fee, per device / month | 2.00 | 2.00 | seed 9.4 ("about 2 EUR/USD")           |
| restoring a delinked device  | 50.00  | 50.00  | seed 9.4 ("50 EUR/USD … per device")     |
| new account after deletion, per device | 50.00 | 50.00 | seed 9.4                            |
| refund handling fee          | 30.00  | 30.00  | seed 9.3 (documented, not charged here)  |
| features, per account / month | see `FEATURES` |  | not in the seed: our choice            |

Prices of an existing account never change (seed 9, "with the exception of prices for an
existing account"): an account records the id of the price list it was opened under
(`price_list`) and its currency, and is always billed from that list. A new price list
is added under a new id and made `CURRENT`; old ones stay here forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

CURRENCIES = ("USD", "EUR")
DEFAULT_CURRENCY = "USD"


class PricingError(ValueError):
    """An unknown currency, price list or feature."""


@dataclass(frozen=True)
class Feature:
    name: str
    title: str
    monthly_cents: int


@dataclass(frozen=True)
class PriceList:
    id: str
    currency: str
    min_top_up_cents: int
    plan_fee_cents: int  # per linked device, per month, while the account is active
    sleep_fee_cents: int  # per linked device, at sleep entry and each month in sleep / deep sleep
    restore_fee_cents: int  # per delinked device restored (within a year of delinking)
    new_account_fee_cents: int  # per device, a new account for the devices of a deleted one
    refund_fee_cents: int  # handling fee for a refund where the law requires one (not automated)
    features: Mapping[str, Feature] = field(default_factory=dict)

    def feature(self, name: str) -> Feature:
        try:
            return self.features[name]
        except KeyError:
            raise PricingError(
                f"unknown feature {name!r} (one of {', '.join(sorted(self.features)) or 'none'})"
            ) from None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "currency": self.currency,
            "min_top_up_cents": self.min_top_up_cents,
            "plan_fee_cents": self.plan_fee_cents,
            "sleep_fee_cents": self.sleep_fee_cents,
            "restore_fee_cents": self.restore_fee_cents,
            "new_account_fee_cents": self.new_account_fee_cents,
            "refund_fee_cents": self.refund_fee_cents,
            "features": {f.name: {"title": f.title, "monthly_cents": f.monthly_cents} for f in self.features.values()},
        }


def _features(*items: tuple[str, str, int]) -> Mapping[str, Feature]:
    return MappingProxyType({name: Feature(name, title, cents) for name, title, cents in items})


_FEATURES_2026 = _features(
    ("sms_alerts", "Text-message alerts", 150),
    ("voice_alerts", "Voice-call alerts", 300),
    ("subusers", "Additional human users (subusers)", 100),
    ("api_access", "Third-party API access", 200),
)

PRICE_LISTS: Mapping[str, Mapping[str, PriceList]] = MappingProxyType({
    "2026-11": MappingProxyType({
        "USD": PriceList("2026-11", "USD", min_top_up_cents=2000, plan_fee_cents=400, sleep_fee_cents=200,
                         restore_fee_cents=5000, new_account_fee_cents=5000, refund_fee_cents=3000,
                         features=_FEATURES_2026),
        "EUR": PriceList("2026-11", "EUR", min_top_up_cents=1500, plan_fee_cents=400, sleep_fee_cents=200,
                         restore_fee_cents=5000, new_account_fee_cents=5000, refund_fee_cents=3000,
                         features=_FEATURES_2026),
    }),
})

CURRENT = "2026-11"


def check_currency(currency: str) -> str:
    code = currency.strip().upper() if isinstance(currency, str) else ""
    if code not in CURRENCIES:
        raise PricingError(f"unknown currency {currency!r} (one of {', '.join(CURRENCIES)})")
    return code


def price_list(currency: str = DEFAULT_CURRENCY, list_id: str = CURRENT) -> PriceList:
    """The price list `list_id` in `currency`; PricingError if either is unknown."""
    code = check_currency(currency)
    try:
        return PRICE_LISTS[list_id][code]
    except KeyError:
        raise PricingError(f"unknown price list {list_id!r} for {code}") from None


__all__ = [
    "CURRENCIES",
    "CURRENT",
    "DEFAULT_CURRENCY",
    "PRICE_LISTS",
    "Feature",
    "PriceList",
    "PricingError",
    "check_currency",
    "price_list",
]
