"""The cloud: MQTT ingestion, desired-state publishing, commands, convergence.

    with Cloud("mqtt://127.0.0.1:1883", "sqlite:///cloud.db", hb_interval=5) as cloud:
        acct = cloud.create_account("acme", balance_cents=2000)
        cloud.add_device(acct.id, "dev-1")
        cloud.charge(acct.id, 2500)                  # -> suspended, desired {v, mode} published
        cloud.wait_converged(acct.id, timeout=30)

One paho-mqtt client (clean session; its network thread runs every callback), one sweeper
thread (heartbeat timeouts, desired states another process stored but did not publish),
and the registry (SQLite) as the only state: every query reads the database, so
`simsock account …` commands run in another process are seen at once.

Ingestion (topics of docs/protocol.md):

- `hb`: decoded, counted, stored as the device's last heartbeat; `last_seen`; its
  desired version is what the unit has applied. The heartbeat interval is learnt per
  device: the median of the gaps between its last consecutive sequence numbers (an
  extra beat after a reconnect does not shrink it); until then `hb_interval` applies.
- `status` (retained): `online` / `offline` / `dormant`, including last wills. A retained
  `online` that the cloud receives on (re)subscribing does not revive a device the
  heartbeat timeout already marked offline (it is the stale word of a dead connection).
- heartbeat timeout: an `online` device silent for `hb_timeout` seconds (default
  `hb_timeout_factor` × its heartbeat interval), counted from the later of its last
  message and the moment the cloud (re)connected, becomes `offline` (reason
  `hb_timeout`). A heartbeat from an `offline` device brings it back (`online` if it
  reports active mode, else `dormant`): a will can overtake a reconnect.
- `ack`: command acks and desired-state acks; an ok desired ack sets the applied version.
- `alert`: stored as an event.

Several workers (scale, docs/scale.md): `Cloud(..., worker_group="ingest")` subscribes
through MQTT shared subscriptions (`$share/ingest/simsock/v1/+/hb`, …), so N processes on
one database split the unit-to-cloud stream between them (Mosquitto 2, EMQX, HiveMQ; the
embedded amqtt 0.12 broker has no shared subscriptions: one worker there). Every state
lives in the database, so any worker can take any message. `publisher=False` makes a
pure ingest worker: it never publishes desired state (no re-publish on connect, no
sweep of unpublished states; account changes it makes are left for the publisher's
sweep); exactly one process (or all: desired states are retained and versioned, so a
duplicate is harmless) keeps `publisher=True`. Heartbeat timeouts are swept by every
worker (idempotent: re-checked under a row lock). Shared subscriptions receive no
retained messages, so a worker never sees a unit's retained `status` at subscribe time;
timeouts and the next heartbeat keep the status right.

A device has converged when the version it last reported applied (ack or heartbeat) is
at least its latest desired version. Acks the cloud misses while it is disconnected are
not lost for convergence: the next heartbeat carries the applied version.

Listeners (`add_listener`) get a `CloudEvent` for every ingested message and change;
they run on the MQTT thread and must return quickly (queue the event for a UI).
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from cloud_stub import acl, protocol, views
from cloud_stub.accounts import Account, Accounts, Change, Clock, Desired, format_cents
from cloud_stub.credentials import CredentialError, check_unit_username, hash_password, new_password
from cloud_stub.registry import DEFAULT_DB_URL, NotFound, Registry

log = logging.getLogger("simsock.cloud")

HB_GAPS = 5  # a unit's heartbeat interval is the median of its last gaps: one early or late beat does not move it


class BrokerURLError(ValueError):
    pass


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host[:port]` -> (host, port); BrokerURLError for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BrokerURLError(f"bad broker URL {url!r}: {exc}") from None
    if parts.scheme == "mqtts":
        raise BrokerURLError(f"bad broker URL {url!r}: TLS (mqtts://) comes with step 2; use mqtt://host:port")
    if parts.scheme != "mqtt" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise BrokerURLError(f"bad broker URL {url!r}: expected mqtt://host:port")
    return parts.hostname, port or 1883


def broker_credentials(url: str) -> tuple[str, str] | None:
    """(username, password) of `mqtt://user:password@host:port`, None without credentials."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")


def public_url(url: str) -> str:
    """The broker URL without credentials (for logs and messages)."""
    host, port = parse_broker_url(url)
    return f"mqtt://{host}:{port}"


