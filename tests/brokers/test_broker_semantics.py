"""The broker semantics the unit protocol relies on, checked on every broker we ship or support.

These guard the amqtt corrections in cloud_stub/amqtt_fixes.py: the embedded broker must
behave like Mosquitto for persistent sessions and retained-message scoping.
"""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.waiting import poll

V2 = mqtt.CallbackAPIVersion.VERSION2

# Broker semantics with ad-hoc clients and topics: the open mode (the ACLs are tests/security's subject).
pytestmark = pytest.mark.open_broker


def _client(broker: Any, client_id: str, got: list, *, clean: bool = True, user: str | None = None) -> mqtt.Client:
    c = mqtt.Client(V2, client_id=client_id, clean_session=clean)
    if user:
        c.username_pw_set(user, "pw")
    c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, "retained") if m.retain else (m.topic, m.payload))
    c.on_connect = lambda _c, _u, flags, _rc, _p: got.append(("connack", flags.session_present))
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _wait(pred: Any, timeout: float = 5.0) -> bool:
    return bool(poll(pred, timeout, 0.05))


def test_persistent_session_delivers_queued_qos1_messages_unretained(broker: Any) -> None:
    got: list = []
    unit = _client(broker, "unit-a", got, clean=False, user="unit-a")
    unit.subscribe("t/unit-a/cmd", 1)
    assert _wait(lambda: ("connack", False) in got)
    time.sleep(0.3)
    unit.disconnect()
    unit.loop_stop()
    cloud = _client(broker, "cloud", [])
    cloud.publish("t/unit-a/cmd", b"queued", qos=1).wait_for_publish(5)
    time.sleep(0.3)
    unit = _client(broker, "unit-a", got, clean=False, user="unit-a")
    try:
        assert _wait(lambda: ("t/unit-a/cmd", b"queued") in got), got
        assert ("connack", True) in got
    finally:
        unit.disconnect()
        cloud.disconnect()


def test_retained_messages_reach_only_their_subscribers(broker: Any) -> None:
    cloud = _client(broker, "cloud", [])
    cloud.subscribe("t/+/status", 1)
    cloud.publish("t/other/status", b"online", qos=1, retain=True).wait_for_publish(5)
    cloud.publish("t/unit-b/desired", b"{}", qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.3)
    got: list = []
    unit = _client(broker, "unit-b", got, clean=False, user="unit-b")
    unit.subscribe("t/unit-b/desired", 1)
    try:
        assert _wait(lambda: ("t/unit-b/desired", b"{}", "retained") in got)
        time.sleep(0.5)
        assert [m for m in got if m[0] != "connack"] == [("t/unit-b/desired", b"{}", "retained")]
    finally:
        unit.disconnect()
        cloud.disconnect()


def test_reconnecting_session_gets_retained_messages_once(broker: Any) -> None:
    """Retained messages come with a SUBSCRIBE, not again on reconnect (MQTT 3.1.1, 3.3.1.3)."""
    cloud = _client(broker, "cloud", [])
    cloud.publish("t/unit-c/desired", b"{}", qos=1, retain=True).wait_for_publish(5)
    got: list = []
    unit = _client(broker, "unit-c", got, clean=False, user="unit-c")
    unit.subscribe("t/unit-c/desired", 1)
    assert _wait(lambda: ("t/unit-c/desired", b"{}", "retained") in got)
    unit.disconnect()
    unit.loop_stop()
    got.clear()
    unit = _client(broker, "unit-c", got, clean=False, user="unit-c")
    unit.subscribe("t/unit-c/desired", 1)  # a unit renews its subscriptions on every connect
    try:
        assert _wait(lambda: any(m[0] == "t/unit-c/desired" for m in got))
        time.sleep(0.5)
        assert [m for m in got if m[0] != "connack"] == [("t/unit-c/desired", b"{}", "retained")]
    finally:
        unit.disconnect()
        cloud.disconnect()
