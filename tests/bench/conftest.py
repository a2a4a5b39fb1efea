"""One cloud stack per test module for the bench tests: an enforcing embedded broker (credentials are
issued through it), Cloud on SQLite, the HTTP API on uvicorn, a token per role; and `hw()`, fresh valid
hardware ids (hex uid, Luhn IMEI and ICCID) per call."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_stub import auth
from cloud_stub.api import ApiServer, create_app
from cloud_stub.broker import EmbeddedBroker
from cloud_stub.service import Cloud
from provisioning.api_client import ApiClient
from provisioning.virtual.unit import luhn_check_digit

_counter = itertools.count(1)


def make_hw(n: int, tag: int = 0) -> dict[str, str]:
    """Valid, distinct hardware ids for (tag, n)."""
    imei = f"35{tag:04d}{n:08d}"
    iccid = f"8949{tag:04d}{n:010d}"
    return {"uid": f"{tag:04x}{n:08x}", "imei": imei + luhn_check_digit(imei), "iccid": iccid + luhn_check_digit(iccid)}


@dataclass
class BenchStack:
    broker: EmbeddedBroker
    cloud: Cloud
    server: ApiServer
    db_url: str
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, role: str = "bench") -> ApiClient:
        return ApiClient(self.url, self.tokens[role])


@pytest.fixture(scope="module")
def bench_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    broker = EmbeddedBroker()
    broker.start()
    db_url = f"sqlite:///{tmp_path_factory.mktemp('bench') / 'cloud.db'}"
    cloud = Cloud(broker.service_url, db_url, hb_interval=1.0, sweep_interval=0.1, reconnect_delay=(0.1, 0.5))
    server: ApiServer | None = None
    try:
        cloud.start()
        server = ApiServer(create_app(cloud), "127.0.0.1", 0).start()
        tokens = {role: auth.create_token(cloud.registry, f"test-{role}", role, actor=auth.local_actor(),
                                          at=time.time())[1] for role in auth.ROLES}
        yield BenchStack(broker, cloud, server, db_url, tokens)
    finally:
        if server is not None:
            server.stop()
        cloud.close()
        broker.stop()


@pytest.fixture
def bench_api(bench_stack: BenchStack) -> Iterator[ApiClient]:
    with bench_stack.client("bench") as c:
        yield c


@pytest.fixture
def hw() -> Callable[[], dict[str, str]]:
    """Fresh hardware ids on each call (unique within the test session)."""
    return lambda: make_hw(next(_counter), tag=7)


@pytest.fixture
def bench_tmp(tmp_path: Path) -> Path:
    return tmp_path
