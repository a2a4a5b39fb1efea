"""A whole stack per test: a real broker (each kind), the cloud, and virtual units running the real firmware."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_stub.service import Cloud
from provisioning.demo import SCALED_CONFIG, SCALED_HB_S
from provisioning.virtual.fleet import Fleet
from provisioning.virtual.unit import VirtualUnit
from tests.waiting import wait_until

__all__ = ["Observer", "Stack", "wait_until"]


class Observer:
    """A paho client that records what crosses the broker: the test's own eyes on the wire."""

    def __init__(self, host: str, port: int, topics: str = "simsock/v1/#", auth: tuple[str, str] | None = None) -> None:
        """`auth`: (username, password), the service account on an enforcing broker (Stack.service_auth)."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"observer-{id(self):x}")
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topics, 1)
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        out = []
        for p in self.on(topic):
            try:
                out.append(json.loads(p))
            except ValueError:
                continue
        return out

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Stack:
    broker: Any
    cloud: Cloud
    fleet: Fleet
    observer: Observer
    account_id: int
    tmp: Path
    units: list[VirtualUnit] = field(default_factory=list)

    @property
    def service_auth(self) -> tuple[str, str] | None:
        """The broker's service account (None on an open broker): what observers log in with."""
        return service_auth(self.broker)

    def add_unit(self, config: dict[str, Any] | None = None, start: bool = True, **kw: Any) -> VirtualUnit:
        """A virtual unit on the account, with MQTT credentials the cloud issued (as the bench will)."""
        device_id = kw.pop("device_id", None) or self.fleet.next_id()
        if "mqtt_pass" not in kw:
            kw["mqtt_user"], kw["mqtt_pass"] = self.cloud.issue_credentials(device_id)
        unit = self.fleet.add(device_id, config={**SCALED_CONFIG, **(config or {})}, **kw)
        self.cloud.add_device(self.account_id, unit.device_id)
        self.units.append(unit)
        if start:
            unit.start()
            # "online" is published after the unit subscribed: from then on commands reach it.
            if not self.cloud.wait_status(unit.device_id, "online", 20):
                raise AssertionError(f"{unit.device_id} never came online:\n" + "\n".join(unit.console_tail(20)))
        return unit

    def topic(self, unit: VirtualUnit, leaf: str) -> str:
        return f"simsock/v1/{unit.device_id}/{leaf}"


def service_auth(broker: Any) -> tuple[str, str] | None:
    return (broker.service.username, broker.service.password) if getattr(broker, "auth", False) else None


@pytest.fixture
def stack(broker: Any, tmp_path: Path) -> Iterator[Stack]:
    cloud = Cloud(broker.service_url, f"sqlite:///{tmp_path / 'cloud.db'}", hb_interval=SCALED_HB_S, sweep_interval=0.5,
                  reconnect_delay=(0.2, 1.0))
    cloud.start()
    observer = Observer(broker.host, broker.port, auth=service_auth(broker))
    account = cloud.create_account("test", balance_cents=1000)
    with Fleet(tmp_path / "units", prefix="it", broker_host=broker.host, broker_port=broker.port) as fleet:
        try:
            yield Stack(broker, cloud, fleet, observer, account.id, tmp_path)
        finally:
            observer.close()
            cloud.close()
