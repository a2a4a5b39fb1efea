"""Concurrent top-ups, charges and billing runs keep the balance exact (threads and processes).

Each worker has its own database connection (its own `Registry`), so the writers really
contend: on SQLite for the database lock (BEGIN IMMEDIATE), on PostgreSQL for the
account's row lock (SELECT … FOR UPDATE inside the transaction).
"""

from __future__ import annotations

import multiprocessing
import threading
import time

from cloud_stub.accounts import Accounts
from cloud_stub.lifecycle import add_months
from cloud_stub.registry import Registry
from tests.cloud.test_lifecycle import T0, Clock

OPENING = 100_000_000  # never reaches zero: every anniversary bills
TOP_UP = 2000
PLAN = 2 * 400  # two devices
MONTHS = 24


def _open(url: str) -> int:
    with Registry(url) as reg:
        accounts = Accounts(reg, clock=Clock())
        a = accounts.create("acme", OPENING)
        for d in ("d1", "d2"):
            accounts.add_device(a.id, d)
        return a.id


def _check_books(url: str, account_id: int, top_ups: int, charges: int) -> None:
    with Registry(url) as reg:
        balance = reg.account(account_id)["balance_cents"]
        ledger = reg.ledger(account_id)
        plan = [r for r in ledger if r["kind"] == "plan_fee"]
        assert sorted(r["detail"]["month"] for r in plan) == list(range(1, MONTHS + 1))  # each month once
        assert balance == OPENING + top_ups * TOP_UP - charges * 100 - MONTHS * PLAN
        assert balance == sum(r["amount_cents"] for r in ledger)
        kinds = [r["kind"] for r in ledger]
        assert kinds.count("top_up") == top_ups
        first, last = kinds.index("plan_fee"), len(kinds) - 1 - kinds[::-1].index("plan_fee")
        assert "top_up" in kinds[first:last]  # the billing run really interleaved with the payers


def _biller(url: str, account_id: int, stop: threading.Event) -> None:
    """Moves its own clock a month at a time and runs the billing, twice per instant."""
    with Registry(url) as reg:
        clock = Clock()
        accounts = Accounts(reg, clock=clock)
        deadline = time.monotonic() + 30
        while not reg.ledger(account_id, kind="top_up") and time.monotonic() < deadline:  # let the payers start
            time.sleep(0.005)
        for k in range(1, MONTHS + 1):
            clock.t = add_months(T0, k)
            accounts.tick()
            accounts.tick()
            time.sleep(0.01)
    stop.set()


def test_threads_top_up_charge_and_bill_at_once(registry_url: str) -> None:
    aid = _open(registry_url)
    errors: list[BaseException] = []

    def payer(n: int) -> None:
        try:
            with Registry(registry_url) as reg:
                accounts = Accounts(reg, clock=Clock())
                for i in range(n):
                    accounts.top_up(aid, TOP_UP)
                    if i % 5 == 0:
                        accounts.charge(aid, 100, reason="sms")
                    time.sleep(0.003)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    stop = threading.Event()
    threads = [threading.Thread(target=payer, args=(20,)) for _ in range(6)]
    threads.append(threading.Thread(target=_biller, args=(registry_url, aid, stop)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and stop.is_set()
    _check_books(registry_url, aid, top_ups=6 * 20, charges=6 * 4)


def _process_payer(url: str, account_id: int, n: int) -> None:
    with Registry(url) as reg:
        accounts = Accounts(reg, clock=Clock())
        for _ in range(n):
            accounts.top_up(account_id, TOP_UP)
            time.sleep(0.003)  # leave the lock free now and then: SQLite's busy wait is not fair


def test_two_processes_top_up_while_a_third_bills(registry_url: str) -> None:
    aid = _open(registry_url)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_payer, args=(registry_url, aid, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    _biller(registry_url, aid, threading.Event())
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    _check_books(registry_url, aid, top_ups=80, charges=0)
