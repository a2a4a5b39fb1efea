"""Several cloud workers share ingestion through MQTT shared subscriptions (Mosquitto).

Every message is ingested exactly once by one of the workers, whichever it is; desired
state goes out through the one publisher, also for account changes a pure ingest worker
makes; and the embedded broker (amqtt 0.12) is shown to lack shared subscriptions, which
is why the docs call it single-worker.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_stub import protocol
from cloud_stub.broker import EmbeddedBroker
from cloud_stub.service import Cloud
from tests.scale.conftest import plain_broker
from tests.waiting import poll


def _client(broker: Any, client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _heartbeat(seq: int, dv: int = 0) -> bytes:
    return protocol.encode_heartbeat(seq, mode="active", desired_version=dv, fw=(1, 2, 3), uptime_s=seq,
                                     relay_on=True, temperature_c=21.5, signal_dbm=-70, free_heap=40_000)


def _wait(pred: Any, timeout: float) -> bool:
    return bool(poll(pred, timeout))


def test_two_workers_split_the_stream_and_ingest_each_message_once(mosquitto: Any, registry_url: str) -> None:
    opts = {"hb_interval": 60.0, "sweep_interval": 0.05, "worker_group": "ingest"}
    a = Cloud(mosquitto.url, registry_url, publisher=True, **opts).start()
    b = Cloud(mosquitto.url, registry_url, publisher=False, **opts).start()
    seen: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}
    a.add_listener(lambda e: e.kind in ("hb", "ack") and seen["a"].update([e.kind]))
    b.add_listener(lambda e: e.kind in ("hb", "ack") and seen["b"].update([e.kind]))
    pub = _client(mosquitto, "load")
    try:
        assert a.subscription("hb") == "$share/ingest/simsock/v1/+/hb"
        devices, beats = 10, 12
        for seq in range(1, beats + 1):
            for d in range(devices):
                pub.publish(protocol.topic(f"dev-{d}", "hb"), _heartbeat(seq), qos=1)
        total = devices * beats
        assert _wait(lambda: a.heartbeat_count() == total, 15), a.heartbeat_count()
        time.sleep(0.3)
        assert a.heartbeat_count() == total  # nothing ingested twice
        assert seen["a"]["hb"] + seen["b"]["hb"] == total
        assert seen["a"]["hb"] > 0 and seen["b"]["hb"] > 0, seen  # both took a share
        assert all(a.heartbeat_count(f"dev-{d}") == beats for d in range(devices))

        # an account change made through the ingest-only worker: stored, published by the publisher
        desired: list[tuple[str, bytes]] = []
        unit = _client(mosquitto, "dev-0")
        unit.on_message = lambda c, u, m: desired.append((m.topic, bytes(m.payload)))
        unit.subscribe(protocol.topic("dev-0", "desired"), qos=1)
        b.create_account("acme", 5000)
        change = b.add_device("acme", "dev-0")
        assert change.published == []  # b never publishes desired state
        v = change.desired[0].version
        assert _wait(lambda: any(json.loads(p).get("v") == v for _, p in desired), 5), desired
        assert _wait(lambda: (b.registry.desired("dev-0") or {}).get("published_at") is not None, 5)
        unit.publish(protocol.topic("dev-0", "ack"), json.dumps({"dv": v, "ok": True, "mode": "active"}), qos=1)
        assert _wait(lambda: not a.convergence("acme")["pending"], 5)  # whichever worker took the ack
        unit.disconnect()
        unit.loop_stop()
    finally:
        pub.disconnect()
        pub.loop_stop()
        a.close()
        b.close()


def test_bad_worker_group_is_refused() -> None:
    for bad in ("", "a/b", "a+", "#", "$x", "a b"):
        with pytest.raises(ValueError, match="worker_group"):
            Cloud("mqtt://127.0.0.1:1", "sqlite:///:memory:", worker_group=bad)


def test_the_embedded_broker_has_no_shared_subscriptions() -> None:
    """amqtt 0.12 treats `$share/…` as a plain filter that never matches: one worker only there.
    If this starts failing, amqtt learnt shared subscriptions and docs/scale.md should say so."""
    broker = plain_broker(EmbeddedBroker)
    broker.start()
    got = threading.Event()
    try:
        sub = _client(broker, "worker")
        sub.on_message = lambda *a: got.set()
        sub.subscribe("$share/ingest/simsock/v1/+/hb", qos=1)
        time.sleep(0.3)
        pub = _client(broker, "load")
        pub.publish(protocol.topic("dev-1", "hb"), _heartbeat(1), qos=1).wait_for_publish(5)
        assert not got.wait(1.0)
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()


def test_shared_subscriptions_pass_the_brokers_acls() -> None:
    """With per-unit credentials and dynamic-security ACLs, the cloud's service role must be
    allowed to subscribe `$share/<group>/simsock/v1/…` (Mosquitto checks the whole filter)."""
    import inspect
    from urllib.parse import urlsplit

    from cloud_stub.broker import MosquittoBroker

    if not MosquittoBroker.available() or "auth" not in inspect.signature(MosquittoBroker).parameters:
        pytest.skip("needs mosquitto with the project's auth/ACL support")
    if not MosquittoBroker.dynsec_available():  # type: ignore[attr-defined]
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    from cloud_stub import acl

    if not any(a["topic"].startswith("$share/") for a in acl.service_acls()):
        pytest.xfail("cloud_stub/acl.py service_acls() has no subscribePattern for $share/+/simsock/v1/# yet")
    broker = MosquittoBroker()
    broker.start()
    try:
        cloud = Cloud(broker.service_url, "sqlite:///:memory:", worker_group="ingest").start()
        u = urlsplit(broker.service_url)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="acl-probe")
        pub.username_pw_set(u.username, u.password)
        pub.connect(u.hostname or "127.0.0.1", u.port or 1883)
        pub.loop_start()
        pub.publish(protocol.topic("dev-acl", "hb"), _heartbeat(1), qos=1).wait_for_publish(5)
        assert _wait(lambda: cloud.heartbeat_count("dev-acl") == 1, 5)
        pub.disconnect()
        pub.loop_stop()
        cloud.close()
    finally:
        broker.stop()
