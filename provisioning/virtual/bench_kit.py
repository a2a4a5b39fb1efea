"""What a virtual factory bench needs, shared by tests/bench, hil_tests (--virtual) and bench/bench_throughput.py:
a cloud stack (enforcing embedded broker that issues credentials, Cloud on SQLite, the HTTP API, a token per
role), a factory build (the firmware + a config.json pointing at that broker, merged with a fabricated
MicroPython .bin — docs/build.md) and blank `FlashableUnit`s."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_stub import auth
from cloud_stub.api import ApiServer, create_app
from cloud_stub.broker import EmbeddedBroker
from cloud_stub.service import Cloud
from provisioning.api_client import ApiClient
from provisioning.build import BuildResult, build
from provisioning.build.esp32img import fake_micropython_bin
from provisioning.demo import SCALED_CONFIG
from provisioning.virtual import store_file
from provisioning.virtual.flashable_unit import FlashableUnit


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


@contextlib.contextmanager
def bench_stack(work: Path) -> Iterator[BenchStack]:
    """Broker + cloud (SQLite in `work`) + HTTP API, torn down on exit."""
    broker = EmbeddedBroker()
    broker.start()
    db_url = f"sqlite:///{work / 'cloud.db'}"
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


def factory_build(work: Path, broker_host: str, broker_port: int, **build_kw: Any) -> BuildResult:
    """The firmware + the factory config (this broker) in the littlefs image, merged with a fabricated
    MicroPython .bin (as in tests/build). `build_kw`: passed to `build` (e.g. flash_size)."""
    work.mkdir(parents=True, exist_ok=True)
    mpbin = work / "ESP32_GENERIC-fake-v1.29.0.bin"
    mpbin.write_bytes(fake_micropython_bin())
    config = {"broker_host": broker_host, "broker_port": broker_port, **SCALED_CONFIG}
    return build(work / "out", micropython_bin=mpbin, extra_files={"config.json": store_file.encode(config)},
                 **build_kw)


class UnitMaker:
    """Blank virtual units under `root`, started (ROM loader on their port); `close()` powers them all off."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[FlashableUnit] = []

    def __call__(self, **kw: Any) -> FlashableUnit:
        name = f"blank-{len(self.made)}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        u = FlashableUnit(self.root / name, name, **kw)
        self.made.append(u)
        u.start()
        return u

    def close(self) -> None:
        for u in self.made:
            u.close()


__all__ = ["BenchStack", "UnitMaker", "bench_stack", "factory_build"]
