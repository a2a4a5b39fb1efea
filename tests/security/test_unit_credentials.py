"""The real firmware (MicroPython unix port) on an enforcing broker, with credentials the cloud issued."""

from __future__ import annotations

import time

from provisioning.virtual import store_file
from tests.integration.conftest import Stack, stack  # noqa: F401  (the integration stack fixture)


def test_firmware_unit_connects_with_issued_credentials_and_is_cut_off_when_revoked(stack: Stack) -> None:  # noqa: F811
    unit = stack.add_unit()  # credentials from cloud.issue_credentials; online = subscribed under enforcement
    cid = stack.cloud.send_command(unit.device_id, "relay", "on")
    ack = stack.cloud.wait_ack(cid, 10)
    assert ack and ack["ok"]  # it subscribed to its cmd topic and may publish its ack
    mark = unit.mark()
    t0 = time.monotonic()
    assert stack.cloud.revoke_credentials(unit.device_id, reason="test")
    unit.wait_log(r"unit: disconnected|connection refused|link up failed", 5, since=mark)
    print(f"\n[{stack.broker.name}] revoke -> firmware noticed: {time.monotonic() - t0:.2f} s")
    assert stack.cloud.wait_status(unit.device_id, "offline", 3)
    unit.wait_log(r"connection refused: 5", 10, since=mark)  # it tries again and the broker says no
    assert unit.is_running  # refused, not crashed; backing off
    # new credentials (what the bench does for a unit back in its slot) and a power cycle: online again
    user, password = stack.cloud.issue_credentials(unit.device_id)
    unit.identity.update(mqtt_user=user, mqtt_pass=password)
    store_file.write(unit.root / "identity.json", unit.identity)
    unit.restart()
    assert stack.cloud.wait_status(unit.device_id, "online", 20), "\n".join(unit.console_tail(20))
