"""Fixtures for the broker-enforcement tests: a cloud on the (enforcing) broker and raw MQTT clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_stub.service import Cloud
from tests.waiting import wait_until

V2 = mqtt.CallbackAPIVersion.VERSION2


class Client:
    """A paho client that records CONNACK, SUBACK codes, messages and when it lost the connection."""

    def __init__(self, broker: Any, client_id: str, username: str | None = None, password: str | None = None,
                 *, will: str | None = None, reconnect: bool = False) -> None:
        self.connack: Any = None
        self.connected_ev = threading.Event()
        self.answered = threading.Event()
        self.disconnected_at: float | None = None
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(V2, client_id=client_id, protocol=mqtt.MQTTv311, reconnect_on_failure=reconnect)
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            self.c.will_set(will, b"offline", qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect(broker.host, broker.port, keepalive=30)
        self.c.loop_start()

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack = rc
        if not rc.is_failure:
            self.connected_ev.set()
        self.answered.set()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        self.answered.set()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[Any], props: Any) -> None:
        self.subacks[mid] = [int(getattr(r, "value", r)) for r in rcs]

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((m.topic, bytes(m.payload)))

    def wait_answer(self, timeout: float = 5.0) -> bool:
        """True if the broker accepted the CONNECT, False if it refused it (or closed the connection)."""
        assert self.answered.wait(timeout), "no CONNACK"
        return self.connected_ev.is_set() and self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic_filter: str, timeout: float = 5.0) -> int:
        """The SUBACK return code for one filter: 0/1/2 granted QoS, 0x80 refused."""
        rc, mid = self.c.subscribe(topic_filter, 1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        deadline = time.monotonic() + timeout
        while mid not in self.subacks:
            assert time.monotonic() < deadline, f"no SUBACK for {topic_filter}"
            time.sleep(0.01)
        return self.subacks[mid][0]

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)  # a refused publish is still PUBACKed (MQTT 3.1.1 has no way to say no)

    def got(self, topic: str | None = None) -> list[tuple[str, bytes]]:
        with self.lock:
            return [m for m in self.messages if topic is None or m[0] == topic]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_until(pred, timeout, what, interval=0.01)


@pytest.fixture
def cloud(broker: Any, tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(broker.service_url, f"sqlite:///{tmp_path / 'cloud.db'}", hb_interval=1.0, sweep_interval=0.1,
              reconnect_delay=(0.1, 0.5))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def clients(broker: Any) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(client_id: str, username: str | None = None, password: str | None = None, **kw: Any) -> Client:
        cl = Client(broker, client_id, username, password, **kw)
        made.append(cl)
        return cl

    yield make
    for cl in made:
        cl.close()


@pytest.fixture
def observer(broker: Any, clients: Callable[..., Client]) -> Client:
    """The service account subscribed to everything under simsock/v1/ (what a subscriber would get)."""
    o = clients(f"sec-observer-{time.monotonic_ns()}", broker.service.username, broker.service.password)
    assert o.wait_answer()
    assert o.subscribe("simsock/v1/#") == 1
    return o
