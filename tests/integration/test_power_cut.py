"""Power cuts at random moments while the unit persists desired states: it always boots, never forgets an ack.

The store's own fault-injection test (tests/firmware/test_store.py) cuts power at every
block write of a littlefs image; this one cuts the real process (kill -9) mid-stream.
"""

from __future__ import annotations

import json
import random
import time

from provisioning.virtual import store_file
from tests.integration.conftest import Stack, wait_until

ITERATIONS = 12


def test_kill_9_at_random_points_always_boots_consistent(stack: Stack) -> None:
    unit = stack.add_unit(config={"hb_s": 30})
    rng = random.Random(1121)
    topic = stack.topic(unit, "desired")
    v = stack.cloud.device(unit.device_id)["desired_version"]
    for i in range(ITERATIONS):
        # A burst of newer versions (each one persisted before it is acked), cut somewhere inside it.
        burst_start = v
        for _ in range(rng.randrange(3, 10)):
            v += 1
            stack.observer.publish(topic, json.dumps({"v": v, "mode": "active"}), retain=True)
        time.sleep(rng.uniform(0.0, 0.25))
        unit.kill9()

        acked = [a["dv"] for a in stack.observer.json_on(stack.topic(unit, "ack")) if a.get("dv") and a.get("ok")]
        state = store_file.read(unit.root / "state.json")  # raises if torn: the point of the test
        assert state["mode"] == "active"
        assert max(acked, default=0) <= state["v"] <= v, (i, state, max(acked, default=0), v)
        assert state["v"] >= min(burst_start, max(acked, default=0))

        mark = unit.mark()
        unit.start()
        unit.wait_log(r"unit: boot ", 10, since=mark)
        unit.wait_log(r"unit: connected", 20, since=mark)
        wait_until(lambda newest=v: (unit.state() or {}).get("v") == newest, 20, f"catch-up to v={v}")
    assert "corrupt" not in unit.console()
    assert "Traceback" not in unit.console()
