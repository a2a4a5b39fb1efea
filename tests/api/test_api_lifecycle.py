"""The account lifecycle through the API (a stack of its own: this module moves the cloud's clock)."""

from __future__ import annotations

import pytest

from provisioning.api_client import ApiError

DAY = 86_400.0


def latest(admin, **filters):
    return admin.audit(**filters, limit=1)[0]


def test_suspended_account_sleeps_after_15_days_and_a_top_up_wakes_it(stack, admin, name) -> None:
    acct, on, off = name("life"), name("on"), name("off")
    unit = stack.unit(on)
    with stack.client("operator") as op:
        a = op.create_account(acct, "20.00")
        assert a.currency == "USD" and a.next_due_at is not None
        op.add_device(acct, on)
        op.add_device(acct, off)
        op.charge(acct, "25.00")
        assert op.account(acct).state == "suspended"

        stack.clock.advance(15 * DAY + 60)
        op.lifecycle_tick()  # the sweeper may have got there first: the tick is idempotent
        assert stack.cloud.wait_for(lambda: op.account(acct).state == "sleep", 5)
        assert stack.cloud.wait_for(lambda: unit.mode == "sleep", 5)
        detail = op.account(acct)
        assert detail.convergence.pending == [off] and detail.convergence.converged == [on]
        ledger = op.ledger(acct)
        assert [(e.kind, e.amount_cents) for e in ledger] == [("opening", 2000), ("charge", -2500),
                                                              ("sleep_fee", -400)]  # 2 units x 2.00
        assert ledger[-1].balance_cents == -900
        assert op.notifications(acct), "every transition brings an essential notification"
        tick = latest(admin, action="lifecycle.tick")
        assert tick.role == "operator" and tick.target_type == "lifecycle"

        ch = op.top_up(acct, "40.00")
        assert ch.account.state == "active" and ch.old_state == "sleep"
        assert any(s.kind == "transition" and s.new_state == "active" for s in ch.steps)


def test_delink_and_restore_are_the_rma_role(stack, admin, name) -> None:
    acct, d1, d2 = name("rma"), name("d1"), name("d2")
    admin.create_account(acct, "100.00")
    admin.add_device(acct, d1)
    admin.add_device(acct, d2)
    with stack.client("rma") as rma, stack.client("operator") as op:
        with pytest.raises(ApiError) as e:
            rma.delink_device(acct, d2)
        assert e.value.status == 422 and "signed application" in e.value.message
        with pytest.raises(ApiError) as e:
            op.delink_device(acct, d2, signed_application=True)
        assert e.value.status == 403

        ch = rma.delink_device(acct, d2, signed_application=True)
        assert [(d.device_id, d.mode) for d in ch.desired] == [(d2, "delinked")]
        e1 = latest(admin, action="device.delink")
        assert (e1.target_type, e1.target_id, e1.role) == ("device", d2, "rma")
        assert e1.before["desired"]["mode"] == "active" and e1.after["desired"]["mode"] == "delinked"
        assert admin.account(acct).state == "active"

        ch = rma.restore_device(acct, d2)
        assert ch.account.balance_cents == 10_000 - 5_000  # the restore fee (seed 9.4: 50)
        assert [(d.device_id, d.mode) for d in ch.desired] == [(d2, "active")]
        e2 = latest(admin, action="device.restore")
        assert e2.before["desired"]["mode"] == "delinked" and e2.after["desired"]["mode"] == "active"


def test_features_quote_add_and_early_cancel(stack, admin, name) -> None:
    acct = name("feat")
    admin.create_account(acct, "30.00")
    q = admin.quote_feature(acct, "sms_alerts")
    assert q.monthly_cents == 150 and q.currency == "USD"
    added = admin.add_feature(acct, "sms_alerts")
    assert added.quote.feature == "sms_alerts"
    assert latest(admin, action="feature.add").detail == {"feature": "sms_alerts"}
    with pytest.raises(ApiError) as e:
        admin.cancel_feature(acct, "sms_alerts")
    assert e.value.status == 422 and e.value.code == "rejected"
    with pytest.raises(ApiError) as e:
        admin.add_feature(acct, "teleportation")
    assert e.value.status == 422


def test_minimum_top_up_sleep_on_request_delete_and_reopen(stack, admin, name) -> None:
    acct, dev = name("del"), name("dd")
    admin.create_account(acct, "0")
    admin.add_device(acct, dev)
    with pytest.raises(ApiError) as e:
        admin.top_up(acct, "5.00")
    assert e.value.status == 422 and "at least 20.00" in e.value.message
    ch = admin.enter_sleep(acct)
    assert (ch.old_state, ch.account.state) == ("suspended", "sleep")
    with pytest.raises(ApiError) as e:
        admin.delete_account(acct)
    assert e.value.status == 422 and "signed" in e.value.message
    ch = admin.delete_account(acct, signed_notice=True)
    assert ch.account.state == "deleted" and [d.mode for d in ch.desired] == ["delinked"]
    e1 = latest(admin, action="account.delete")
    assert e1.before["state"] == "sleep" and e1.after["state"] == "deleted"
    with pytest.raises(ApiError) as e:
        admin.top_up(acct, "20.00")
    assert e.value.status == 422
    new = name("new")
    ch = admin.reopen_account(acct, new)
    assert ch.account.name == new and ch.account.balance_cents == -5000  # the new-account fee per device
    e2 = latest(admin, action="account.reopen")
    assert e2.target_id == str(ch.account.id) and e2.before["state"] == "deleted"
    assert admin.account(new).devices == [dev]