@dataclass(frozen=True)
class CloudEvent:
    """Something the cloud saw or did. kind: hb, status, ack, alert, desired, cmd, account, notification,
    connection."""

    kind: str
    device_id: str | None
    at: float
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[CloudEvent], None]


class Cloud:
    def __init__(
        self,
        broker_url: str,
        db: str | Registry = DEFAULT_DB_URL,
        *,
        hb_interval: float = 300.0,
        hb_timeout_factor: float = 2.5,
        hb_timeout: float | None = None,
        sweep_interval: float = 1.0,
        client_id: str | None = None,
        keepalive: int = 30,
        reconnect_delay: tuple[float, float] = (0.2, 5.0),
        clock: Clock = time.time,
        worker_group: str | None = None,
        publisher: bool = True,
    ) -> None:
        if worker_group is not None and (not worker_group or any(c in worker_group for c in "/+#$ ")):
            raise ValueError(f"bad worker_group {worker_group!r}: a plain name (no / + # $ or spaces)")
        self.worker_group = worker_group
        self.publisher = publisher
        self.host, self.port = parse_broker_url(broker_url)
        self.broker_url = public_url(broker_url)  # no password in logs and messages
        self.credentials = broker_credentials(broker_url)  # the service account (docs/security.md)
        self._control_lock = threading.Lock()
        self._control_waiting: dict[str, list[Any]] = {}
        if hb_interval <= 0 or hb_timeout_factor <= 1 or (hb_timeout is not None and hb_timeout <= 0):
            raise ValueError("hb_interval and hb_timeout must be > 0, hb_timeout_factor > 1")
        self._own_registry = not isinstance(db, Registry)
        self.registry = Registry(db) if isinstance(db, str) else db
        self.hb_interval = hb_interval
        self.hb_timeout_factor = hb_timeout_factor
        self.hb_timeout = hb_timeout
        self.sweep_interval = sweep_interval
        self.client_id = client_id or f"simsock-cloud-{uuid.uuid4().hex[:8]}"
        self.keepalive = keepalive
        self.reconnect_delay = reconnect_delay
        self.clock = clock
        self.accounts = Accounts(self.registry, publish=self._publish_desired if publisher else None, clock=clock)

        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._changed = threading.Condition()
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._listening_since = 0.0
        self._link_up = False  # CONNACK received (publishing allowed); `connected` follows after re-publishing
        self._hb_gaps: dict[str, deque[float]] = {}  # touched by the MQTT thread only
        self.connections = 0  # how many times the MQTT connection came up

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Cloud:
        """Connect to the broker and start ingesting; ConnectionError if not connected in `timeout`."""
        if self._client is not None:
            return self
        self._stopping.clear()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                        protocol=mqtt.MQTTv311)
        c.reconnect_delay_set(*self.reconnect_delay)  # type: ignore[arg-type]  # floats work
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        if self.credentials is not None:
            c.username_pw_set(*self.credentials)
        self._client = c
        c.connect_async(self.host, self.port, keepalive=self.keepalive)
        c.loop_start()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="simsock-cloud-sweeper", daemon=True)
        self._sweeper.start()
        if not self._connected.wait(timeout):
            self.stop()
            raise ConnectionError(f"cannot reach the MQTT broker at {self.broker_url} within {timeout:g}s")
        return self

    def stop(self) -> None:
        self._stopping.set()
        c, self._client = self._client, None
        if c is not None:
            try:
                c.disconnect()
            finally:
                c.loop_stop()
        if self._sweeper is not None:
            self._sweeper.join(5)
            self._sweeper = None
        self._link_up = False
        self._connected.clear()
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        """stop() and close the registry if the cloud opened it."""
        self.stop()
        if self._own_registry:
            self.registry.close()

    def __enter__(self) -> Cloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- listeners -----------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for every CloudEvent; returns a function that removes it."""
        with self._listeners_lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _fire(self, kind: str, device_id: str | None, **data: Any) -> None:
        event = CloudEvent(kind, device_id, self.clock(), data)
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("cloud listener failed on %s", kind)
        with self._changed:
            self._changed.notify_all()

    # --- MQTT callbacks (paho's network thread) ------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker_url, reason_code)
            return
        filters = [(self.subscription(leaf), 1) for leaf in protocol.UNIT_TO_CLOUD]
        if self.credentials is not None:
            filters.append((acl.CONTROL_RESPONSE, 1))
        # One SUBSCRIBE; start() and wait_connected() return at its SUBACK (_on_subscribe), so a
        # message published right after start() is never missed by a broker still subscribing.
        _rc, self._subscribe_mid = client.subscribe(filters)
        self._subscribe_filters = [f for f, _ in filters]
        self._listening_since = self.clock()
        self._link_up = True
        n = self.republish_all() if self.publisher else 0
        self.connections += 1
        log.info("connected to %s (connection %d), re-published %d desired states", self.broker_url,
                 self.connections, n)
        self._fire("connection", None, connected=True, republished=n, connections=self.connections)

    def subscription(self, leaf: str) -> str:
        """The filter this cloud subscribes for `leaf`: shared (`$share/<group>/…`) in a worker group."""
        plain = protocol.subscription(leaf)
        return plain if self.worker_group is None else f"$share/{self.worker_group}/{plain}"

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if mid != getattr(self, "_subscribe_mid", None):
            return
        for topic, rc in zip(self._subscribe_filters, reason_codes, strict=False):
            if rc.is_failure:
                log.error("broker %s refused the subscription %s: %s", self.broker_url, topic, rc)
        self._connected.set()  # start() and wait_connected() return once subscribed and re-published

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        was = self._connected.is_set()
        self._link_up = False
        self._connected.clear()
        if was and not self._stopping.is_set():
            log.warning("lost the broker %s (%s); reconnecting", self.broker_url, reason_code)
        self._fire("connection", None, connected=False, reason=str(reason_code))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == acl.CONTROL_RESPONSE:
            self._control_response(bytes(msg.payload))
            return
        try:
            device_id, leaf = protocol.parse_topic(msg.topic)
            handler = {
                "hb": self._ingest_hb,
                "status": self._ingest_status,
                "ack": self._ingest_ack,
                "alert": self._ingest_alert,
            }.get(leaf)
            if handler is not None:
                handler(device_id, bytes(msg.payload), bool(msg.retain))
        except protocol.ProtocolError as exc:
            log.warning("dropped message on %s: %s", msg.topic, exc)
        except Exception:  # never let one message kill the ingestion thread
            log.exception("failed to ingest a message on %s", msg.topic)

    # --- ingestion -----------------------------------------------------------------------

    def _seen(self, reg: Registry, device_id: str, now: float) -> None:
        if reg.ensure_device(device_id, now):
            reg.add_event("device.unknown", now, device_id=device_id, detail={"note": "first message, no account"})

    def _ingest_hb(self, device_id: str, payload: bytes, retained: bool) -> None:
        if retained:
            raise protocol.ProtocolError("retained heartbeat (heartbeats are never retained)")
        hb = protocol.decode_heartbeat(payload)
        now = self.clock()
        status_change: tuple[str, str] | None = None
        with self.registry.transaction() as reg:
            self._seen(reg, device_id, now)
            st = reg.status(device_id) or {}
            interval = None
            if st.get("last_seq") is not None and st.get("hb_at") and hb.seq == (st["last_seq"] + 1) & 0xFFFFFFFF:
                gaps = self._hb_gaps.get(device_id)
                if gaps is None:
                    gaps = self._hb_gaps[device_id] = deque(maxlen=HB_GAPS)
                    if st.get("hb_interval_s"):
                        gaps.append(st["hb_interval_s"])  # what an earlier run learnt
                gaps.append(now - st["hb_at"])
                interval = statistics.median(gaps)
            fields = {
                "seq": hb.seq, "fw": hb.fw_version, "uptime_s": hb.uptime_s, "mode": hb.mode,
                "desired_version": hb.desired_version, "flags": hb.flags, "temperature_c": hb.temperature_c,
                "signal_dbm": hb.signal_dbm, "free_heap": hb.free_heap,
            }
            reg.record_heartbeat(device_id, fields, now, interval)
            if st.get("applied_version") != hb.desired_version:
                reg.set_applied(device_id, hb.desired_version, now)
            if st.get("status", "unknown") in ("unknown", "offline"):
                new = "online" if hb.mode == "active" else "dormant"
                reg.set_status(device_id, new, now, "heartbeat")
                reg.add_event("device.status", now, device_id=device_id,
                              detail={"from": st.get("status", "unknown"), "to": new, "reason": "heartbeat"})
                status_change = (st.get("status", "unknown"), new)
        self._fire("hb", device_id, **hb.to_dict())
        if status_change:
            self._fire("status", device_id, old=status_change[0], status=status_change[1], reason="heartbeat")

    def _ingest_status(self, device_id: str, payload: bytes, retained: bool) -> None:
        status = protocol.parse_status(payload)
        now = self.clock()
        with self.registry.transaction() as reg:
            self._seen(reg, device_id, now)
            st = reg.status(device_id) or {}
            old = st.get("status", "unknown")
            if not retained:
                reg.touch(device_id, now)
            if retained and status == "online" and old == "offline" and st.get("status_reason") == "hb_timeout":
                return  # stale retained word of a connection the timeout already buried
            if old == status:
                return
            reason = "retained status" if retained else "status"
            reg.set_status(device_id, status, now, reason)
            reg.add_event("device.status", now, device_id=device_id,
                          detail={"from": old, "to": status, "reason": reason})
        self._fire("status", device_id, old=old, status=status, reason=reason)

    def _ingest_ack(self, device_id: str, payload: bytes, retained: bool) -> None:
        ack = protocol.parse_ack(payload)
        now = self.clock()
        with self.registry.transaction() as reg:
            self._seen(reg, device_id, now)
            if not retained:
                reg.touch(device_id, now)
            if isinstance(ack, protocol.CommandAck):
                reg.insert_ack(device_id, ok=ack.ok, at=now, cmd_id=ack.id, err=ack.err, res=ack.res)
            else:
                reg.insert_ack(device_id, ok=ack.ok, at=now, version=ack.dv, err=ack.err)
                if ack.ok:
                    reg.set_applied(device_id, ack.dv, now)
                reg.add_event("desired.ack", now, device_id=device_id,
                              detail={"v": ack.dv, "ok": ack.ok, "mode": ack.mode, "err": ack.err})
        if isinstance(ack, protocol.CommandAck):
            self._fire("ack", device_id, id=ack.id, ok=ack.ok, res=ack.res, err=ack.err)
        else:
            self._fire("ack", device_id, dv=ack.dv, ok=ack.ok, mode=ack.mode, err=ack.err)

    def _ingest_alert(self, device_id: str, payload: bytes, retained: bool) -> None:
        alert = protocol.parse_alert(payload)
        now = self.clock()
        with self.registry.transaction() as reg:
            self._seen(reg, device_id, now)
            if not retained:
                reg.touch(device_id, now)
            reg.add_event("device.alert", now, device_id=device_id, detail=alert)
        self._fire("alert", device_id, **alert)

    # --- heartbeat timeout and pending publishes -----------------------------------------

    def hb_timeout_for(self, status_row: dict[str, Any]) -> float:
        if self.hb_timeout is not None:
            return self.hb_timeout
        return self.hb_timeout_factor * (status_row.get("hb_interval_s") or self.hb_interval)

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(self.sweep_interval):
            try:
                self.run_lifecycle()  # billing and time-driven account transitions (needs no broker)
            except Exception:
                log.exception("account lifecycle tick failed")
            try:
                self.sweep()
            except Exception:
                log.exception("cloud sweep failed")

    def sweep(self) -> None:
        """One pass: time out silent online devices, publish desired states stored unpublished."""
        if not self.connected:
            return  # silence while we cannot hear is not the units' fault
        self.sync_revocations()
        now = self.clock()
        for st in self.registry.online_devices():
            since = max(st.get("last_seen") or 0.0, self._listening_since)
            timeout = self.hb_timeout_for(st)
            if now - since <= timeout:
                continue
            with self.registry.transaction() as reg:
                cur = reg.status(st["device_id"])
                if not cur or cur["status"] != "online" or (cur.get("last_seen") or 0) != (st.get("last_seen") or 0):
                    continue  # changed meanwhile
                reg.set_status(st["device_id"], "offline", now, "hb_timeout")
                reg.add_event("device.status", now, device_id=st["device_id"],
                              detail={"from": "online", "to": "offline", "reason": "hb_timeout",
                                      "silent_s": round(now - since, 3), "timeout_s": timeout})
            self._fire("status", st["device_id"], old="online", status="offline", reason="hb_timeout")
        if not self.publisher:
            return
        for d in self.registry.all_desired(unpublished_only=True):
            self._publish_and_mark(Desired(d["device_id"], d["version"], d["mode"]))

    # --- desired state -------------------------------------------------------------------

    def _publish_desired(self, d: Desired) -> bool:
        c = self._client
        if c is None or not self._link_up:
            return False
        info = c.publish(protocol.topic(d.device_id, "desired"), d.payload(), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._fire("desired", d.device_id, v=d.version, mode=d.mode)
        return True

    def _publish_and_mark(self, d: Desired) -> bool:
        if self._publish_desired(d):
            self.registry.mark_published(d.device_id, d.version, self.clock())
            return True
        return False

    def publish_desired(self, device_id: str) -> bool:
        """(Re-)publish one device's current desired state; False if there is none or no connection."""
        row = self.registry.desired(device_id)
        return row is not None and self._publish_and_mark(Desired(device_id, row["version"], row["mode"]))

    def republish_all(self) -> int:
        """Publish every stored desired state again (retained); returns how many went out."""
        return sum(self._publish_and_mark(Desired(r["device_id"], r["version"], r["mode"]))
                   for r in self.registry.all_desired())

    # --- accounts (thin wrappers that also tell listeners) -------------------------------

    def create_account(self, name: str, balance_cents: int = 0, currency: str = "USD") -> Account:
        """Open an account (billed from today's price list in `currency`: USD or EUR)."""
        account = self.accounts.create(name, balance_cents, currency)
        self._fire("account", None, account_id=account.id, state=account.state, balance_cents=account.balance_cents)
        return account

    def add_device(self, account: int | str, device_id: str, serial: str | None = None) -> Change:
        return self._account_change(self.accounts.add_device(account, device_id, serial))

    def charge(self, account: int | str, amount_cents: int, reason: str | None = None) -> Change:
        return self._account_change(self.accounts.charge(account, amount_cents, reason))

    def top_up(self, account: int | str, amount_cents: int, reason: str | None = None) -> Change:
        """Add money (at least the minimum top-up); above zero the account is active at once."""
        return self._account_change(self.accounts.top_up(account, amount_cents, reason))

    def run_lifecycle(self, now: float | None = None) -> list[Change]:
        """Apply every monthly fee and time-driven transition due by `now` (default: the clock) on
        every account; idempotent. The sweeper thread calls it every `sweep_interval`."""
        return [self._account_change(c) for c in self.accounts.tick(now)]

    def enter_sleep(self, account: int | str) -> Change:
        """Customer request: sleep mode now, from `suspended` only (refused with a positive balance)."""
        return self._account_change(self.accounts.enter_sleep(account))

    def delete_account(self, account: int | str, *, signed_notice: bool = False) -> Change:
        """Delete for good; devices become `delinked`. Needs signed_notice unless in deep sleep."""
        return self._account_change(self.accounts.delete(account, signed_notice=signed_notice))

    def delink_device(self, account: int | str, device_id: str, *, signed_application: bool = False) -> Change:
        """Remove one device from the service (desired mode `delinked`); the others keep running."""
        return self._account_change(self.accounts.delink_device(account, device_id,
                                                                signed_application=signed_application))

    def restore_device(self, account: int | str, device_id: str) -> Change:
        """Link a delinked device again within a year, for the restore fee; refused after a year."""
        return self._account_change(self.accounts.restore_device(account, device_id))

    def reopen_account(self, deleted: int | str, name: str, device_ids: list[str] | None = None) -> Change:
        """A new account for devices of a deleted one, charging the per-device handling fee."""
        return self._account_change(self.accounts.reopen(deleted, name, device_ids))

    def quote_feature(self, account: int | str, feature: str) -> dict[str, Any]:
        """Price and next-bill calculation of adding a feature, without adding it."""
        return self.accounts.quote_feature(account, feature)

    def add_feature(self, account: int | str, feature: str) -> tuple[Change, dict[str, Any]]:
        """Add a feature at once (active accounts); returns the change and the quote it was added at."""
        change, quote = self.accounts.add_feature(account, feature)
        return self._account_change(change), quote

    def cancel_feature(self, account: int | str, feature: str) -> Change:
        """Cancel a feature; refused before one calendar month of use."""
        return self._account_change(self.accounts.cancel_feature(account, feature))

    def ledger(self, account: int | str) -> list[dict[str, Any]]:
        """The account's money movements, oldest first."""
        return self.accounts.ledger(account)

    def notifications(self, account: int | str) -> list[dict[str, Any]]:
        """The account's essential notifications (account, kind, text, at), oldest first."""
        return [n.__dict__ for n in self.accounts.notifications(account)]

    def _account_change(self, change: Change) -> Change:
        a = change.account
        self._fire("account", None, account_id=a.id, state=a.state, old_state=change.old_state,
                   balance_cents=a.balance_cents, desired=[d.__dict__ for d in change.desired],
                   transitions=change.transitions)
        for n in change.notifications:
            self._fire("notification", n.device_id, account_id=n.account_id, notification=n.kind, text=n.text,
                       at=n.at)
        return change

    # --- unit credentials (docs/security.md) ---------------------------------------------
    #
    # The broker's dynamic-security API (`$CONTROL/dynamic-security/v1`), which Mosquitto's
    # plugin and the embedded broker both serve, over this cloud's own connection. Call these
    # from any thread but paho's (they wait for the broker's answer, which paho's thread brings).

    def issue_credentials(self, device_id: str, timeout: float = 5.0) -> tuple[str, str]:
        """New MQTT credentials for a unit: (username = device_id, password). The password is
        returned once and never stored; any previous credentials of the unit stop working
        (and its connection is closed). ConnectionError/CredentialError leave nothing changed."""
        username = check_unit_username(device_id)
        password = new_password()
        pw_hash = hash_password(password)
        role = acl.unit_role(username)
        self._control([
            {"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": role},
            {"command": "createRole", "rolename": role, "acls": acl.unit_acls(username)},
            {"command": "createClient", "username": username, "password": password, "clientid": username,
             "roles": [{"rolename": role}]},
        ], timeout, ignore=("Client not found", "Role not found"))
        now = self.clock()
        try:
            with self.registry.transaction() as reg:
                reg.ensure_device(username, now)
                reg.insert_credential(username, pw_hash, now)
                reg.add_event("credentials.issued", now, device_id=username)
        except BaseException:
            with contextlib.suppress(Exception):  # the broker must not keep what the registry does not
                self._control([{"command": "deleteClient", "username": username}], timeout,
                              ignore=("Client not found",))
            raise
        self._fire("credentials", username, issued=True)
        return username, password

    def revoke_credentials(self, device_id: str, reason: str = "revoked", timeout: float = 5.0) -> bool:
        """Revoke a unit's credentials: the broker deletes the client (closing its connection at
        once) and refuses it from then on. NotFound if it has no live credentials. Returns True
        once the broker confirmed; False if it could not be reached now (the sweeper retries)."""
        now = self.clock()
        with self.registry.transaction() as reg:
            if not reg.revoke_credential(device_id, now, reason):
                raise NotFound(f"{device_id!r} has no live credentials")
            reg.add_event("credentials.revoked", now, device_id=device_id, detail={"reason": reason})
        self._fire("credentials", device_id, revoked=True, reason=reason)
        return self._push_revocation(device_id, timeout)

    def _push_revocation(self, username: str, timeout: float) -> bool:
        try:
            self._control([{"command": "deleteClient", "username": username},
                           {"command": "deleteRole", "rolename": acl.unit_role(username)}],
                          timeout, ignore=("Client not found", "Role not found"))
        except (ConnectionError, CredentialError) as exc:
            log.warning("revocation of %s not confirmed by the broker yet: %s", username, exc)
            return False
        self.registry.mark_revocation_synced(username, self.clock())
        # Mosquitto sends no will for a client it disconnects administratively: say it ourselves,
        # retained, so the unit's status topic does not claim "online" for a unit that cannot connect
        c = self._client
        if c is not None and self._link_up:
            c.publish(protocol.topic(username, "status"), "offline", qos=1, retain=True)
        return True

    def sync_revocations(self) -> int:
        """Push revocations the broker has not confirmed (made while disconnected, or by another process)."""
        if self.credentials is None:
            return 0
        return sum(self._push_revocation(u, 2.0) for u in self.registry.unsynced_revocations())

    def _control(self, commands: list[dict[str, Any]], timeout: float, ignore: tuple[str, ...] = ()) -> list[Any]:
        c = self._client
        if self.credentials is None:
            raise CredentialError("this cloud has no service account (broker URL without user:password)")
        if c is None or not self._link_up:
            raise ConnectionError(f"not connected to the broker {self.broker_url}")
        if threading.current_thread() is getattr(c, "_thread", None):
            raise RuntimeError("credentials cannot be changed from the MQTT thread (a listener)")
        tag = uuid.uuid4().hex
        for i, cmd in enumerate(commands):
            cmd["correlationData"] = f"{tag}:{i}"
        done = threading.Event()
        slot: list[Any] = [done]
        with self._control_lock:  # one request at a time: simple, and credentials change rarely
            self._control_waiting[tag] = slot
            try:
                info = c.publish(acl.CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS or not done.wait(timeout):
                    raise ConnectionError(f"the broker {self.broker_url} did not answer a credentials request")
            finally:
                self._control_waiting.pop(tag, None)
        responses = slot[1]
        for r in responses:
            err = r.get("error")
            if err and err not in ignore:
                raise CredentialError(f"broker refused {r.get('command')}: {err}")
        return responses

    def _control_response(self, payload: bytes) -> None:
        try:
            responses = json.loads(payload)["responses"]
            tag = str(responses[0].get("correlationData", "")).split(":")[0]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            log.warning("unreadable dynamic-security response: %r", payload[:200])
            return
        slot = self._control_waiting.get(tag)
        if slot is not None and len(slot) == 1:
            slot.append(responses)
            slot[0].set()

    # --- commands ------------------------------------------------------------------------

    def send_command(self, device_id: str, op: str, arg: str | None = None, exp: int | None = None) -> str:
        """Publish a command (QoS 1, never retained) and return its id; see wait_ack()."""
        if self.registry.device_row(device_id) is None:
            raise NotFound(f"unknown device {device_id!r}")
        cmd_id = protocol.new_command_id()
        payload = protocol.encode_command(cmd_id, op, arg, exp)
        c = self._client
        if c is None or not self._link_up:
            raise ConnectionError(f"not connected to the broker {self.broker_url}")
        now = self.clock()
        with self.registry.transaction() as reg:
            reg.insert_command(cmd_id, device_id, op, arg, exp, now)
        info = c.publish(protocol.topic(device_id, "cmd"), payload, qos=1, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"could not publish the command: {mqtt.error_string(info.rc)}")
        self._fire("cmd", device_id, id=cmd_id, op=op, arg=arg, exp=exp)
        return cmd_id

    def wait_ack(self, cmd_id: str, timeout: float = 10.0) -> dict[str, Any] | None:
        """The first ack of command `cmd_id` (dict: ok, err, res, at, …), or None on timeout."""
        found: list[dict[str, Any]] = []

        def acked() -> bool:
            found[:] = self.registry.acks(cmd_id=cmd_id)
            return bool(found)

        return found[0] if self.wait_for(acked, timeout) else None

    # --- queries -------------------------------------------------------------------------

    def devices(self, account: int | str | None = None) -> list[dict[str, Any]]:
        """Every device (or an account's) with status, last heartbeat, desired/applied versions, converged."""
        return views.devices(self.registry, account)

    def device(self, device_id: str) -> dict[str, Any] | None:
        return views.device(self.registry, device_id)

    def account(self, account: int | str) -> dict[str, Any] | None:
        """The account (balance, state, mode), its device ids and convergence; None if unknown."""
        return views.account(self.registry, account)

    def convergence(self, account: int | str) -> dict[str, list[str]]:
        """{'converged': [device ids], 'pending': [device ids]} for one account (NotFound if unknown)."""
        return views.convergence(self.registry, account)

    def heartbeat_count(self, device_id: str | None = None) -> int:
        return self.registry.heartbeat_count(device_id)

    def acks(self, device_id: str | None = None) -> list[dict[str, Any]]:
        return self.registry.acks(device_id=device_id)

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        return self.registry.events(**filters)

    # --- waiting -------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Re-check `predicate` on every change (and every 0.1 s) until true or `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.1))

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def wait_heartbeats(self, device_id: str, count: int = 1, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda: self.heartbeat_count(device_id) >= count, timeout)

    def wait_status(self, device_id: str, status: str, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda: (self.device(device_id) or {}).get("status") == status, timeout)

    def wait_converged(self, account: int | str, timeout: float = 30.0) -> bool:
        return self.wait_for(lambda: not self.convergence(account)["pending"], timeout)


__all__ = ["BrokerURLError", "Cloud", "CloudEvent", "format_cents", "parse_broker_url"]
