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
and `served.api_url` says where. With `tls_dir` the broker started here also listens with
TLS on `tls_port` (default: a free port), with a CA and a server certificate made in (or
reused from) `tls_dir` by cloud_stub.tls: `served.tls_url`, `served.tls.ca_der` (what a
unit gets), `served.tls.ca_pem` (what other clients trust). The cloud itself stays on the
plain loopback listener.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_stub.broker import EmbeddedBroker, MosquittoBroker
from cloud_stub.credentials import ClientRecord
from cloud_stub.registry import DEFAULT_DB_URL, Registry
from cloud_stub.service import BrokerURLError, Cloud, parse_broker_url, public_url
from cloud_stub.tls import TLSFiles, ensure_server_cert

BROKER_KINDS = ("embedded", "mosquitto")


@dataclass
class Served:
    cloud: Cloud
    broker_url: str
    broker: EmbeddedBroker | MosquittoBroker | None  # the broker we started, None for mqtt://
    api_url: str | None = None  # the HTTP API, when serve() was asked for it (http_port)
    service_url: str | None = None  # broker URL with the cloud's service account (a secret: do not log it)
    tls: TLSFiles | None = None  # the CA and certificate of the broker's TLS listener (tls_dir)
    tls_url: str | None = None  # mqtts://host:tls_port, units with `tls` connect here


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_broker(
    kind: str, host: str = "127.0.0.1", port: int | None = None, *, units: list[ClientRecord] | None = None,
    tls: TLSFiles | None = None, tls_port: int | None = None,
) -> EmbeddedBroker | MosquittoBroker:
    """Start an embedded or Mosquitto broker enforcing credentials (`units`: the live ones to admit),
    with a TLS listener too when given `tls`; RuntimeError with a plain reason if it cannot."""
    if kind not in BROKER_KINDS:
        raise BrokerURLError(f"unknown broker {kind!r}: embedded, mosquitto or mqtt://host:port")
    if port is not None and not _port_free(host, port):
        raise RuntimeError(f"port {host}:{port} is already in use (another broker? choose --port, "
                           f"or --broker mqtt://{host}:{port} to use the one running there)")
    if tls is not None and tls_port is not None and (tls_port == port or not _port_free(host, tls_port)):
        raise RuntimeError(f"TLS port {host}:{tls_port} is already in use (choose --tls-port)")
    if kind == "mosquitto" and not MosquittoBroker.available():
        raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
    if kind == "mosquitto" and not MosquittoBroker.dynsec_available():
        raise RuntimeError("mosquitto's dynamic-security plugin is missing (mosquitto 2.0 or later)")
    b: EmbeddedBroker | MosquittoBroker = (
        EmbeddedBroker(host, port, units=units or (), tls=tls, tls_port=tls_port) if kind == "embedded"
        else MosquittoBroker(host, port, units=units or (), tls=tls, tls_port=tls_port)
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
    tls_dir: str | Path | None = None,
    tls_port: int | None = None,
    tls_names: Iterable[str] = (),
    **cloud_options: Any,
) -> Iterator[Served]:
    """Start the broker (unless given by URL) and a connected Cloud; stop both on exit.

    `port` applies to a broker started here (default: a free port). `tls_dir`: a TLS listener
    too (on `tls_port`), its certificate for localhost, 127.0.0.1, `host` and `tls_names`.
    `cloud_options` go to `Cloud(...)` (hb_interval, hb_timeout, hb_timeout_factor, sweep_interval, clock, …).
    """
    if broker == "embedded" and cloud_options.get("worker_group"):
        raise BrokerURLError("the embedded broker (amqtt 0.12) has no shared subscriptions: worker_group needs "
                             "--broker mosquitto or the mqtt:// URL of a broker that has them (docs/scale.md)")
    own = None
    tls: TLSFiles | None = None
    if tls_dir is not None:
        if broker not in BROKER_KINDS:
            raise BrokerURLError("TLS (--tls) is for a broker started here (embedded or mosquitto); a broker "
                                 "given by URL has its own certificates")
        names = [host, *tls_names] if host not in ("0.0.0.0", "::", "") else list(tls_names)
        tls = ensure_server_cert(Path(tls_dir).resolve(), names)  # absolute: the broker process reads them
    if broker in BROKER_KINDS:
        with Registry(db) as reg:  # the broker admits the units whose credentials are live
            units = [ClientRecord(r["username"], r["pw_hash"]) for r in reg.live_credentials()]
        own = start_broker(broker, host, port, units=units, tls=tls, tls_port=tls_port)
        url, service_url = own.url, own.service_url
    else:
        parse_broker_url(broker)
        url, service_url = public_url(broker), broker
    try:
        cloud = Cloud(service_url, db, **cloud_options)
        try:
            cloud.start(connect_timeout)
            tls_url = own.tls_url if own is not None else None
            if http_port is None:
                yield Served(cloud, url, own, service_url=service_url, tls=tls, tls_url=tls_url)
            else:
                from cloud_stub.api import ApiServer, create_app  # FastAPI only when asked for

                with ApiServer(create_app(cloud), http_host, http_port) as api:
                    yield Served(cloud, url, own, api.url, service_url=service_url, tls=tls, tls_url=tls_url)
        finally:
            cloud.close()
    finally:
        if own is not None:
            own.stop()
