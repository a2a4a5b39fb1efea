"""The broker enforces per-unit credentials and ACLs (docs/security.md), on both brokers.

MQTT 3.1.1 cannot refuse a PUBLISH: the broker acknowledges it and drops it. So a
refused publish is checked on the wire: a subscriber with every right (the service
account on `simsock/v1/#`) must not get it. Each unit ends with an allowed publish (a
sentinel) on the same connection; once the sentinel arrived, anything published before
it would have arrived too. A refused SUBSCRIBE gets SUBACK 0x80.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cloud_stub import acl
from cloud_stub.credentials import verify_password
from tests.security.conftest import wait_for

REFUSED = 0x80


def test_unit_publishes_only_its_own_uplink_topics(cloud, clients, observer) -> None:
    a_user, a_pw = cloud.issue_credentials("sec-a")
    cloud.issue_credentials("sec-b")
    a = clients("sec-a", a_user, a_pw)
    assert a.wait_answer()
    refused = [
        "simsock/v1/sec-b/hb", "simsock/v1/sec-b/status", "simsock/v1/sec-b/ack",  # another unit's topics
        "simsock/v1/sec-a/desired", "simsock/v1/sec-a/cmd",  # only the cloud steers a unit
        "simsock/v1/sec-b/desired", "simsock/v1/sec-b/cmd",
        "simsock/v1/sec-a/other", "simsock/v1/sec-a", "simsock/v2/sec-a/hb", "elsewhere",
    ]
    for topic in refused:
        a.publish(topic, b"forged")
    allowed = [f"simsock/v1/sec-a/{leaf}" for leaf in acl.UNIT_PUBLISH]
    for topic in allowed:
        a.publish(topic, b"mine")
    wait_for(lambda: len(observer.got()) >= len(allowed), 5, "the allowed publishes")
    time.sleep(0.2)
    assert sorted(t for t, _ in observer.got()) == sorted(allowed)
    assert a.disconnected_at is None  # dropped, not disconnected (as Mosquitto does)


def test_retained_desired_state_cannot_be_forged(cloud, clients, observer) -> None:
    """A unit may read its desired state, never write it: not even a retained one for itself."""
    user, pw = cloud.issue_credentials("sec-r")
    cloud.issue_credentials("sec-victim")
    u = clients("sec-r", user, pw)
    assert u.wait_answer()
    u.publish("simsock/v1/sec-victim/desired", json.dumps({"v": 99, "mode": "active"}), retain=True)
    u.publish("simsock/v1/sec-r/desired", json.dumps({"v": 99, "mode": "active"}), retain=True)
    u.publish("simsock/v1/sec-r/hb", b"sentinel")
    wait_for(lambda: observer.got("simsock/v1/sec-r/hb"), 5, "the sentinel")
    assert observer.got("simsock/v1/sec-victim/desired") == [] and observer.got("simsock/v1/sec-r/desired") == []
    # nor was anything retained: a fresh subscriber with every right gets nothing there
    late = clients("sec-late-observer", *service(cloud))
    assert late.wait_answer() and late.subscribe("simsock/v1/+/desired") == 1
    time.sleep(0.3)
    assert late.got() == []


def test_unit_subscribes_only_its_own_desired_and_cmd(cloud, clients) -> None:
    user, pw = cloud.issue_credentials("sec-s")
    cloud.issue_credentials("sec-t")
    u = clients("sec-s", user, pw)
    assert u.wait_answer()
    for leaf in acl.UNIT_SUBSCRIBE:
        assert u.subscribe(f"simsock/v1/sec-s/{leaf}") == 1
    for topic_filter in ("simsock/v1/#", "#", "simsock/v1/+/cmd", "simsock/v1/+/desired", "simsock/v1/sec-t/cmd",
                         "simsock/v1/sec-t/desired", "simsock/v1/sec-s/#", "simsock/v1/sec-s/+", "simsock/v1/sec-s/hb",
                         "$share/g/simsock/v1/sec-t/cmd", "$CONTROL/dynamic-security/#", "$SYS/#"):
        assert u.subscribe(topic_filter) == REFUSED, topic_filter
    # what the cloud sends another unit never reaches it; its own does
    cloud.send_command("sec-t", "relay", "on")
    cloud.send_command("sec-s", "relay", "off")
    wait_for(lambda: u.got("simsock/v1/sec-s/cmd"), 5, "its own command")
    time.sleep(0.2)
    assert [t for t, _ in u.got()] == ["simsock/v1/sec-s/cmd"]


@pytest.mark.parametrize("case", ["wrong password", "no password", "unknown user", "anonymous",
                                  "client id not the username", "wildcard client id +", "wildcard client id #",
                                  "client id with /", "another unit's client id"])
def test_connect_refused(cloud, clients, broker, case: str) -> None:
    user, pw = cloud.issue_credentials("sec-c")
    cloud.issue_credentials("sec-d")
    cid, u, p = {
        "wrong password": ("sec-c", user, pw[:-1] + ("x" if pw[-1] != "x" else "y")),
        "no password": ("sec-c", user, None),
        "unknown user": ("sec-zz", "sec-zz", pw),
        "anonymous": ("sec-c", None, None),
        "client id not the username": ("sec-c-2", user, pw),
        "wildcard client id +": ("+", user, pw),
        "wildcard client id #": ("#", user, pw),
        "client id with /": ("sec-c/x", user, pw),
        "another unit's client id": ("sec-d", user, pw),
    }[case]
    c = clients(cid, u, p)
    assert not c.wait_answer(), f"{broker.name} accepted: {case}"
    if c.connack is not None:
        # paho shows the 3.1.1 codes 4 and 5 as the v5 reasons 134 and 135
        assert c.connack.is_failure and c.connack.value in (4, 5, 134, 135), c.connack


def test_a_will_on_another_units_topic_never_arrives(cloud, clients, broker, observer) -> None:
    """The embedded broker refuses such a CONNECT; Mosquitto 2.0 accepts it and drops the will when it fires."""
    user, pw = cloud.issue_credentials("sec-w")
    cloud.issue_credentials("sec-w2")
    c = clients("sec-w", user, pw, will="simsock/v1/sec-w2/status")
    if c.wait_answer():
        sock = c.c.socket()
        c.c.loop_stop()
        sock.close()  # the link dies without DISCONNECT: the will would fire
        sentinel = clients("sec-w", user, pw)  # takes the client id over once the old link is gone
        assert sentinel.wait_answer()
        sentinel.publish("simsock/v1/sec-w/hb", b"sentinel")
        wait_for(lambda: observer.got("simsock/v1/sec-w/hb"), 5, "the sentinel")
        time.sleep(0.3)
    assert observer.got("simsock/v1/sec-w2/status") == []


def test_a_refused_connect_does_not_disturb_the_unit_it_impersonates(cloud, clients, observer) -> None:
    """A CONNECT with a unit's client id but a wrong password neither kicks nor resets the real unit."""
    user, pw = cloud.issue_credentials("sec-v")
    real = clients("sec-v", user, pw)
    assert real.wait_answer() and real.subscribe("simsock/v1/sec-v/cmd") == 1
    for _ in range(3):
        fake = clients("sec-v", user, "not-the-password")
        assert not fake.wait_answer()
    time.sleep(0.2)
    assert real.disconnected_at is None
    cloud.send_command("sec-v", "relay", "on")  # its subscription is intact
    wait_for(lambda: real.got("simsock/v1/sec-v/cmd"), 5, "the command on the real unit's subscription")


