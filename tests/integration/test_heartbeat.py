"""Heartbeats, status and alerts of a unit running the real firmware, as they cross a real broker."""

from __future__ import annotations

import json

from cloud_stub import protocol
from tests.conftest import FIRMWARE
from tests.integration.conftest import Observer, Stack, wait_until

HEARTBEAT_BUDGET_BYTES = 25  # docs/protocol.md; the whole point of the binary record


def test_heartbeat_has_every_field_and_fits_the_budget(stack: Stack) -> None:
    unit = stack.add_unit(start=False)
    unit.set_inputs(mains=True, temp_c=23.4, signal_dbm=-67)
    unit.start()
    topic = stack.topic(unit, "hb")
    payloads = wait_until(lambda: stack.observer.on(topic)[:2] if len(stack.observer.on(topic)) >= 2 else None,
                          20, "two heartbeats")
    for p in payloads:
        assert len(p) <= HEARTBEAT_BUDGET_BYTES
    first, second = (protocol.decode_heartbeat(p) for p in payloads)
    assert second.seq == first.seq + 1
    version: dict = {}
    exec((FIRMWARE / "version.py").read_text(), version)
    assert first.fw == tuple(version["VERSION"])
    assert first.mode == "active"
    assert first.desired_version >= 1  # the cloud published v1 when the device joined the account
    assert first.mains_present and not first.relay_on and first.clock_valid
    assert first.temperature_c == 23.4
    assert first.signal_dbm == -67
    assert first.free_heap > 0
    assert second.uptime_s >= first.uptime_s


def test_status_is_retained_online_and_the_cloud_sees_it(stack: Stack) -> None:
    unit = stack.add_unit()
    assert stack.cloud.wait_status(unit.device_id, "online", 10)
    late = Observer(stack.broker.host, stack.broker.port, stack.topic(unit, "status"), auth=stack.service_auth)
    try:
        wait_until(lambda: late.messages, 5, "the retained status")
        assert late.messages[0] == (stack.topic(unit, "status"), b"online", True)
    finally:
        late.close()


def test_link_loss_publishes_the_last_will(stack: Stack) -> None:
    unit = stack.add_unit()
    assert stack.cloud.wait_status(unit.device_id, "online", 10)
    unit.kill9()  # power cut: no DISCONNECT, the broker publishes the will
    assert stack.cloud.wait_status(unit.device_id, "offline", 30)


def test_mains_loss_and_return_alert_at_once(stack: Stack) -> None:
    unit = stack.add_unit()
    mark = unit.mark()
    unit.set_inputs(mains=False)
    unit.wait_log(r"unit: mains", 10, since=mark)
    unit.set_inputs(mains=True)
    topic = stack.topic(unit, "alert")
    alerts = wait_until(lambda: [json.loads(p) for p in stack.observer.on(topic)] if len(
        stack.observer.on(topic)) >= 2 else None, 10, "two alerts")
    assert [(a["t"], a["on"]) for a in alerts[:2]] == [("mains", False), ("mains", True)]


def test_relay_command_is_obeyed_and_acked(stack: Stack) -> None:
    unit = stack.add_unit(config={"hb_s": 60})  # a period far away: the report must not wait for it
    cid = stack.cloud.send_command(unit.device_id, "relay", "on")
    ack = stack.cloud.wait_ack(cid, 10)
    assert ack and ack["ok"], ack
    assert unit.relay() is True
    # The change is reported at once in a heartbeat, not at the next period.
    assert stack.cloud.wait_for(lambda: (stack.cloud.device(unit.device_id) or {}).get("hb_flags", 0) & 1, 2)
    cid = stack.cloud.send_command(unit.device_id, "relay", "toggle")
    assert (stack.cloud.wait_ack(cid, 10) or {}).get("ok")
    assert unit.relay() is False
    cid = stack.cloud.send_command(unit.device_id, "status")
    ack = stack.cloud.wait_ack(cid, 10)
    assert ack and ack["ok"] and ack["res"]["mode"] == "active"
    # The command topic never holds a retained message: a reboot must not replay a command.
    assert all(not retained for t, _, retained in stack.observer.messages if t.endswith("/cmd"))
