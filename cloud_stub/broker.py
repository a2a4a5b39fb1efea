"""MQTT brokers the cloud and the tests run against.

Both brokers expose the same small surface (host, port, start, stop, restart) so
every integration test runs unchanged on the embedded broker and on Mosquitto.

Both enforce per-unit credentials and the ACLs of `cloud_stub.acl` by default
(docs/security.md): they boot from a dynamic-security document holding the cloud's
service account (`broker.service`, generated unless given; `broker.service_url` is the
URL with its credentials, for `Cloud(...)`) and the units' hashed credentials
(`units=`, e.g. from `Registry.live_credentials()`), and they accept
`$CONTROL/dynamic-security/v1` commands from the service account while running.
`auth=False` is the open mode (anyone may connect and publish anything), kept for the
raw MQTT-protocol tests only. `url` never carries credentials: it is what units use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cloud_stub.credentials import ClientRecord, ServiceAccount

if TYPE_CHECKING:
    from cloud_stub.tls import TLSFiles


class Broker(Protocol):
    host: str
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self, down_seconds: float = 0.0) -> None: ...

    @property
    def url(self) -> str: ...

    @property
    def service_url(self) -> str: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"broker did not listen on {host}:{port} within {timeout}s")


class _Auth:
    """The credentials part both brokers share."""

    host: str
    port: int

    def _init_auth(self, auth: bool, service: ServiceAccount | None, units: Iterable[ClientRecord]) -> None:
        self.auth = auth
        self.tls: TLSFiles | None = None
        self.tls_port: int | None = None
        self.service = service or ServiceAccount.generate()
        self._boot_units = list(units)

    def _document(self) -> dict[str, Any]:
        from cloud_stub.mosquitto_conf import dynsec_document

        return dynsec_document(self.service, self._boot_units)

    @property
    def service_url(self) -> str:
        """`mqtt://simsock-cloud:<password>@host:port` (just `url` in open mode)."""
        if not self.auth:
            return f"mqtt://{self.host}:{self.port}"
        return self.service.url(self.host, self.port)

    def _init_tls(self, tls: TLSFiles | None, tls_port: int | None) -> None:
        """A second listener with TLS (cloud_stub.tls) on `tls_port` (default: a free port), besides the plain one."""
        self.tls = tls
        self.tls_port = (tls_port or free_port()) if tls is not None else None

    @property
    def tls_url(self) -> str | None:
        """`mqtts://host:tls_port` (no credentials), None without a TLS listener."""
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls is not None else None

    def _wait_listening(self) -> None:
        wait_listening(self.host, self.port)
        if self.tls_port is not None:
            wait_listening(self.host, self.tls_port)


class EmbeddedBroker(_Auth):
    """amqtt in a thread of its own: no server to install or start by hand."""

    name = "embedded"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        auth: bool = True,
        service: ServiceAccount | None = None,
        units: Iterable[ClientRecord] = (),
        tls: TLSFiles | None = None,
        tls_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self._init_auth(auth, service, units)
        self._init_tls(tls, tls_port)
        self._store: Any = None  # amqtt_fixes.DynsecStore, made at the first start, kept across restarts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict:
        listeners: dict[str, dict[str, Any]] = {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}
        if self.tls is not None:  # amqtt 0.12: an ssl.SSLContext from certfile/keyfile (+ cafile for client certs)
            listeners["tls"] = {"type": "tcp", "bind": f"{self.host}:{self.tls_port}", "ssl": True,
                                "certfile": str(self.tls.cert), "keyfile": str(self.tls.key),
                                "cafile": str(self.tls.ca_pem)}
        return {
            "listeners": listeners,
            "plugins": {"cloud_stub.amqtt_fixes.CredentialAuth": {}, "cloud_stub.amqtt_fixes.CredentialTopics": {}},
        }

    @property
    def dynsec(self) -> Any:
        """The live credential store (amqtt_fixes.DynsecStore), None in open mode or before start."""
        return self._store

    def start(self) -> None:
        from cloud_stub.amqtt_fixes import DynsecStore
        from cloud_stub.amqtt_fixes import EnforcingBroker as AmqttBroker

        if self.auth and self._store is None:
            self._store = DynsecStore(self._document())

        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._broker = AmqttBroker(self._config(), loop=loop, dynsec=self._store)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:  # reported to the starting thread
                error.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"amqtt:{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            raise RuntimeError(f"embedded broker failed to start: {error[0]}") from error[0]
        self._wait_listening()

    def stop(self) -> None:
        if not self._loop or not self._broker:
            return
        fut = asyncio.run_coroutine_threadsafe(_shutdown_amqtt(self._broker), self._loop)
        # shutdown of a broker with dead clients may complain; it is down anyway
        with contextlib.suppress(Exception):
            fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
        self._loop = None
        self._broker = None

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


async def _shutdown_amqtt(broker: object) -> None:
    """Stop amqtt the way a crashed broker stops, then let it clean up.

    1. Close the listeners first, so the port is free for a restart whatever follows.
    2. Drop every client connection at once (clients see the broker go away at once).
       Without this amqtt's own shutdown sometimes hangs for good on Python 3.11 while
       stopping a client handler (asyncio.wait_for can swallow a cancellation), and the
       port stays bound: restart() then failed with "address already in use".
    3. amqtt's shutdown, bounded.
    """
    for server in list(getattr(broker, "_servers", {}).values()):
        instance = getattr(server, "instance", None)
        if instance is not None:
            instance.close()
    for _session, handler in list(getattr(broker, "_sessions", {}).values()):
        stream = getattr(getattr(handler, "writer", None), "_writer", None)
        transport = getattr(stream, "transport", None)
        if transport is not None:
            transport.abort()
    await asyncio.wait_for(broker.shutdown(), 5)  # type: ignore[attr-defined]


class MosquittoBroker(_Auth):
    """A real Mosquitto process on a loopback port, with persistence so a restart keeps retained state.

    With auth (default) it runs the dynamic-security plugin on `<workdir>/dynamic-security.json`,
    written at the first start from the service account and `units`; Mosquitto keeps that file
    up to date itself as the cloud changes credentials, so a restart keeps them.
    """

    name = "mosquitto"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        workdir: Path | None = None,
        *,
        auth: bool = True,
        service: ServiceAccount | None = None,
        units: Iterable[ClientRecord] = (),
        tls: TLSFiles | None = None,
        tls_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self._init_auth(auth, service, units)
        self._init_tls(tls, tls_port)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="simsock-mosq-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return executable() is not None

    @staticmethod
    def dynsec_available() -> bool:
        from cloud_stub.mosquitto_conf import dynsec_plugin

        return dynsec_plugin() is not None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _write_config(self) -> Path:
        import json

        from cloud_stub.mosquitto_conf import mosquitto_conf

        dynsec = None
        if self.auth:
            dynsec = self.workdir / "dynamic-security.json"
            if not dynsec.exists():  # later starts keep what Mosquitto saved there
                fd = os.open(dynsec, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(self._document(), f, indent=1)
        conf = self.workdir / "mosquitto.conf"
        tls_files = (self.tls.ca_pem, self.tls.cert, self.tls.key) if self.tls is not None else None
        conf.write_text(mosquitto_conf(host=self.host, port=self.port, workdir=self.workdir, dynsec_json=dynsec,
                                       tls_port=self.tls_port, tls_files=tls_files))
        return conf

    def start(self) -> None:
        exe = executable()
        if exe is None:
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        conf = self._write_config()
        self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._wait_listening()
        except TimeoutError:
            err = self._proc.stderr.read().decode() if self._proc.poll() is not None and self._proc.stderr else ""
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {err}") from None

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


def executable() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def make_broker(kind: str, **auth: Any) -> EmbeddedBroker | MosquittoBroker:
    """`auth`: auth=, service=, units= (and tls=, tls_port=) as the brokers take them."""
    if kind == "embedded":
        return EmbeddedBroker(**auth)
    if kind == "mosquitto":
        return MosquittoBroker(**auth)
    raise ValueError(f"unknown broker kind {kind!r} (embedded or mosquitto)")