def test_unit_cannot_administer_credentials(cloud, clients, broker) -> None:
    user, pw = cloud.issue_credentials("sec-x")
    u = clients("sec-x", user, pw)
    assert u.wait_answer()
    assert u.subscribe(acl.CONTROL_RESPONSE) == REFUSED
    u.publish(acl.CONTROL_TOPIC, json.dumps({"commands": [
        {"command": "createClient", "username": "sec-evil", "password": "evil-password"},
        {"command": "deleteClient", "username": "sec-x"}]}))
    u.publish("simsock/v1/sec-x/hb", b"still here")
    time.sleep(0.3)
    evil = clients("sec-evil", "sec-evil", "evil-password")
    assert not evil.wait_answer()
    again = clients("sec-x", user, pw)  # sec-x still exists (and takes over its own connection)
    assert again.wait_answer()


def test_revocation_disconnects_within_a_second_and_for_good(cloud, clients, broker, observer) -> None:
    user, pw = cloud.issue_credentials("sec-rv")
    u = clients("sec-rv", user, pw, will="simsock/v1/sec-rv/status")
    assert u.wait_answer()
    t0 = time.monotonic()
    assert cloud.revoke_credentials("sec-rv", reason="test") is True
    wait_for(lambda: u.disconnected_at is not None, 1.0, "the revoked unit's disconnect")
    took = u.disconnected_at - t0  # type: ignore[operator]
    print(f"\n[{broker.name}] revoke -> unit disconnected: {took * 1000:.1f} ms")
    assert took < 1.0
    # its status says offline (the will on the embedded broker; Mosquitto sends none on an
    # administrative disconnect, so the cloud publishes it)
    wait_for(lambda: (("simsock/v1/sec-rv/status", b"offline") in observer.got()), 2, "status offline")
    assert cloud.wait_status("sec-rv", "offline", 2)
    again = clients("sec-rv", user, pw)
    assert not again.wait_answer()
    # the registry keeps only the hash, now revoked; new credentials work, the old ones stay refused
    hist = cloud.registry.credential_history("sec-rv")
    assert len(hist) == 1 and hist[0]["revoked_at"] and hist[0]["revoke_reason"] == "test"
    assert pw not in json.dumps(hist) and verify_password(pw, hist[0]["pw_hash"])
    user2, pw2 = cloud.issue_credentials("sec-rv")
    assert pw2 != pw
    assert not clients("sec-rv", user, pw).wait_answer()
    assert clients("sec-rv", user2, pw2).wait_answer()


