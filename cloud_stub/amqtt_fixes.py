"""Two defects of amqtt 0.12.1 that break the unit protocol, corrected for the embedded broker.

1. On connect, amqtt sends a client the retained messages of *every* topic filter any
   client has subscribed to (it loops over the broker-wide subscription table), so a
   unit would receive other units' retained status and desired state: a data leak and
   bytes a cellular unit pays for. `SessionScopedBroker` delivers retained messages
   only for filters the connecting session itself holds.
2. Its anonymous-auth plugin flags every session "anonymous", and amqtt never keeps an
   anonymous session, so `clean_session=False` is silently ignored and commands queued
   for a unit in check-in mode are lost. `NamedSessionAuth` accepts every client but
   flags only clients without a username as anonymous. (Step 2 replaces it with
   per-unit credentials.)
3. Messages queued for a persistent session while it was away are delivered with the
   retain flag set (MQTT 3.1.1, 3.3.1.3: it must be 0 for messages delivered through an
   existing subscription). A unit must drop retained commands (they would replay after
   every reboot), so it dropped every queued command. `SessionScopedBroker` delivers
   them with retain=0.

Mosquitto has neither defect; the shared integration tests run on both brokers.
"""

from __future__ import annotations

from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session


class SessionScopedBroker(Broker):
    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        if handler is None:
            return
        while not session.retained_messages.empty():
            queued = await session.retained_messages.get()
            await handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        holders = self._subscriptions.get(subscription[0], [])
        if any(s.client_id == session.client_id for s, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)


class NamedSessionAuth(BaseAuthPlugin):
    def __init__(self, context: Any) -> None:
        super().__init__(context)

    async def authenticate(self, *, session: Session) -> bool:
        session.is_anonymous = not session.username
        return True
