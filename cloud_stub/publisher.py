"""A short-lived MQTT connection that publishes desired states and waits for the broker's PUBACK.

What `simsock account …` uses beside a running `cloud serve`: connect first (so an
unreachable broker fails the command before anything is written), then let
`Accounts` commit and hand over the new desired states.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from cloud_stub import protocol
from cloud_stub.accounts import Desired
from cloud_stub.service import broker_credentials, parse_broker_url, public_url


class DesiredPublisher:
    def __init__(self, broker_url: str, *, timeout: float = 5.0) -> None:
        self.host, self.port = parse_broker_url(broker_url)
        self.broker_url = public_url(broker_url)  # never the password in a message
        self.credentials = broker_credentials(broker_url)  # the service account: only it may publish desired
        self.timeout = timeout
        self._client: mqtt.Client | None = None

    def connect(self) -> DesiredPublisher:
        """ConnectionError with a plain reason if the broker cannot be reached in `timeout`."""
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"simsock-cli-{uuid.uuid4().hex[:8]}",
                        clean_session=True, reconnect_on_failure=False)
        ready = threading.Event()
        result: list[Any] = []

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
            result.append(reason_code)
            ready.set()

        c.on_connect = on_connect
        if self.credentials is not None:
            c.username_pw_set(*self.credentials)
        try:
            c.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the MQTT broker at {self.broker_url}: {exc.strerror or exc}") from None
        c.loop_start()
        if not ready.wait(self.timeout) or result[0].is_failure:
            c.loop_stop()
            reason = result[0] if result else "no answer"
            raise ConnectionError(f"MQTT broker at {self.broker_url} did not accept the connection: {reason}")
        self._client = c
        return self

    def __call__(self, d: Desired) -> bool:
        """Publish one desired state (QoS 1, retained); True once the broker acknowledged it."""
        if self._client is None:
            return False
        info = self._client.publish(protocol.topic(d.device_id, "desired"), d.payload(), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def close(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()

    def __enter__(self) -> DesiredPublisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
