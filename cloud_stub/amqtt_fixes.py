"""Two defects of amqtt 0.12.1 that break the unit protocol, corrected for the embedded broker.

1. On connect, amqtt sends a client the retained messages of *every* topic filter any
   client has subscribed to (it loops over the broker-wide subscription table), so a
   unit would receive other units' retained status and desired state: a data leak and
   bytes a cellular unit pays for. `SessionScopedBroker` delivers retained messages
   only for filters the connecting session itself holds.
2. Its anonymous-auth plugin flags every session "anonymous", and amqtt never keeps an
   anonymous session, so `clean_session=False` is silently ignored and commands queued
   for a unit in check-in mode are lost. `NamedSessionAuth` (open mode only) accepts
   every client but flags only clients without a username as anonymous; `CredentialAuth`
   (enforcing mode) admits only known, enabled, verified clients, none of them anonymous.
3. Messages queued for a persistent session while it was away are delivered with the
   retain flag set (MQTT 3.1.1, 3.3.1.3: it must be 0 for messages delivered through an
   existing subscription). A unit must drop retained commands (they would replay after
   every reboot), so it dropped every queued command. `SessionScopedBroker` delivers
   them with retain=0.

Mosquitto has neither defect; the shared integration tests run on both brokers.

Enforcement (step 2, docs/security.md): `EnforcingBroker` runs a small in-memory
version of Mosquitto's dynamic-security plugin (`DynsecStore`): it boots from the same
JSON document that `mosquitto_conf.dynsec_document` writes for Mosquitto, and it answers
the same `$CONTROL/dynamic-security/v1` commands (createClient, deleteClient,
disableClient, enableClient, setClientPassword, createRole, deleteRole, getClient), so
the cloud manages credentials the same way on both brokers. Through amqtt's plugins:
`CredentialAuth` (username/password against the `$7$` hash, client id bound to the
username, no wildcard client ids, the will topic must be one the client may publish) and
`CredentialTopics` (the ACL entries of `cloud_stub.acl`). Two more amqtt 0.12.1 defects
matter once there is authentication, and `EnforcingBroker` corrects them:

4. amqtt acts on a CONNECT before authenticating it: a clean-session CONNECT deletes the
   session of that client id, a second one takes the live connection over, and only then
   is the password checked. Anyone could kick a unit off with a wrong password.
   `EnforcingBroker` authenticates first and refuses (CONNACK 5) without touching sessions.
5. Any PUBLISH to a `$` topic closes the connection, so `$CONTROL` could not work; the
   service account's `$CONTROL/dynamic-security/v1` publishes are served, anyone else's
   are dropped (as Mosquitto drops a publish its ACL denies).

A deleted or disabled client's connections are closed at once (`kick`), as Mosquitto does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from cloud_stub import acl
from cloud_stub.credentials import CredentialError, PasswordHash, hash_password

log = logging.getLogger("simsock.broker")


class SessionScopedBroker(Broker):
    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Called on connect, right before amqtt re-sends retained messages for the session's
        # existing subscriptions. MQTT 3.1.1 sends retained messages only when a subscription
        # is made (3.3.1.3), and a unit renewing its subscriptions would get each twice (57 B a
        # check-in, bench/wire_bytes.py), so that pass is skipped until the message loop starts.
        session._simsock_connecting = True  # type: ignore[attr-defined]
        handler = self._get_handler(session)
        if handler is None:
            return
        while not session.retained_messages.empty():
            queued = await session.retained_messages.get()
            await handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        if getattr(session, "_simsock_connecting", False):
            return
        holders = self._subscriptions.get(subscription[0], [])
        if any(s.client_id == session.client_id for s, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)


    async def _client_message_loop(self, client_session: Session, handler: Any) -> None:
        client_session._simsock_connecting = False  # type: ignore[attr-defined]
        await super()._client_message_loop(client_session, handler)


class NamedSessionAuth(BaseAuthPlugin):
    def __init__(self, context: Any) -> None:
        super().__init__(context)

    async def authenticate(self, *, session: Session) -> bool:
        session.is_anonymous = not session.username
        return True


# --- enforcement -------------------------------------------------------------------------


class DynsecStore:
    """Clients and roles as Mosquitto's dynamic-security plugin keeps them (thread-safe)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self.clients: dict[str, dict[str, Any]] = {}
        self.roles: dict[str, list[acl.Acl]] = {}
        for role in document.get("roles", []):
            self.roles[role["rolename"]] = list(role.get("acls", []))
        for c in document.get("clients", []):
            pw = None
            if c.get("password"):
                pw = PasswordHash.parse(f"$7${c['iterations']}${c['salt']}${c['password']}")
            self.clients[c["username"]] = {
                "pw": pw, "clientid": c.get("clientid") or None, "disabled": bool(c.get("disabled")),
                "roles": [r["rolename"] for r in c.get("roles", [])],
            }

    def client(self, username: str | None) -> dict[str, Any] | None:
        with self._lock:
            return self.clients.get(username) if username is not None else None

    def acls(self, username: str | None) -> list[acl.Acl]:
        with self._lock:
            c = self.clients.get(username) if username is not None else None
            if c is None or c["disabled"]:
                return []
            return [a for r in c["roles"] for a in self.roles.get(r, [])]

    def control(self, payload: bytes) -> tuple[dict[str, Any], set[str]]:
        """Run a `$CONTROL/dynamic-security/v1` request; (response document, usernames to disconnect)."""
        try:
            commands = json.loads(payload)["commands"]
            if not isinstance(commands, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"responses": [{"command": "Unknown command", "error": "Invalid/missing commands"}]}, set()
        responses, kick = [], set()
        with self._lock:
            for cmd in commands:
                name = cmd.get("command") if isinstance(cmd, dict) else None
                resp: dict[str, Any] = {"command": name}
                if isinstance(cmd, dict) and "correlationData" in cmd:
                    resp["correlationData"] = cmd["correlationData"]
                try:
                    data = self._run(str(name), cmd, kick)
                    if data is not None:
                        resp["data"] = data
                except (CredentialError, KeyError, TypeError, ValueError) as exc:
                    resp["error"] = str(exc.args[0]) if exc.args else "Invalid command"
                responses.append(resp)
        return {"responses": responses}, kick

    def _run(self, name: str, cmd: dict[str, Any], kick: set[str]) -> dict[str, Any] | None:
        username = cmd.get("username")
        if name == "createRole":
            if cmd["rolename"] in self.roles:
                raise ValueError("Role already exists")
            self.roles[cmd["rolename"]] = list(cmd.get("acls", []))
        elif name == "deleteRole":
            if self.roles.pop(cmd["rolename"], None) is None:
                raise ValueError("Role not found")
            for c in self.clients.values():
                if cmd["rolename"] in c["roles"]:
                    c["roles"].remove(cmd["rolename"])
        elif name == "createClient":
            if not username:
                raise ValueError("Invalid/missing username")
            if username in self.clients:
                raise ValueError("Client already exists")
            roles = [r["rolename"] for r in cmd.get("roles", [])]
            if any(r not in self.roles for r in roles):
                raise ValueError("Role not found")
            pw = PasswordHash.parse(hash_password(cmd["password"])) if cmd.get("password") else None
            self.clients[username] = {"pw": pw, "clientid": cmd.get("clientid") or None, "disabled": False,
                                      "roles": roles}
        elif name in ("deleteClient", "disableClient", "enableClient", "setClientPassword", "getClient"):
            c = self.clients.get(username)  # type: ignore[arg-type]
            if c is None:
                raise ValueError("Client not found")
            if name == "deleteClient":
                del self.clients[username]  # type: ignore[arg-type]
                kick.add(username)  # type: ignore[arg-type]
            elif name == "disableClient":
                c["disabled"] = True
                kick.add(username)  # type: ignore[arg-type]
            elif name == "enableClient":
                c["disabled"] = False
            elif name == "setClientPassword":
                c["pw"] = PasswordHash.parse(hash_password(cmd["password"]))
            else:
                return {"client": {"username": username, "clientid": c["clientid"], "disabled": c["disabled"],
                                   "roles": [{"rolename": r} for r in c["roles"]]}}
        else:
            raise ValueError("Unknown command")
        return None


