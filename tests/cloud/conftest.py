"""Fixtures for the cloud tests: a fast-timing Cloud on the shared broker, and fake units.

The fake units are paho-mqtt clients that speak the v1 protocol from the unit's side
(heartbeats packed with struct, status with a last will, desired-state and command
acks). That is enough to test the cloud here; the real firmware is exercised on the
MicroPython unix port by tests/firmware and the integration tests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_stub import protocol
from cloud_stub.service import Cloud
from tests.waiting import poll


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> bool:
    return bool(poll(predicate, timeout, interval))


def service_login(client: mqtt.Client, broker: Any) -> None:
    """Log `client` in with the broker's service account (the enforcing brokers admit no anonymous client)."""
    if getattr(broker, "auth", False):
        client.username_pw_set(broker.service.username, broker.service.password)


class FakeUnit:
    """One unit's MQTT side: client id = device id, will on `status`, subscribes desired + cmd."""

    def __init__(
        self,
        broker: Any,
        device_id: str,
        *,
        auto_ack: bool = True,
        will: str = "offline",
        mode: str = "active",
    ) -> None:
        self.broker = broker
        self.device_id = device_id
        self.auto_ack = auto_ack
        self.will = will
        self.mode = mode
        self.applied_v = 0
        self.seq = 0
        self.desired: list[tuple[int, str, bool]] = []  # (v, mode, retained)
        self.cmds: list[tuple[dict[str, Any], bool]] = []  # (command, retained)
        self.lock = threading.Lock()
        self.client: mqtt.Client | None = None

    def t(self, leaf: str) -> str:
        return protocol.topic(self.device_id, leaf)

    def connect(self, status: str | None = "online") -> FakeUnit:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.device_id, clean_session=True)
        service_login(c, self.broker)  # these tests are about the cloud; unit ACLs: tests/security
        c.will_set(self.t("status"), self.will, qos=1, retain=True)
        c.on_message = self._on_message
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        c.connect(self.broker.host, self.broker.port, keepalive=60)
        c.loop_start()
        assert connected.wait(5), "fake unit could not connect"
        self.client = c
        subacked = threading.Event()
        c.on_subscribe = lambda *a: subacked.set()
        c.subscribe([(self.t("desired"), 1), (self.t("cmd"), 1)])
        if not subacked.wait(3):  # seen once in many runs on amqtt: a SUBACK that never came; ask again
            c.subscribe([(self.t("desired"), 1), (self.t("cmd"), 1)])
            assert subacked.wait(5), "fake unit got no SUBACK"
        if status:
            self.publish("status", status, retain=True)
        return self

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic not in (self.t("desired"), self.t("cmd")):
            return  # amqtt sends a connecting client retained messages of other clients' filters
        leaf = msg.topic.rsplit("/", 1)[1]
        if leaf == "desired":
            v, mode = protocol.parse_desired(msg.payload)
            with self.lock:
                self.desired.append((v, mode, bool(msg.retain)))
                newer = v > self.applied_v
                if newer:
                    self.applied_v, self.mode = v, mode
            if newer and self.auto_ack:
                client.publish(self.t("ack"), json.dumps({"dv": v, "ok": True, "mode": mode}), qos=1)
        elif leaf == "cmd":
            cmd = json.loads(msg.payload)
            with self.lock:
                self.cmds.append((cmd, bool(msg.retain)))
            if self.auto_ack and not msg.retain:
                client.publish(self.t("ack"), json.dumps({"id": cmd["id"], "ok": True, "res": {"relay": True}}), qos=1)

    def publish(self, leaf: str, payload: bytes | str, retain: bool = False) -> None:
        assert self.client is not None
        info = self.client.publish(self.t(leaf), payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def hb(self, n: int = 1, gap: float = 0.0, **fields: Any) -> None:
        for i in range(n):
            self.seq += 1
            payload = protocol.encode_heartbeat(
                self.seq, mode=fields.get("mode", self.mode), desired_version=fields.get("dv", self.applied_v),
                fw=(1, 2, 3), uptime_s=self.seq * 5, relay_on=True, temperature_c=21.5, signal_dbm=-71,
                free_heap=50_000,
            )
            self.publish("hb", payload)
            if gap and i < n - 1:
                time.sleep(gap)

    def ack_desired(self, v: int, ok: bool = True) -> None:
        self.publish("ack", json.dumps({"dv": v, "ok": ok, "mode": self.mode}))

    def disconnect(self) -> None:
        """Clean DISCONNECT: the broker drops the will."""
        if self.client:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, like a unit losing power: the will fires."""
        if self.client:
            sock = self.client.socket()
            self.client.loop_stop()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.client = None


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cloud.db'}"


@pytest.fixture
def cloud(broker: Any, db_url: str) -> Iterator[Cloud]:
    c = Cloud(broker.service_url, db_url, hb_interval=1.0, sweep_interval=0.05, reconnect_delay=(0.1, 0.5))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def units(broker: Any) -> Iterator[Callable[..., FakeUnit]]:
    made: list[FakeUnit] = []

    def make(device_id: str, connect: bool = True, **kw: Any) -> FakeUnit:
        u = FakeUnit(broker, device_id, **kw)
        made.append(u)
        return u.connect() if connect else u

    yield make
    for u in made:
        u.disconnect()


def subscribe_once(broker: Any, topic_filter: str, wait: float = 0.5) -> list[mqtt.MQTTMessage]:
    """Distinct messages a fresh subscriber gets on `topic_filter` within `wait` seconds.

    amqtt 0.12.1 quirk: on every CONNECT it sends the new client the retained messages of
    *every* filter any client subscribed to (broker.py, "pre-existing session's
    subscriptions"), so a client also gets topics it never subscribed to, and duplicates.
    Hence the topic filter and the de-duplication here (units must filter by topic too).
    """
    got: list[mqtt.MQTTMessage] = []
    seen: set[tuple[str, bytes, bool]] = set()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        key = (msg.topic, bytes(msg.payload), bool(msg.retain))
        if mqtt.topic_matches_sub(topic_filter, msg.topic) and key not in seen:
            seen.add(key)
            got.append(msg)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
    service_login(c, broker)
    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.subscribe(topic_filter, qos=1)
    c.loop_start()
    time.sleep(wait)
    c.disconnect()
    c.loop_stop()
    return got


@pytest.fixture
def probe(broker: Any) -> Callable[..., list[mqtt.MQTTMessage]]:
    return lambda topic_filter, wait=0.5: subscribe_once(broker, topic_filter, wait)


@pytest.fixture
def until() -> Callable[..., bool]:
    return wait_until