def test_reissue_replaces_the_old_credentials_at_once(cloud, clients) -> None:
    """An RMA swap: the slot's new unit gets new credentials; the old unit is cut off."""
    user, old = cloud.issue_credentials("sec-slot")
    first = clients("sec-slot", user, old)
    assert first.wait_answer()
    _, new = cloud.issue_credentials("sec-slot")
    wait_for(lambda: first.disconnected_at is not None, 1.0, "the old unit's disconnect")
    assert not clients("sec-slot", user, old).wait_answer()
    assert clients("sec-slot", user, new).wait_answer()
    live = cloud.registry.live_credential("sec-slot")
    assert live is not None and verify_password(new, live["pw_hash"]) and not verify_password(old, live["pw_hash"])


def test_issue_refuses_reserved_and_invalid_ids(cloud) -> None:
    from cloud_stub.credentials import CredentialError

    for bad in ("simsock-cloud", "simsock-x", "a/b", "+", "#", ""):
        with pytest.raises(CredentialError):
            cloud.issue_credentials(bad)
    assert cloud.registry.live_credentials() == []


def test_revocation_made_while_disconnected_is_pushed_on_reconnect(cloud, clients, broker) -> None:
    user, pw = cloud.issue_credentials("sec-late")
    cloud.stop()
    try:
        assert cloud.revoke_credentials("sec-late", timeout=0.5) is False  # not confirmed: the cloud is offline
        assert cloud.registry.unsynced_revocations() == ["sec-late"]
        u = clients("sec-late", user, pw)
        assert u.wait_answer()  # the broker has not heard yet
    finally:
        cloud.start()
    wait_for(lambda: u.disconnected_at is not None, 3, "the revocation pushed by the sweeper")
    # The broker kicks the client before the cloud has recorded the broker's confirmation.
    wait_for(lambda: cloud.registry.unsynced_revocations() == [], 3, "the revocation marked as confirmed")
    assert not clients("sec-late", user, pw).wait_answer()


def service(cloud: Any) -> tuple[str, str]:
    assert cloud.credentials is not None
    return cloud.credentials