def _store(context: Any) -> DynsecStore | None:
    return getattr(getattr(context, "_broker_instance", None), "dynsec", None)


class CredentialAuth(BaseAuthPlugin):
    """Admit a client only with a known, enabled username, its password, its bound client id and an allowed will."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)

    async def authenticate(self, *, session: Session) -> bool:
        store = _store(self.context)
        if store is None:  # open mode
            session.is_anonymous = not session.username
            return True
        return await asyncio.get_running_loop().run_in_executor(None, check_connect, store, session)


def check_connect(store: DynsecStore, session: Session) -> bool:
    """The CONNECT rules of docs/security.md, in the order Mosquitto applies them."""
    session.is_anonymous = False
    client = store.client(session.username)
    why = None
    if not acl.client_id_acceptable(session.client_id):
        why = "client id with a wildcard or '/'"
    elif client is None or client["pw"] is None:
        why = "unknown username"
    elif client["disabled"]:
        why = "disabled"
    elif not session.password or not client["pw"].verify(session.password):
        why = "wrong password"
    elif client["clientid"] and client["clientid"] != session.client_id:
        why = "client id does not match the username"
    elif session.will_flag and not acl.allowed(store.acls(session.username), "publish", session.will_topic or ""):
        why = "will topic not allowed"
    if why:
        log.info("refused CONNECT of client id %r user %r: %s", session.client_id, session.username, why)
        return False
    return True


class CredentialTopics(BaseTopicPlugin):
    """Publish / subscribe / receive checked against the client's ACL entries (cloud_stub.acl)."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        store = _store(self.context)
        if store is None:
            return True
        if session is None or topic is None:
            return False
        kind = {Action.PUBLISH: "publish", Action.SUBSCRIBE: "subscribe", Action.RECEIVE: "receive"}.get(action)  # type: ignore[arg-type]
        if kind is None:
            return False
        ok = acl.allowed(store.acls(session.username), kind, topic)
        if not ok and kind != "receive":
            log.info("denied %s of %r to client %r", kind, topic, session.client_id)
        return ok


