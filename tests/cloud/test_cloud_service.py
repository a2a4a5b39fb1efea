"""Cloud against a real broker (embedded amqtt and Mosquitto), with paho clients as fake units.

Fake units are fine here: these tests pin the cloud's side of docs/protocol.md. The
firmware's side runs on MicroPython in tests/firmware and the integration tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud_stub import protocol
from cloud_stub.registry import NotFound, Registry
from cloud_stub.run import serve
from cloud_stub.service import BrokerURLError, Cloud, CloudEvent, parse_broker_url


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884)
    assert parse_broker_url("mqtt://broker.local") == ("broker.local", 1883)
    for bad in ("tcp://h:1", "mqtt://", "mqtt://h:99999", "h:1883", "mqtt://h:1/x", "mqtts://h:8883"):
        with pytest.raises(BrokerURLError):
            parse_broker_url(bad)


def test_unreachable_broker_fails_start(tmp_path: Path) -> None:
    from cloud_stub.broker import free_port

    c = Cloud(f"mqtt://127.0.0.1:{free_port()}", f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(ConnectionError, match="cannot reach"):
        c.start(timeout=0.5)
    c.close()


def test_heartbeats_status_and_will(cloud, units, until) -> None:
    events: list[CloudEvent] = []
    cloud.add_listener(events.append)
    u = units("dev-1")
    assert cloud.wait_status("dev-1", "online", 5)
    u.hb(3)
    assert cloud.wait_heartbeats("dev-1", 3, 5)
    d = cloud.device("dev-1")
    assert (d["hb_count"], d["last_seq"], d["hb_fw"], d["hb_mode"], d["online"]) == (3, 3, "1.2.3", "active", True)
    assert (d["hb_temperature_c"], d["hb_signal_dbm"], d["hb_free_heap"], d["hb_uptime_s"]) == (21.5, -71, 50000, 15)
    assert d["account_id"] is None and d["last_seen"] > 0
    assert cloud.heartbeat_count() == 3

    u.publish("hb", b"\x01short")  # refused by the decoder, the cloud keeps going
    u.publish("hb", protocol.encode_heartbeat(99)[:-1] + b"\x00\x00")
    u.hb()
    assert cloud.wait_heartbeats("dev-1", 4, 5) and cloud.heartbeat_count("dev-1") == 4

    u.kill()  # no DISCONNECT: the broker publishes the will
    assert cloud.wait_status("dev-1", "offline", 10)
    assert not cloud.device("dev-1")["online"]
    kinds = {e.kind for e in events}
    assert {"hb", "status"} <= kinds
    assert [e.data["status"] for e in events if e.kind == "status"] == ["online", "offline"]
    assert [e["detail"]["to"] for e in cloud.events(device_id="dev-1", kind="device.status")] == ["online", "offline"]


def test_dormant_checkin(cloud, units) -> None:
    u = units("dev-2", will="dormant", mode="suspended")
    u.publish("status", "dormant", retain=True)
    assert cloud.wait_status("dev-2", "dormant", 5)
    u.hb()
    assert cloud.wait_heartbeats("dev-2", 1, 5)
    u.disconnect()  # the check-in ends; still dormant, not offline
    time.sleep(0.3)
    d = cloud.device("dev-2")
    assert (d["status"], d["online"], d["hb_mode"]) == ("dormant", False, "suspended")


def test_heartbeat_timeout_marks_offline_and_a_heartbeat_revives(cloud, units) -> None:
    u = units("dev-3")
    u.hb(4, gap=0.1)  # the cloud learns a ~0.1 s interval -> timeout ~0.25 s
    assert cloud.wait_heartbeats("dev-3", 4, 5)
    assert cloud.device("dev-3")["hb_interval_s"] == pytest.approx(0.1, abs=0.08)
    assert cloud.wait_status("dev-3", "offline", 5)  # silent, connection still up
    d = cloud.device("dev-3")
    assert d["status_reason"] == "hb_timeout"
    u.hb()
    assert cloud.wait_status("dev-3", "online", 5)
    assert cloud.device("dev-3")["status_reason"] == "heartbeat"


def test_timeout_counts_from_when_the_cloud_started_listening(broker, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with Registry(url) as reg:  # a device that was online an hour before the cloud (re)started
        reg.ensure_device("old", 0)
        reg.set_status("old", "online", time.time() - 3600, "status")
        reg.touch("old", time.time() - 3600)
    with Cloud(broker.service_url, url, hb_timeout=0.6, sweep_interval=0.05) as c:
        time.sleep(0.3)
        assert c.device("old")["status"] == "online"
        assert c.wait_status("old", "offline", 3)


def test_desired_state_retained_with_increasing_versions(cloud, units, probe, until) -> None:
    acct = cloud.create_account("acme", 1000)
    u = units("dev-4")
    cloud.add_device(acct.id, "dev-4")
    cloud.charge(acct.id, 1000)
    cloud.top_up(acct.id, 2000)  # the minimum top-up
    cloud.charge("acme", 2000)
    assert until(lambda: len(u.desired) == 4)
    assert [(v, m) for v, m, _ in u.desired] == [(1, "active"), (2, "suspended"), (3, "active"), (4, "suspended")]
    retained = probe(protocol.topic("dev-4", "desired"))
    assert len(retained) == 1 and retained[0].retain
    assert json.loads(retained[0].payload) == {"v": 4, "mode": "suspended"}
    assert cloud.wait_converged(acct.id, 5)
    assert [a["version"] for a in cloud.acks("dev-4")] == [1, 2, 3, 4]


def test_republish_after_broker_restart(cloud, broker, units, probe, until) -> None:
    acct = cloud.create_account("acme", 1000)
    for d in ("r1", "r2"):
        cloud.add_device(acct.id, d)
    cloud.charge(acct.id, 1000)
    assert cloud.connections == 1
    broker.restart()  # amqtt forgets retained messages; Mosquitto keeps them on disk
    assert cloud.wait_for(lambda: cloud.connections == 2 and cloud.connected, 15)
    want = {protocol.topic("r1", "desired"): {"v": 2, "mode": "suspended"},
            protocol.topic("r2", "desired"): {"v": 2, "mode": "suspended"}}
    assert until(lambda: {m.topic: json.loads(m.payload)
                          for m in probe("simsock/v1/+/desired", 0.3) if m.retain} == want, 5)
    # and a unit connecting after the restart converges on it
    units("r1")
    assert cloud.wait_for(lambda: "r1" in cloud.convergence(acct.id)["converged"], 5)


def test_convergence_with_some_units_offline(cloud, units) -> None:
    acct = cloud.create_account("fleet", 500)
    up = [units(f"f{i}") for i in (1, 2)]
    late = units("f3", connect=False)
    for d in ("f1", "f2", "f3"):
        cloud.add_device("fleet", d)
    assert cloud.wait_for(lambda: cloud.convergence(acct.id)["converged"] == ["f1", "f2"], 5)
    cloud.charge("fleet", 500)
    assert cloud.wait_for(lambda: cloud.convergence(acct.id) == {"converged": ["f1", "f2"], "pending": ["f3"]}, 5)
    assert all(u.applied_v == 2 and u.mode == "suspended" for u in up)
    assert not cloud.wait_converged(acct.id, 0.3)
    late.connect()  # the retained desired state (v2) is waiting for it
    assert cloud.wait_converged(acct.id, 5)
    assert set(late.desired) == {(2, "suspended", True)}  # amqtt may deliver a retained message twice
    acct_view = cloud.account(acct.id)
    assert acct_view["state"] == "suspended" and acct_view["convergence"]["pending"] == []


def test_heartbeat_reported_version_converges_without_ack(cloud, units, until) -> None:
    acct = cloud.create_account("quiet", 500)
    u = units("q1", auto_ack=False)
    cloud.add_device(acct.id, "q1")
    assert until(lambda: u.applied_v == 1)
    assert cloud.convergence(acct.id)["pending"] == ["q1"]
    u.hb()  # carries dv=1
    assert cloud.wait_converged(acct.id, 5)
    u.ack_desired(1, ok=False)  # a refusal is recorded but does not un-apply
    assert cloud.wait_for(lambda: len(cloud.acks("q1")) == 1, 5)
    assert cloud.acks("q1")[0]["ok"] is False and cloud.device("q1")["converged"]


def test_commands_are_never_retained_and_acked(cloud, units, probe, until) -> None:
    u = units("c1")
    assert cloud.wait_status("c1", "online", 5)
    cmd_id = cloud.send_command("c1", "relay", "on", exp=int(time.time()) + 60)
    ack = cloud.wait_ack(cmd_id, 5)
    assert ack is not None and ack["ok"] is True and ack["res"] == {"relay": True} and ack["device_id"] == "c1"
    assert until(lambda: len(u.cmds) == 1)
    cmd, retained = u.cmds[0]
    assert cmd["id"] == cmd_id and cmd["op"] == "relay" and cmd["arg"] == "on" and not retained
    assert probe(protocol.topic("c1", "cmd"), 0.3) == []  # nothing replays for a later subscriber
    assert cloud.registry.command(cmd_id)["op"] == "relay"

    silent = units("c2", auto_ack=False)
    assert cloud.wait_status("c2", "online", 5)
    cid = cloud.send_command("c2", "reboot")
    assert until(lambda: len(silent.cmds) == 1)
    assert cloud.wait_ack(cid, 0.3) is None
    with pytest.raises(NotFound):
        cloud.send_command("nobody", "status")
    with pytest.raises(protocol.ProtocolError):
        cloud.send_command("c1", "relay", "dim")


def test_serve_embedded_in_process(tmp_path) -> None:
    with serve("embedded", f"sqlite:///{tmp_path / 's.db'}") as s:
        assert s.cloud.connected and s.broker is not None and s.broker_url == s.broker.url
    assert not s.cloud.connected


def test_alerts_and_a_stale_retained_online(cloud, units) -> None:
    events: list[CloudEvent] = []
    cloud.add_listener(events.append)
    u = units("a1")
    u.publish("alert", json.dumps({"t": "mains", "on": False, "up": 5231}))
    assert cloud.wait_for(lambda: cloud.events(device_id="a1", kind="device.alert"), 5)
    assert cloud.events(device_id="a1", kind="device.alert")[0]["detail"] == {"t": "mains", "on": False, "up": 5231}
    assert any(e.kind == "alert" and e.data["t"] == "mains" for e in events)

    u.hb(3, gap=0.1)
    assert cloud.wait_status("a1", "offline", 5)  # hb timeout; the broker still holds a retained "online"
    cloud.stop()
    cloud.start()  # re-subscribing delivers that retained "online": too old to believe
    assert cloud.connections == 2
    time.sleep(0.3)
    d = cloud.device("a1")
    assert (d["status"], d["status_reason"]) == ("offline", "hb_timeout")
