"""Fixtures for the scale tests: a private Mosquitto (shared subscriptions need a real broker)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from cloud_stub.broker import EmbeddedBroker, MosquittoBroker


def plain_broker(kind: type[MosquittoBroker] | type[EmbeddedBroker]) -> Any:
    """A broker without client authentication (what these load tests need), on a free port."""
    kw = {"auth": False} if "auth" in inspect.signature(kind).parameters else {}
    return kind(**kw)


def plain_mosquitto() -> MosquittoBroker:
    return plain_broker(MosquittoBroker)


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    if not MosquittoBroker.available():
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto)")
    b = plain_mosquitto()
    b.start()
    try:
        yield b
    finally:
        b.stop()
