"""The account lifecycle (seed 003, 9.3–9.4): pure rules, then on a real registry (SQLite and PostgreSQL).

Time is a fake clock: two years of an account's life run in well under a second. No broker
here (tests/cloud/test_lifecycle_cloud.py has the one that publishes to units).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_stub import lifecycle, notifications, pricing, views
from cloud_stub.accounts import AccountError, Accounts, Change, Desired
from cloud_stub.lifecycle import DAY_S, Billable, Lifecycle, add_months
from cloud_stub.registry import Registry

T0 = dt.datetime(2027, 1, 31, tzinfo=dt.UTC).timestamp()  # a 31st: anniversaries clamp to month ends


def at(y: int, m: int, d: int, h: int = 0) -> float:
    return dt.datetime(y, m, d, h, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def reg(registry_url: str) -> Iterator[Registry]:
    r = Registry(registry_url)
    yield r
    r.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def published() -> list[Desired]:
    return []


@pytest.fixture
def accounts(reg: Registry, clock: Clock, published: list[Desired]) -> Accounts:
    return Accounts(reg, publish=lambda d: published.append(d) or True, clock=clock)


def fees(reg: Registry, account_id: int, kind: str | None = None) -> list[tuple[str, int]]:
    """(UTC date, cents) of the fee rows of the ledger."""
    return [(dt.datetime.fromtimestamp(r["at"], dt.UTC).date().isoformat(), -r["amount_cents"])
            for r in reg.ledger(account_id) if r["kind"] in ((kind,) if kind else ("plan_fee", "feature_fee",
                                                                                  "sleep_fee"))]


def transitions(reg: Registry, account_id: int) -> list[tuple[str, str, str]]:
    return [(e["detail"]["from"], e["detail"]["to"], e["detail"]["cause"])
            for e in reg.events(account_id=account_id, kind="account.state", limit=1000)]


def tick_daily(accounts: Accounts, clock: Clock, until: float) -> list[Change]:
    out = []
    while clock.t + DAY_S <= until:
        clock.t += DAY_S
        out += accounts.tick()
    clock.t = until
    return out + accounts.tick()


# --- pure rules -----------------------------------------------------------------------------


def test_calendar_months_clamp_and_never_drift() -> None:
    days = [dt.datetime.fromtimestamp(add_months(T0, k), dt.UTC).date().isoformat() for k in (1, 2, 3, 13)]
    assert days == ["2027-02-28", "2027-03-31", "2027-04-30", "2028-02-29"]
    assert lifecycle.first_anniversary_after(T0, T0) == 1
    assert lifecycle.first_anniversary_after(T0, add_months(T0, 5)) == 6  # an anniversary itself is past
    assert lifecycle.first_anniversary_after(T0, add_months(T0, 5) - 1) == 5
    assert lifecycle.first_anniversary_after(T0, T0 + 10 * 365 * DAY_S) == 120  # 3 leap days short of 10 y


def test_state_and_mode_rules() -> None:
    assert lifecycle.mode_for_state("deletion_eligible") == "deep_sleep"
    assert lifecycle.mode_for_state("deleted") == "delinked"
    assert lifecycle.state_for_balance("deleted", 500) == "deleted"
    for s in ("suspended", "sleep", "deep_sleep", "deletion_eligible"):
        assert lifecycle.state_for_balance(s, 1) == "active"
        assert lifecycle.state_for_balance(s, 0) == s


def _walk_pure(lc: Lifecycle, b: Billable, ticks: list[float]) -> tuple[Lifecycle, list[lifecycle.Step]]:
    steps = []
    for t in ticks:
        lc, s = lifecycle.advance(lc, b, t)
        steps += s
    return lc, steps


def test_catching_up_equals_ticking_and_ticks_are_idempotent() -> None:
    lc0 = Lifecycle("active", T0, 2000, billing_anchor=T0)
    b = Billable(devices=3, plan_fee_cents=400, sleep_fee_cents=200, features=(("sms_alerts", 150),))
    end = add_months(T0, 30)
    hourly = [T0 + h * 3600 for h in range(1, int((end - T0) // 3600) + 1)]
    by_hour = _walk_pure(lc0, b, hourly)
    once = lifecycle.advance(lc0, b, hourly[-1])
    assert by_hour == once
    twice = lifecycle.advance(once[0], b, hourly[-1])
    assert twice == (once[0], [])  # the same instant again changes nothing
    assert lifecycle.next_due(once[0]) is None and once[0].state == "deletion_eligible"


def test_manual_sleep_and_deletion_rules() -> None:
    lc = Lifecycle("active", T0, 100, billing_anchor=T0)
    with pytest.raises(lifecycle.LifecycleError, match="positive balance"):
        lifecycle.enter_sleep(lc, T0)
    with pytest.raises(lifecycle.LifecycleError, match="only a suspended"):
        lifecycle.enter_sleep(Lifecycle("deep_sleep", T0, -100, T0, sleep_since=T0), T0)
    with pytest.raises(lifecycle.LifecycleError, match="signed notice"):
        lifecycle.delete(lc, T0, signed_notice=False)
    gone, steps = lifecycle.delete(Lifecycle("deep_sleep", T0, -100, T0, sleep_since=T0), T0, signed_notice=False)
    assert gone.state == "deleted" and steps[0].cause == "requested" and lifecycle.next_due(gone) is None
    with pytest.raises(lifecycle.LifecycleError, match="deleted"):
        lifecycle.move(gone, 5000, T0, "top_up")


def test_price_lists() -> None:
    usd, eur = pricing.price_list("USD"), pricing.price_list("eur")
    assert (usd.min_top_up_cents, eur.min_top_up_cents) == (2000, 1500)  # seed 9.3
    assert usd.sleep_fee_cents == eur.sleep_fee_cents == 200 and usd.restore_fee_cents == 5000  # seed 9.4
    assert usd.feature("sms_alerts").monthly_cents == 150
    with pytest.raises(pricing.PricingError, match="unknown currency"):
        pricing.price_list("GBP")
    with pytest.raises(pricing.PricingError, match="unknown feature"):
        usd.feature("teleport")
    assert notifications.money(-15100, "USD") == "-151.00 USD"


# --- two years on a registry ----------------------------------------------------------------


def _open_acme(accounts: Accounts) -> int:
    a = accounts.create("acme", 2000)
    for d in ("d1", "d2", "d3"):
        accounts.add_device(a.id, d)
    _, quote = accounts.add_feature(a.id, "sms_alerts")
    assert (quote["monthly_cents"], quote["next_bill_cents"]) == (150, 3 * 400 + 150)
    assert quote["first_billed_at"] == at(2027, 2, 28)
    return a.id


def test_two_years_of_an_account_to_the_cent(reg: Registry, accounts: Accounts, clock: Clock,
                                             published: list[Desired]) -> None:
    aid = _open_acme(accounts)
    suspended_at, sleep_at = at(2027, 3, 31), at(2027, 4, 15)

    changes = tick_daily(accounts, clock, at(2027, 2, 28))
    assert accounts.get(aid).balance_cents == 2000 - 1350 and accounts.get(aid).state == "active"
    assert [c.account.id for c in changes] == [aid]

    tick_daily(accounts, clock, suspended_at)  # 6.50 - 13.50
    a = accounts.get(aid)
    assert (a.state, a.balance_cents, a.state_since) == ("suspended", -700, suspended_at)

    tick_daily(accounts, clock, sleep_at - 1)  # 15 days not billed
    assert accounts.get(aid).state == "suspended" and accounts.get(aid).balance_cents == -700
    clock.t = sleep_at
    (ch,) = accounts.tick()
    assert ch.transitions == [("suspended", "sleep", "suspended_15_days")]
    assert ch.account.balance_cents == -700 - 3 * 200  # entry fee, per device

    tick_daily(accounts, clock, at(2028, 4, 15) - 1)
    assert accounts.get(aid).state == "sleep" and accounts.get(aid).balance_cents == -700 - 12 * 600
    tick_daily(accounts, clock, at(2028, 4, 15))
    assert accounts.get(aid).state == "deep_sleep" and accounts.get(aid).balance_cents == -700 - 13 * 600
    tick_daily(accounts, clock, at(2029, 4, 15))
    a = accounts.get(aid)
    assert (a.state, a.balance_cents) == ("deletion_eligible", -700 - 24 * 600)  # -151.00
    assert a.next_due_at is None

    # every fee, once, in order, to the cent
    plan = fees(reg, aid, "plan_fee")
    assert plan == [("2027-02-28", 1200), ("2027-03-31", 1200)]
    assert fees(reg, aid, "feature_fee") == [("2027-02-28", 150), ("2027-03-31", 150)]
    sleep = fees(reg, aid, "sleep_fee")
    assert len(sleep) == 24 and {c for _, c in sleep} == {600}
    assert [d for d, _ in sleep] == [dt.datetime.fromtimestamp(add_months(sleep_at, m), dt.UTC).date().isoformat()
                                     for m in range(24)]
    ledger = reg.ledger(aid)
    assert sum(r["amount_cents"] for r in ledger) == a.balance_cents == ledger[-1]["balance_cents"]

    # a top-up that does not cover what is owed keeps the state; one that does re-activates at once
    clock.t = at(2029, 5, 2)
    ch = accounts.top_up(aid, 2000)
    assert ch.account.state == "deletion_eligible" and ch.account.balance_cents == -13100 and not ch.desired
    ch = accounts.top_up(aid, 13101)
    assert ch.transitions == [("deletion_eligible", "active", "top_up")] and ch.account.balance_cents == 1
    assert sorted(d.mode for d in ch.desired) == ["active"] * 3
    # billing resumes on the next anniversary (2029-05-31), no proration, no back-billing
    assert accounts.get(aid).next_due_at == at(2029, 5, 31)
    clock.t = at(2029, 5, 31)
    (ch,) = accounts.tick()
    assert ch.transitions == [("active", "suspended", "billing")] and ch.account.balance_cents == 1 - 1350

    assert transitions(reg, aid) == [
        ("active", "suspended", "billing"), ("suspended", "sleep", "suspended_15_days"),
        ("sleep", "deep_sleep", "sleep_12_months"), ("deep_sleep", "deletion_eligible", "deep_sleep_12_months"),
        ("deletion_eligible", "active", "top_up"), ("active", "suspended", "billing")]
    kinds = [n.kind for n in accounts.notifications(aid)]
    assert kinds == ["account.suspended", "account.sleep", "account.deep_sleep", "account.deletion_eligible",
                     "account.active", "account.suspended"]
    texts = {n.kind: n.text for n in accounts.notifications(aid)[::-1]}  # the first of each kind
    assert "before 2027-04-15" in texts["account.suspended"] and "20.00 USD" in texts["account.suspended"]
    assert "2.00 USD per device (3 devices)" in texts["account.sleep"]
    assert "on 2029-04-15" in texts["account.deep_sleep"]

    # each transition published a new version to every unit: 1 (added) + 6 transitions
    assert {reg.desired(d)["version"] for d in ("d1", "d2", "d3")} == {7}
    assert [d.mode for d in published if d.device_id == "d1"] == [
        "active", "suspended", "sleep", "deep_sleep", "deep_sleep", "active", "suspended"]


def test_catching_up_after_a_long_gap_gives_the_same_books(tmp_path: Path) -> None:
    """Ticking every day and ticking once after 27 months write the same ledger and transitions."""
    books = []
    for name, daily in (("daily", True), ("once", False)):
        clock = Clock()
        with Registry(f"sqlite:///{tmp_path / name}.db") as reg:
            accounts = Accounts(reg, clock=clock)
            aid = _open_acme(accounts)
            end = at(2029, 5, 1)
            if daily:
                tick_daily(accounts, clock, end)
            else:
                clock.t = end
                changes = accounts.tick()
                assert len(changes) == 1 and len(changes[0].steps) == 4 + 4 + 24  # fees, transitions, sleep fees
                assert accounts.tick() == []  # idempotent
            books.append(([(r["at"], r["kind"], r["amount_cents"], r["balance_cents"]) for r in reg.ledger(aid)],
                          [(e["at"], e["detail"]["to"]) for e in reg.events(account_id=aid, kind="account.state")],
                          [(n.kind, n.at, n.text) for n in accounts.notifications(aid)]))
    assert books[0] == books[1]


def test_a_tick_twice_for_the_same_instant_changes_nothing(reg: Registry, accounts: Accounts,
                                                           clock: Clock) -> None:
    aid = _open_acme(accounts)
    clock.t = at(2027, 6, 1)
    assert accounts.tick()
    snap = (reg.accounts(), reg.ledger(aid), reg.events(limit=10_000), reg.notifications(), reg.all_desired())
    assert accounts.tick() == [] and accounts.tick(clock.t - 3600) == []
    assert (reg.accounts(), reg.ledger(aid), reg.events(limit=10_000), reg.notifications(),
            reg.all_desired()) == snap


# --- top-ups and the way back ---------------------------------------------------------------


def test_minimum_top_up_and_currency(accounts: Accounts) -> None:
    usd = accounts.create("usd", 0)
    eur = accounts.create("eur", 0, currency="EUR")
    assert (usd.currency, eur.currency, usd.price_list) == ("USD", "EUR", pricing.CURRENT)
    with pytest.raises(AccountError, match=r"at least 20\.00"):
        accounts.top_up(usd.id, 1999)
    with pytest.raises(AccountError, match=r"at least 15\.00"):
        accounts.top_up(eur.id, 1499)
    assert accounts.top_up(eur.id, 1500).account.state == "active"
    with pytest.raises(AccountError, match="unknown currency"):
        accounts.create("gbp", 0, currency="GBP")
    assert accounts.ledger(eur.id)[-1]["kind"] == "top_up"


@pytest.mark.parametrize("target", ["suspended", "sleep", "deep_sleep"])
def test_a_covering_top_up_returns_to_active_at_once(accounts: Accounts, clock: Clock, target: str) -> None:
    a = accounts.create("acme", 500)
    accounts.add_device(a.id, "d1")
    accounts.charge(a.id, 500)  # zero -> suspended now
    clock.t += {"suspended": DAY_S, "sleep": 20 * DAY_S, "deep_sleep": 400 * DAY_S}[target]
    accounts.tick()
    b = accounts.get(a.id)
    assert b.state == target
    owed = -b.balance_cents
    ch = accounts.top_up(a.id, owed + 2000)
    assert ch.transitions[-1] == (target, "active", "top_up") and ch.account.balance_cents == 2000
    assert [d.mode for d in ch.desired] == ["active"]
    assert [n.kind for n in accounts.notifications(a.id)][-1] == "account.active"


def test_a_top_up_applies_what_fell_due_before_it(accounts: Accounts, clock: Clock) -> None:
    """No tick ran for 20 days: the top-up first puts the account to sleep (with its fee), then pays."""
    a = accounts.create("acme", 0)
    accounts.add_device(a.id, "d1")
    clock.t += 20 * DAY_S
    ch = accounts.top_up(a.id, 2000)
    assert ch.transitions == [("suspended", "sleep", "suspended_15_days"), ("sleep", "active", "top_up")]
    assert ch.account.balance_cents == 2000 - 200


def test_manual_sleep(accounts: Accounts, clock: Clock) -> None:
    a = accounts.create("acme", 2000)
    for d in ("d1", "d2"):
        accounts.add_device(a.id, d)
    with pytest.raises(AccountError, match="positive balance"):
        accounts.enter_sleep(a.id)
    accounts.charge(a.id, 2000)
    clock.t += 3600
    ch = accounts.enter_sleep(a.id)
    assert ch.transitions == [("suspended", "sleep", "requested")] and ch.account.balance_cents == -400
    assert {d.mode for d in ch.desired} == {"sleep"}
    with pytest.raises(AccountError, match="only a suspended"):
        accounts.enter_sleep(a.id)


def test_an_account_opened_without_money_starts_suspended_and_sleeps(accounts: Accounts, clock: Clock) -> None:
    a = accounts.create("broke")
    assert a.state == "suspended" and a.next_due_at == T0 + 15 * DAY_S
    accounts.add_device(a.id, "d1")
    clock.t = T0 + 15 * DAY_S
    (ch,) = accounts.tick()
    assert ch.account.state == "sleep" and ch.account.balance_cents == -200


# --- features -------------------------------------------------------------------------------


def test_features_are_billed_monthly_and_cancelled_after_a_calendar_month(reg: Registry, accounts: Accounts,
                                                                          clock: Clock) -> None:
    a = accounts.create("acme", 10_000)
    accounts.add_device(a.id, "d1")
    quote = accounts.quote_feature(a.id, "voice_alerts")
    assert quote["monthly_cents"] == 300 and quote["next_bill_without_cents"] == 400
    assert accounts.features(a.id) == []  # a quote adds nothing
    accounts.add_feature(a.id, "voice_alerts")
    with pytest.raises(AccountError, match="already"):
        accounts.add_feature(a.id, "voice_alerts")
    with pytest.raises(AccountError, match="unknown feature"):
        accounts.add_feature(a.id, "teleport")
    clock.t = at(2027, 2, 27)
    with pytest.raises(AccountError, match="one calendar month"):
        accounts.cancel_feature(a.id, "voice_alerts")
    clock.t = at(2027, 2, 28)  # one calendar month after Jan 31 (clamped)
    ch = accounts.cancel_feature(a.id, "voice_alerts")  # catches up first: February is billed, then cancelled
    assert fees(reg, a.id) == [("2027-02-28", 400), ("2027-02-28", 300)]
    clock.t = at(2027, 3, 31)
    accounts.tick()
    assert fees(reg, a.id)[-1] == ("2027-03-31", 400) and len(fees(reg, a.id)) == 3
    assert ch.account.balance_cents == 10_000 - 700
    accounts.charge(a.id, 20_000)
    with pytest.raises(AccountError, match="active account only"):
        accounts.add_feature(a.id, "sms_alerts")


# --- delinking one unit ---------------------------------------------------------------------


def test_delink_keeps_the_others_running_and_restore_within_a_year(reg: Registry, accounts: Accounts,
                                                                  clock: Clock) -> None:
    a = accounts.create("acme", 5000)
    for d in ("d1", "d2", "d3"):
        accounts.add_device(a.id, d)
    with pytest.raises(AccountError, match="signed application"):
        accounts.delink_device(a.id, "d2")
    with pytest.raises(AccountError, match="not on account"):
        accounts.delink_device(a.id, "zz", signed_application=True)
    clock.t = at(2027, 2, 10)
    ch = accounts.delink_device(a.id, "d2", signed_application=True)
    assert ch.desired == [Desired("d2", 2, "delinked")] and ch.account.state == "active"
    assert reg.device_ids(a.id) == ["d1", "d3"] and reg.device_ids(a.id, include_delinked=True) == ["d1", "d2", "d3"]
    with pytest.raises(AccountError, match="already delinked"):
        accounts.delink_device(a.id, "d2", signed_application=True)

    clock.t = at(2027, 2, 28)
    accounts.tick()
    assert fees(reg, a.id) == [("2027-02-28", 800)]  # two linked devices billed
    ch = accounts.charge(a.id, 5000)  # -> suspended: only the linked devices follow
    assert sorted(d.device_id for d in ch.desired) == ["d1", "d3"] and {d.mode for d in ch.desired} == {"suspended"}
    assert reg.desired("d2")["mode"] == "delinked"
    for d in ("d1", "d3"):
        reg.set_applied(d, reg.desired(d)["version"], clock.t)
    view = views.account(reg, a.id)
    assert view["convergence"] == {"converged": ["d1", "d3"], "pending": []}
    assert [x["device_id"] for x in view["delinked"]] == ["d2"] and view["devices"] == ["d1", "d3"]
    assert view["delinked"][0]["restore_until"] == at(2028, 2, 10)

    clock.t = at(2028, 2, 10)  # exactly a year: still allowed, 50.00 charged
    accounts.tick()
    before = accounts.get(a.id)
    assert before.state == "sleep" and before.balance_cents == -800 - 11 * 400  # sleep fees for d1, d3 only
    ch = accounts.restore_device(a.id, "d2")
    assert ch.account.balance_cents == before.balance_cents - 5000
    assert reg.ledger(a.id)[-1]["kind"] == "restore_fee" and reg.ledger(a.id)[-1]["device_id"] == "d2"
    assert reg.desired("d2")["mode"] == ch.account.mode == "sleep"
    assert reg.device_ids(a.id) == ["d1", "d2", "d3"]
    kinds = [n.kind for n in accounts.notifications(a.id)]
    assert "device.delinked" in kinds and kinds[-1] == "device.restored"
    assert "50.00 USD" in accounts.notifications(a.id)[-1].text


def test_restore_after_a_year_is_refused(accounts: Accounts, clock: Clock) -> None:
    a = accounts.create("acme", 5000)
    for d in ("d1", "d2"):
        accounts.add_device(a.id, d)
    accounts.delink_device(a.id, "d2", signed_application=True)
    with pytest.raises(AccountError, match="only device"):
        accounts.delink_device(a.id, "d1", signed_application=True)
    clock.t = add_months(T0, 12) + 1
    with pytest.raises(AccountError, match="more than a year ago: it can no longer be restored"):
        accounts.restore_device(a.id, "d2")
    with pytest.raises(AccountError, match="restore it there"):
        accounts.add_device(a.id, "d2")


def test_restore_fee_can_suspend_and_then_reaches_every_unit(reg: Registry, accounts: Accounts,
                                                             clock: Clock) -> None:
    a = accounts.create("acme", 2000)
    for d in ("d1", "d2"):
        accounts.add_device(a.id, d)
    accounts.delink_device(a.id, "d2", signed_application=True)
    ch = accounts.restore_device(a.id, "d2")  # 20.00 - 50.00
    assert ch.transitions == [("active", "suspended", "restore_fee")]
    assert sorted((d.device_id, d.mode) for d in ch.desired) == [("d1", "suspended"), ("d2", "suspended")]


# --- deletion -------------------------------------------------------------------------------


def test_deletion_on_request(reg: Registry, accounts: Accounts, clock: Clock) -> None:
    a = accounts.create("acme", 2000)
    for d in ("d1", "d2"):
        accounts.add_device(a.id, d)
    with pytest.raises(AccountError, match="signed notice"):
        accounts.delete(a.id)
    clock.t += 60
    ch = accounts.delete(a.id, signed_notice=True)
    assert ch.transitions == [("active", "deleted", "requested")] and ch.account.next_due_at is None
    assert sorted((d.device_id, d.mode) for d in ch.desired) == [("d1", "delinked"), ("d2", "delinked")]
    assert reg.device_ids(a.id) == [] and all(reg.device_row(d)["delinked_at"] == clock.t for d in ("d1", "d2"))
    assert accounts.notifications(a.id)[-1].kind == "account.deleted"
    for call, words in ((lambda: accounts.top_up(a.id, 5000), "cannot be restored"),
                        (lambda: accounts.charge(a.id, 100), "cannot be restored"),
                        (lambda: accounts.restore_device(a.id, "d1"), "cannot be restored"),
                        (lambda: accounts.add_device(a.id, "d9"), "deleted"),
                        (lambda: accounts.delete(a.id, signed_notice=True), "already deleted"),
                        (lambda: accounts.add_device(accounts.create("other", 2000).id, "d1"), "deleted account")):
        with pytest.raises(AccountError, match=words):
            call()
    clock.t += 800 * DAY_S
    assert accounts.tick() == [] and accounts.get(a.id).balance_cents == 2000  # never billed again

    # a new account for the devices of a deleted one costs the handling fee per device
    ch = accounts.reopen(a.id, "acme-2")
    assert ch.account.balance_cents == -10_000 and ch.account.state == "suspended"
    assert reg.device_ids(ch.account.id) == ["d1", "d2"]
    assert {(d.device_id, d.mode) for d in ch.desired} == {("d1", "suspended"), ("d2", "suspended")}
    assert reg.ledger(ch.account.id)[-1]["kind"] == "new_account_fee"
    with pytest.raises(AccountError, match="not deleted"):
        accounts.reopen(ch.account.id, "acme-3")


def test_deep_sleep_account_deleted_without_a_signed_notice(accounts: Accounts, clock: Clock) -> None:
    a = accounts.create("acme", 0)
    accounts.add_device(a.id, "d1")
    clock.t = add_months(T0 + 15 * DAY_S, 12)
    accounts.tick()
    assert accounts.get(a.id).state == "deep_sleep"
    assert accounts.delete(a.id).account.state == "deleted"


def test_an_account_from_before_the_lifecycle_is_not_billed_backwards(reg: Registry, clock: Clock) -> None:
    """Migration 2 leaves bill_month 0 on older rows: scheduled at the first anniversary after the next tick."""
    aid = reg.insert_account("old", 3000, "active", T0)
    reg.set_account_fields(aid, bill_month=0, next_due_at=0)
    reg.ensure_device("d1", T0)
    reg.assign_device("d1", aid, None)
    accounts = Accounts(reg, clock=clock)
    clock.t = add_months(T0, 5) + DAY_S
    assert accounts.tick() == [] and accounts.get(aid).balance_cents == 3000
    assert accounts.get(aid).next_due_at == add_months(T0, 6)
    clock.t = add_months(T0, 6)
    accounts.tick()
    assert accounts.get(aid).balance_cents == 2600


def test_one_broken_account_does_not_stop_the_others_billing(reg: Registry, accounts: Accounts,
                                                              clock: Clock) -> None:
    bad, good = accounts.create("bad", 2000), accounts.create("good", 2000)
    for a, d in ((bad, "d1"), (good, "d2")):
        accounts.add_device(a.id, d)
    reg.set_account_fields(bad.id, price_list="1999-01")  # a price list this code does not know
    clock.t = at(2027, 2, 28)
    assert [c.account.name for c in accounts.tick()] == ["good"]
    assert accounts.get(good.id).balance_cents == 1600 and accounts.get(bad.id).balance_cents == 2000
    with pytest.raises(AccountError, match="unknown price list"):
        accounts.top_up(bad.id, 2000)
