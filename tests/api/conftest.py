"""One real stack per test module: embedded broker, Cloud on SQLite, the HTTP API on uvicorn
(a free loopback port, in a thread), and a token for every role. Tests use their own
account and device names, so they share the stack without stepping on each other."""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloud_stub import auth
from cloud_stub.api import ApiServer, create_app
from cloud_stub.broker import EmbeddedBroker
from cloud_stub.service import Cloud
from provisioning.api_client import ApiClient

_spec = importlib.util.spec_from_file_location(
    "simsock_cloud_test_fixtures", Path(__file__).resolve().parents[1] / "cloud" / "conftest.py")
assert _spec and _spec.loader
_cloud_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cloud_fixtures)
FakeUnit = _cloud_fixtures.FakeUnit  # a paho client speaking the unit's side of the protocol


class OffsetClock:
    """The wall clock plus an offset that a test moves (the lifecycle's months pass in a call)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Stack:
    broker: EmbeddedBroker
    cloud: Cloud
    server: ApiServer
    db_url: str
    tokens: dict[str, str]  # role -> token
    clock: OffsetClock
    units: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, role: str | None = "admin", token: str | None = None) -> ApiClient:
        return ApiClient(self.url, token if token is not None else self.tokens[role] if role else "")

    def unit(self, device_id: str, **kw: Any) -> Any:
        u = FakeUnit(self.broker, device_id, **kw).connect()
        self.units.append(u)
        return u


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:  # the API is not about broker enforcement (tests/brokers is): fake units connect without credentials
        broker = EmbeddedBroker(auth=False)  # type: ignore[call-arg]
    except TypeError:  # a broker without per-unit credentials
        broker = EmbeddedBroker()
    broker.start()
    db_url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'cloud.db'}"
    clock = OffsetClock()
    cloud = Cloud(getattr(broker, "service_url", broker.url), db_url, hb_interval=1.0, sweep_interval=0.05,
                  reconnect_delay=(0.1, 0.5), clock=clock)
    server: ApiServer | None = None
    try:
        cloud.start()
        server = ApiServer(create_app(cloud), "127.0.0.1", 0).start()
        tokens = {role: auth.create_token(cloud.registry, f"test-{role}", role, actor=auth.local_actor(),
                                          at=time.time())[1] for role in auth.ROLES}
        s = Stack(broker, cloud, server, db_url, tokens, clock)
        yield s
        for u in s.units:
            u.disconnect()
    finally:
        if server is not None:
            server.stop()
        cloud.close()
        broker.stop()


@pytest.fixture
def admin(stack: Stack) -> Iterator[ApiClient]:
    with stack.client("admin") as c:
        yield c


@pytest.fixture
def name() -> Callable[[str], str]:
    """A fresh name per test (accounts and devices live in the module's shared database)."""
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:8]}"