class EnforcingBroker(SessionScopedBroker):
    """amqtt with credentials and ACLs enforced (or open when `dynsec` is None)."""

    def __init__(self, config: Any, loop: Any = None, dynsec: DynsecStore | None = None) -> None:
        self.dynsec = dynsec
        super().__init__(config, loop=loop)

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        if self.dynsec is None:
            return await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        ok = await self._authenticate(session, None)  # type: ignore[arg-type]
        if not ok:  # refuse before any session is touched (defect 4)
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            with contextlib.suppress(Exception):
                await writer.close()
            raise MQTTError(f"not authorized: client id {session.client_id!r}")
        session.simsock_authenticated = True  # type: ignore[attr-defined]
        # from here on what amqtt 0.12.1 does (Broker._initialize_client_session)
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            for attr in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username", "password"):
                setattr(existing, attr, getattr(session, attr))
            existing.simsock_authenticated = True  # type: ignore[attr-defined]
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        if getattr(session, "simsock_authenticated", False):
            session.simsock_authenticated = False  # type: ignore[attr-defined]  # one use per CONNECT
            return True
        return await super()._authenticate(session, listener)

    async def _handle_message_delivery(self, client_session: Session, handler: Any, wait_deliver: Any) -> bool:
        message = wait_deliver.result()
        if self.dynsec is not None and message is not None and (message.topic or "").startswith("$CONTROL/"):
            if message.topic == acl.CONTROL_TOPIC and acl.allowed(
                self.dynsec.acls(client_session.username), "publish", message.topic
            ):
                response, kick = self.dynsec.control(bytes(message.data or b""))
                for username in kick:
                    self.kick(username)
                await handler.mqtt_publish(acl.CONTROL_RESPONSE, json.dumps(response).encode(), 0, False)
            return True  # anyone else's $CONTROL publish is dropped, the connection stays (defect 5)
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    def kick(self, username: str) -> int:
        """Close every live connection of `username` at once (its will fires); returns how many."""
        n = 0
        for session, handler in list(self._sessions.values()):
            if session.username != username:
                continue
            transport = getattr(getattr(getattr(handler, "writer", None), "_writer", None), "transport", None)
            if transport is not None and not transport.is_closing():
                transport.abort()
                n += 1
        if n:
            log.info("disconnected %d connection(s) of %r (credentials deleted or disabled)", n, username)
        return n
