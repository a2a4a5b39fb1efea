"""The serial number scheme (check digit) and the allocation: never a number twice, never a gap, across
8 processes x 100 units at once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import random
import string

import pytest

from cloud_stub import audit, serials
from cloud_stub.registry import Registry
from cloud_stub.units import HardwareIds, Units

ALNUM = string.digits + string.ascii_uppercase
ACTOR = audit.Actor("test-bench", "bench")


def test_format_and_parse() -> None:
    s = serials.format_serial(2026, 42)
    assert s == "SK26000042" + serials.check_digit("26000042") and len(s) == 11
    assert serials.parse_serial(s) == serials.Serial(26, 42)
    assert serials.parse_serial(" " + s.lower() + " ") == serials.Serial(26, 42)
    assert str(serials.parse_serial(s)) == s
    assert serials.check_digit("572") == "4"  # the published Damm example
    for bad in ("", "SK2600004", "SX260000429", "SK26A000429", s[:-1] + str((int(s[-1]) + 1) % 10)):
        assert not serials.is_serial(bad), bad
    with pytest.raises(serials.SerialError, match="check digit"):
        serials.parse_serial(s[:-1] + str((int(s[-1]) + 1) % 10))
    with pytest.raises(serials.SerialError):
        serials.format_serial(26, 0)
    with pytest.raises(serials.SerialError):
        serials.format_serial(26, serials.SEQ_MAX + 1)


def _sample() -> list[str]:
    rng = random.Random(4)
    seqs = [1, 9, 10, 99, 100, 999_999, *rng.sample(range(1, serials.SEQ_MAX), 400)]
    return [serials.format_serial(y, s) for y in (26, 27, 99, 0) for s in seqs]


def test_check_digit_catches_every_single_character_error() -> None:
    checked = 0
    for s in _sample():
        assert serials.check_ok(s)
        for i, orig in enumerate(s):
            for c in ALNUM + "-* ":
                if c != orig:
                    wrong = s[:i] + c + s[i + 1:]
                    assert not serials.is_serial(wrong), (s, wrong)
                    checked += 1
    assert checked > 100_000


def test_check_digit_catches_every_adjacent_transposition() -> None:
    checked = 0
    for s in _sample():
        for i in range(len(s) - 1):
            if s[i] != s[i + 1]:
                wrong = s[:i] + s[i + 1] + s[i] + s[i + 2:]
                assert not serials.is_serial(wrong), (s, wrong)
                checked += 1
    assert checked > 5_000


def test_every_adjacent_digit_pair_swap_is_caught_exhaustively() -> None:
    # The property of the quasigroup itself: for every interim digit and every pair a != b,
    # the two orders give different interims, so no swap anywhere can keep the check.
    from cloud_stub.serials import _DAMM

    for interim in range(10):
        for a in range(10):
            for b in range(10):
                if a != b:
                    assert _DAMM[_DAMM[interim][a]][b] != _DAMM[_DAMM[interim][b]][a]


def test_device_ids() -> None:
    ids = {serials.new_device_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(serials.is_device_id(d) and len(d) == 11 for d in ids)
    assert not serials.is_device_id("sd-ABCDEFGH") and not serials.is_device_id("sd-abcdefgi")


def test_hardware_id_checks() -> None:
    from tests.bench.conftest import make_hw

    hw = make_hw(1)
    assert HardwareIds.checked(hw["uid"].upper(), hw["imei"], hw["iccid"] + "F").uid == hw["uid"]
    for field, bad in (("imei", hw["imei"][:-1] + str((int(hw["imei"][-1]) + 1) % 10)), ("imei", "12345"),
                       ("iccid", "1234567890123456789"), ("uid", "xyz")):
        with pytest.raises(ValueError):
            HardwareIds.checked(**{**hw, field: bad})


# --- allocation under concurrency ---------------------------------------------------------------

PROCS = 8
PER_PROC = 100


def _fake_issue(device_id: str) -> tuple[str, str]:
    return device_id, "x" * 32


def _worker(url: str, tag: int, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    from tests.bench.conftest import make_hw

    try:
        reg = Registry(url, busy_timeout=60)
        units = Units(reg, issue_credentials=_fake_issue)
        barrier.wait(30)
        got = []
        for n in range(PER_PROC):
            r = units.register(HardwareIds(**make_hw(n, tag)), station=f"st-{tag}", operator="op",
                               bundle_hash="b" * 64, actor=ACTOR)
            got.append((r.serial, r.device_id, r.created))
        # idempotent: the same hardware again never gets a second number
        again = units.register(HardwareIds(**make_hw(0, tag)), station=f"st-{tag}", operator="op", actor=ACTOR)
        got.append((again.serial, again.device_id, again.created))
        reg.close()
        out.put((tag, got, None))
    except BaseException as exc:
        out.put((tag, [], f"{type(exc).__name__}: {exc}"))


def test_allocation_never_duplicates_across_processes(registry_url: str) -> None:
    Registry(registry_url).close()  # migrate once up front
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(registry_url, tag, barrier, out)) for tag in range(1, PROCS + 1)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    errors = [e for _, _, e in results if e]
    assert not errors, errors
    allocated = []
    for _tag, got, _ in results:
        *fresh, again = got
        assert all(created for _, _, created in fresh)
        assert again[:2] == fresh[0][:2] and again[2] is False
        allocated += [s for s, _, _ in fresh]
    assert len(allocated) == PROCS * PER_PROC
    assert len(set(allocated)) == len(allocated), "a serial was issued twice"
    seqs = sorted(serials.parse_serial(s).seq for s in allocated)
    assert seqs == list(range(1, PROCS * PER_PROC + 1)), "a number was lost"
    with Registry(registry_url) as reg:
        rows = reg.units(limit=10_000)
        assert len(rows) == PROCS * PER_PROC
        assert len({r["device_id"] for r in rows}) == len(rows)
        assert reg.serial_sequences()[0]["last_seq"] == PROCS * PER_PROC
        # every allocation was audited with its unit
        audited = {a["target_id"] for a in reg.audit_entries(action="unit.allocate", limit=100_000)}
        assert audited == set(allocated)


def test_a_failed_allocation_rolls_the_counter_back(tmp_path) -> None:
    from tests.bench.conftest import make_hw

    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    units = Units(reg, issue_credentials=_fake_issue)
    first = units.register(HardwareIds(**make_hw(1)), station="s", operator="o", actor=ACTOR)

    calls = {"n": 0}
    real = reg.add_audit

    def failing_audit(**kw):  # the audit row is the last write of the allocation's transaction
        calls["n"] += 1
        raise RuntimeError("disk full")

    reg.add_audit = failing_audit  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        units.register(HardwareIds(**make_hw(2)), station="s", operator="o", actor=ACTOR)
    reg.add_audit = real  # type: ignore[method-assign]
    assert calls["n"] == 1
    assert len(reg.units()) == 1 and reg.units_by_hardware(**make_hw(2)) == []
    second = units.register(HardwareIds(**make_hw(2)), station="s", operator="o", actor=ACTOR)
    assert serials.parse_serial(second.serial).seq == serials.parse_serial(first.serial).seq + 1
    reg.close()
