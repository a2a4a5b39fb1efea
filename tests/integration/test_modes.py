"""Account state → unit mode, end to end: apply, ack, persist, survive power cuts, ignore stale versions."""

from __future__ import annotations

import json

from tests.integration.conftest import Stack, wait_until


def _suspend(stack: Stack) -> int:
    change = stack.cloud.charge(stack.account_id, stack.cloud.account(stack.account_id)["balance_cents"])
    return max(d.version for d in change.desired)


def _resume(stack: Stack) -> int:
    change = stack.cloud.top_up(stack.account_id, 2000)
    return max(d.version for d in change.desired)


def test_suspend_is_applied_acked_persisted_and_survives_a_power_cut(stack: Stack) -> None:
    unit = stack.add_unit()
    v = _suspend(stack)
    assert stack.cloud.wait_converged(stack.account_id, 15)
    wait_until(lambda: {"dv": v, "ok": True, "mode": "suspended"} in stack.observer.json_on(stack.topic(unit, "ack")),
               5, "the suspend ack on the wire")
    assert unit.state()["mode"] == "suspended" and unit.state()["v"] == v
    assert stack.cloud.wait_status(unit.device_id, "dormant", 10)

    unit.restart()  # kill -9 and boot again: a power cut
    mark = unit.mark()
    unit.wait_log(r"unit: checkin done", 20, since=mark)
    assert unit.state()["mode"] == "suspended"
    assert "unit: connected" not in unit.console()[mark:]  # never back on the permanent connection

    # Stays suspended until a newer version says otherwise.
    v2 = _resume(stack)
    assert v2 > v
    assert stack.cloud.wait_converged(stack.account_id, 20)
    assert stack.cloud.wait_status(unit.device_id, "online", 10)
    assert unit.state()["mode"] == "active"


def test_older_or_equal_versions_are_ignored(stack: Stack) -> None:
    unit = stack.add_unit()
    v = _suspend(stack)
    assert stack.cloud.wait_converged(stack.account_id, 15)
    # The baseline counts the suspend ack itself: wait until the observer has it too.
    wait_until(lambda: any(a.get("dv") == v for a in stack.observer.json_on(stack.topic(unit, "ack"))), 10,
               "the suspend ack on the wire")
    mark = unit.mark()
    acks_before = len(stack.observer.on(stack.topic(unit, "ack")))
    # A stale "active" at the same and at an older version, as a replayed or misordered publish would be.
    for stale in (v, v - 1):
        stack.observer.publish(stack.topic(unit, "desired"), json.dumps({"v": stale, "mode": "active"}), retain=True)
    unit.wait_log(r"unit: checkin done", 20, since=mark)
    unit.wait_log(r"unit: checkin done", 20, since=unit.last_offset + 1)  # two check-ins saw it
    assert unit.state() == {**unit.state(), "mode": "suspended", "v": v}
    assert len(stack.observer.on(stack.topic(unit, "ack"))) == acks_before  # ignored: no ack at all


def test_suspended_unit_refuses_relay_commands_with_a_reason(stack: Stack) -> None:
    unit = stack.add_unit()
    _suspend(stack)
    assert stack.cloud.wait_status(unit.device_id, "dormant", 15)
    cid = stack.cloud.send_command(unit.device_id, "relay", "on")  # queued until the next check-in
    ack = stack.cloud.wait_ack(cid, 20)
    assert ack is not None and not ack["ok"] and "suspended" in ack["err"]
    assert unit.relay() is False


def test_default_relay_policy_keeps_the_load_powered(stack: Stack) -> None:
    unit = stack.add_unit()
    assert (stack.cloud.wait_ack(stack.cloud.send_command(unit.device_id, "relay", "on"), 10) or {}).get("ok")
    _suspend(stack)
    assert stack.cloud.wait_converged(stack.account_id, 15)
    assert unit.relay() is True  # billing never cuts a customer's power by default


def test_relay_off_policy_cuts_on_suspend_and_restores_on_resume(stack: Stack) -> None:
    unit = stack.add_unit(config={"relay_on_suspend": "off"})
    assert (stack.cloud.wait_ack(stack.cloud.send_command(unit.device_id, "relay", "on"), 10) or {}).get("ok")
    _suspend(stack)
    assert stack.cloud.wait_converged(stack.account_id, 15)
    assert unit.relay() is False
    _resume(stack)
    assert stack.cloud.wait_converged(stack.account_id, 20)  # at the next check-in
    wait_until(unit.relay, 5, "relay restored on resume")
