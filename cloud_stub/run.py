"""Run the cloud with a broker in one call: what `simsock cloud serve` and the demo use.

    with serve(broker="embedded", db="sqlite:///cloud.db") as served:
        print(served.broker_url)          # units and `simsock account …` connect here
        served.cloud.create_account("acme", 2000)

`broker` is `embedded` (amqtt in this process), `mosquitto` (a private Mosquitto process
on a loopback port) or `mqtt://user:password@host:port` (a broker someone else runs; the
cloud's service account in the URL). A broker started here enforces credentials and ACLs
(docs/security.md): it boots with a fresh service account and the units' live credentials
from the registry, and `served.service_url` is the URL with the service account's
credentials (for `simsock account --broker`). With `http_port`
the HTTP API (cloud_stub/api) is served too, on `http_host:http_port` (0: a free port),
and `served.api_url` says where.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cloud_stub.broker import EmbeddedBroker, MosquittoBroker
from cloud_stub.credentials import ClientRecord
from cloud_stub.registry import DEFAULT_DB_URL, Registry
from cloud_stub.service import BrokerURLError, Cloud, parse_broker_url, public_url

BROKER_KINDS = ("embedded", "mosquitto")


@dataclass
class Served:
    cloud: Cloud
    broker_url: str
    broker: EmbeddedBroker | MosquittoBroker | None  # the broker we started, None for mqtt://
    api_url: str | None = None  # the HTTP API, when serve() was asked for it (http_port)
    service_url: str | None = None  # broker URL with the cloud's service account (a secret: do not log it)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_broker(
    kind: str, host: str = "127.0.0.1", port: int | None = None, *, units: list[ClientRecord] | None = None
) -> EmbeddedBroker | MosquittoBroker:
    """Start an embedded or Mosquitto broker enforcing credentials (`units`: the live ones to admit);
    RuntimeError with a plain reason if it cannot."""
    if kind not in BROKER_KINDS:
        raise BrokerURLError(f"unknown broker {kind!r}: embedded, mosquitto or mqtt://host:port")
    if port is not None and not _port_free(host, port):
        raise RuntimeError(f"port {host}:{port} is already in use (another broker? choose --port, "
                           f"or --broker mqtt://{host}:{port} to use the one running there)")
    if kind == "mosquitto" and not MosquittoBroker.available():
        raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
    if kind == "mosquitto" and not MosquittoBroker.dynsec_available():
        raise RuntimeError("mosquitto's dynamic-security plugin is missing (mosquitto 2.0 or later)")
    b: EmbeddedBroker | MosquittoBroker = (
        EmbeddedBroker(host, port, units=units or ()) if kind == "embedded"
        else MosquittoBroker(host, port, units=units or ())
    )
    b.start()
    return b


@contextmanager
def serve(
    broker: str = "embedded",
    db: str = DEFAULT_DB_URL,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    connect_timeout: float = 10.0,
    http_port: int | None = None,
    http_host: str = "127.0.0.1",
    **cloud_options: Any,
) -> Iterator[Served]:
    """Start the broker (unless given by URL) and a connected Cloud; stop both on exit.

    `port` applies to a broker started here (default: a free port). `cloud_options` go to
    `Cloud(...)` (hb_interval, hb_timeout, hb_timeout_factor, sweep_interval, clock, …).
    """
    if broker == "embedded" and cloud_options.get("worker_group"):
        raise BrokerURLError("the embedded broker (amqtt 0.12) has no shared subscriptions: worker_group needs "
                             "--broker mosquitto or the mqtt:// URL of a broker that has them (docs/scale.md)")
    own = None
    if broker in BROKER_KINDS:
        with Registry(db) as reg:  # the broker admits the units whose credentials are live
            units = [ClientRecord(r["username"], r["pw_hash"]) for r in reg.live_credentials()]
        own = start_broker(broker, host, port, units=units)
        url, service_url = own.url, own.service_url
    else:
        parse_broker_url(broker)
        url, service_url = public_url(broker), broker
    try:
        cloud = Cloud(service_url, db, **cloud_options)
        try:
            cloud.start(connect_timeout)
            if http_port is None:
                yield Served(cloud, url, own, service_url=service_url)
            else:
                from cloud_stub.api import ApiServer, create_app  # FastAPI only when asked for

                with ApiServer(create_app(cloud), http_host, http_port) as api:
                    yield Served(cloud, url, own, api.url, service_url=service_url)
        finally:
            cloud.close()
    finally:
        if own is not None:
            own.stop()
