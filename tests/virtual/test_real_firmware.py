"""The harness with the real firmware (firmware/main.py) and a real broker: boot, connect,
power cycle. Skipped until the firmware entry point exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_stub.broker import EmbeddedBroker, MosquittoBroker
from cloud_stub.service import Cloud
from provisioning.virtual.unit import FIRMWARE, VirtualUnit

pytestmark = pytest.mark.skipif(not (FIRMWARE / "main.py").exists(), reason="firmware/main.py not there yet")


def test_real_unit_boots_connects_and_survives_a_power_cycle(
    tmp_path: Path, broker: EmbeddedBroker | MosquittoBroker
) -> None:
    with Cloud(broker.service_url, f"sqlite:///{tmp_path / 'c.db'}") as cloud:  # the broker enforces credentials
        user, password = cloud.issue_credentials("vu-real-1")
    with VirtualUnit(
        tmp_path / "u", "vu-real-1", broker_host=broker.host, broker_port=broker.port, heapsize="256K",
        mqtt_user=user, mqtt_pass=password,
    ) as unit:
        unit.start()
        unit.wait_log(r" unit: boot .*device_id=vu-real-1", 20)
        unit.wait_log(r" unit: connected", 20)
        mark = unit.mark()
        unit.restart()
        unit.wait_log(r" unit: boot ", 20, since=mark)
        unit.wait_log(r" unit: connected", 20, since=mark)
        assert unit.is_running and unit.reboots == 0
    assert not unit.is_running
