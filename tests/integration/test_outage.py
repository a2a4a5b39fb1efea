"""The broker goes away under running units and comes back: they reconnect with backoff and converge."""

from __future__ import annotations

import json
import re
from typing import Any

import paho.mqtt.client as mqtt

from provisioning.virtual.netproxy import NetProxy
from tests.integration.conftest import Stack, wait_until


class PersistentObserver:
    """Subscribes with a persistent session and renews it on every reconnect (paho reconnects by itself)."""

    def __init__(self, host: str, port: int, topic: str, auth: tuple[str, str] | None) -> None:
        self.got: list[dict[str, Any]] = []
        self.subscribed = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="outage-observer", clean_session=False)
        self.client.username_pw_set(*(auth or ("observer", "x")))  # a named session: amqtt keeps it
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", self.subscribed + 1)
        self.client.on_message = lambda _c, _u, m: self.got.append(json.loads(m.payload))
        self.client.connect(host, port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_broker_restart_reconnect_with_backoff_and_inflight_qos1_delivered(stack: Stack) -> None:
    proxy = NetProxy(stack.broker.host, stack.broker.port).start()
    unit = stack.add_unit(start=False, broker_port=proxy.port)
    unit.start()
    assert stack.cloud.wait_status(unit.device_id, "online", 20)
    alerts = PersistentObserver(stack.broker.host, stack.broker.port, stack.topic(unit, "alert"), stack.service_auth)
    proxy_port = proxy.port
    try:
        wait_until(lambda: alerts.subscribed, 5, "observer subscribed")

        mark = unit.mark()
        stack.broker.stop()
        proxy.stop()  # the unit's reconnects are refused until we open the path again
        unit.wait_log(r"mqtt: connection lost", 15, since=mark)
        unit.set_inputs(mains=False)  # an alert (QoS 1) raised while there is no broker
        unit.wait_log(r"unit: mains off", 5, since=mark)
        # Let it fail a few reconnects so the backoff shows.
        unit.wait_log(r"reconnect in \d+ ms \(attempt 3", 30, since=mark)

        stack.broker.start()
        subs = alerts.subscribed
        wait_until(lambda: alerts.subscribed > subs or stack.broker.name == "mosquitto", 15, "observer back")
        assert stack.cloud.wait_connected(15)
        proxy = NetProxy(stack.broker.host, stack.broker.port, port=proxy_port).start()

        got = wait_until(lambda: [a for a in alerts.got if a.get("t") == "mains"], 30, "the alert from the outage")
        assert got[0]["on"] is False

        delays = [int(m) for m in re.findall(r"reconnect in (\d+) ms", unit.console()[mark:])]
        caps = [int(m) for m in re.findall(r"cap (\d+) ms\)", unit.console()[mark:])]
        assert len(delays) >= 3
        assert caps[:3] == sorted(caps[:3]) and caps[2] > caps[0]  # exponential
        assert all(0 <= d <= c for d, c in zip(delays, caps, strict=False))  # jittered below the cap

        # And it converges on a change made after the outage.
        stack.cloud.charge(stack.account_id, stack.cloud.account(stack.account_id)["balance_cents"])
        assert stack.cloud.wait_converged(stack.account_id, 30)
        assert unit.reboots == 0 and unit.is_running
    finally:
        alerts.close()
        proxy.stop()
