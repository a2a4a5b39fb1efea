"""The lifecycle on a running Cloud: the sweeper's tick moves an account to sleep when its clock
says so, and the transition reaches every linked unit (not the delinked one) over a real broker;
convergence counts linked units only, an offline unit stays pending until it checks in."""

from __future__ import annotations

import time
from typing import Any

from cloud_stub.lifecycle import DAY_S
from cloud_stub.service import Cloud, CloudEvent


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def test_a_timed_transition_publishes_to_every_linked_unit(broker: Any, db_url: str, units: Any,
                                                           until: Any) -> None:
    clock = Clock()
    with Cloud(broker.service_url, db_url, hb_interval=1.0, sweep_interval=0.05, reconnect_delay=(0.1, 0.5),
               clock=clock) as cloud:
        seen: list[CloudEvent] = []
        cloud.add_listener(lambda e: seen.append(e) if e.kind == "notification" else None)
        u1, u2, u3 = (units(d) for d in ("u1", "u2", "u3"))
        acct = cloud.create_account("acme", 2000)
        for d in ("u1", "u2", "u3"):
            cloud.add_device(acct.id, d)
        ch = cloud.delink_device(acct.id, "u2", signed_application=True)
        assert [(d.device_id, d.mode) for d in ch.published] == [("u2", "delinked")]
        assert until(lambda: u2.mode == "delinked")
        cloud.charge(acct.id, 2000, reason="test")  # -> suspended: u1, u3 only
        assert until(lambda: u1.mode == u3.mode == "suspended")
        assert cloud.wait_converged(acct.id, 5)
        u3.disconnect()  # offline when the account falls asleep
        got_u2 = len(u2.desired)

        clock.t += 15 * DAY_S + 1  # nobody calls run_lifecycle: the sweeper does
        assert until(lambda: u1.mode == "sleep", 5)
        a = cloud.account(acct.id)
        assert a["state"] == "sleep" and a["balance"] == "-4.00"  # entry fee for two linked units
        assert until(lambda: cloud.convergence(acct.id) == {"converged": ["u1"], "pending": ["u3"]}, 5)
        assert [x["device_id"] for x in a["delinked"]] == ["u2"] and a["delinked"][0]["converged"]
        assert len(u2.desired) == got_u2 and u2.mode == "delinked"  # the delinked unit heard nothing

        u3.connect()  # checks in later: the retained desired state converges it
        assert until(lambda: u3.mode == "sleep", 5)
        assert cloud.wait_converged(acct.id, 5)
        assert cloud.run_lifecycle() == []  # the sweeper already did it: idempotent
        assert until(lambda: [e.data["notification"] for e in seen][-1:] == ["account.sleep"])
        assert [n["kind"] for n in cloud.notifications(acct.id)] == [
            "device.delinked", "account.suspended", "account.sleep"]
        assert [r["kind"] for r in cloud.ledger(acct.id)] == ["opening", "charge", "sleep_fee"]
