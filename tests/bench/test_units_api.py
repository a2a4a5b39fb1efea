"""POST /v1/units/register, /result, /void and GET /v1/units/{serial} through the typed client, on a real
cloud with an enforcing broker: allocation, idempotency, credentials (issued, confirmed, rotated), conflicts
refused with nothing written, audit, and a cloud that cannot issue credentials."""

from __future__ import annotations

import pytest

from cloud_stub import audit, serials
from cloud_stub.registry import Registry
from cloud_stub.units import CredentialsUnavailable, HardwareIds, UnitConflict, Units
from provisioning.api_client import ApiError

REFUSED = (5, 135)  # CONNACK 5 'not authorized' (paho 2 reports it as reason code 135)


def _reg(api, hw, **kw):
    return api.register_unit(**hw, station=kw.pop("station", "st-1"), operator=kw.pop("operator", "ann"),
                             bundle_hash=kw.pop("bundle_hash", "ab" * 32), **kw)


def _connect_rc(broker, user: str, password: str) -> int:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
    c.username_pw_set(user, password)
    try:
        c.connect(broker.host, broker.port)
    except Exception:
        return -1
    rc: list[int] = []
    c.on_connect = lambda _c, _u, _f, reason, _p: rc.append(reason.value)
    c.loop_start()
    import time

    deadline = time.monotonic() + 5
    while not rc and time.monotonic() < deadline:
        time.sleep(0.02)
    c.loop_stop()
    c.disconnect()
    return rc[0] if rc else -2


def _snapshot(stack) -> tuple:
    reg = stack.cloud.registry
    return (len(reg.units(limit=100_000)), reg.serial_sequences(), len(reg.audit_entries(limit=100_000)))


def test_register_new_unit(bench_stack, bench_api, hw) -> None:
    ids = hw()
    r = _reg(bench_api, ids)
    assert r.created and serials.is_serial(r.serial) and serials.is_device_id(r.device_id)
    assert r.credentials is not None and r.credentials.mqtt_user == r.device_id == r.mqtt_user
    assert len(r.credentials.mqtt_pass) >= 32
    u = bench_api.unit(r.serial)
    assert (u.uid, u.imei, u.iccid, u.status, u.station, u.operator) == (
        ids["uid"], ids["imei"], ids["iccid"], "credentials_issued", "st-1", "ann")
    assert [s.step for s in u.steps] == ["allocate", "credentials"] and all(s.ok for s in u.steps)
    assert _connect_rc(bench_stack.broker, r.device_id, r.credentials.mqtt_pass) == 0
    # the slot exists with the serial, and the plaintext password is nowhere in the database
    assert bench_stack.cloud.registry.device_row(r.device_id)["serial"] == r.serial
    actions = [a.action for a in bench_stack.client("admin").audit(target_type="unit", target_id=r.serial)]
    assert actions == ["unit.allocate", "unit.credentials_issued"]
    dump = "\n".join(str(e.model_dump()) for e in bench_stack.client("admin").audit(target_id=r.serial))
    assert r.credentials.mqtt_pass not in dump


def test_reregister_is_idempotent_and_confirmed_credentials_are_not_reissued(bench_stack, bench_api, hw) -> None:
    ids = hw()
    first = _reg(bench_api, ids)
    # not confirmed on the unit yet: a second attempt gets fresh credentials, same serial
    second = _reg(bench_api, ids, station="st-2")
    assert (second.serial, second.device_id, second.created) == (first.serial, first.device_id, False)
    assert second.credentials is not None and second.credentials.mqtt_pass != first.credentials.mqtt_pass
    assert _connect_rc(bench_stack.broker, first.device_id, first.credentials.mqtt_pass) in REFUSED
    # the bench wrote and read back the identity
    u = bench_api.unit_result(second.serial, "register", True, station="st-2", operator="ann")
    assert u.status == "registered" and u.credentials_confirmed_at is not None
    third = _reg(bench_api, ids)
    assert (third.serial, third.created, third.credentials, third.rotated) == (first.serial, False, None, False)
    assert _connect_rc(bench_stack.broker, second.device_id, second.credentials.mqtt_pass) == 0
    assert bench_api.unit(first.serial).status == "registered"
    seqs = [s for s in bench_stack.cloud.registry.units(limit=100_000) if s["uid"] == ids["uid"]]
    assert len(seqs) == 1


def test_rotate_issues_new_credentials_and_revokes_the_old(bench_stack, bench_api, hw) -> None:
    ids = hw()
    first = _reg(bench_api, ids)
    bench_api.unit_result(first.serial, "register", True)
    rotated = _reg(bench_api, ids, rotate=True)
    assert rotated.serial == first.serial and rotated.rotated and rotated.credentials is not None
    assert _connect_rc(bench_stack.broker, first.device_id, first.credentials.mqtt_pass) in REFUSED
    assert _connect_rc(bench_stack.broker, first.device_id, rotated.credentials.mqtt_pass) == 0
    u = bench_api.unit(first.serial)
    assert u.credentials_confirmed_at is None  # until the bench confirms the new ones on the unit
    actions = [a.action for a in bench_stack.client("admin").audit(target_type="unit", target_id=first.serial)]
    assert actions[-1] == "unit.credentials_rotated"


@pytest.mark.parametrize("case", ["uid_of_a_imei_of_b", "duplicate_imei", "duplicate_iccid", "uid_of_a_new_ids"])
def test_conflicting_hardware_ids_are_refused_and_nothing_written(bench_stack, bench_api, hw, case) -> None:
    a, b = hw(), hw()
    ra, rb = _reg(bench_api, a), _reg(bench_api, b)
    fresh = hw()
    ids = {
        "uid_of_a_imei_of_b": {"uid": a["uid"], "imei": b["imei"], "iccid": fresh["iccid"]},
        "duplicate_imei": {**fresh, "imei": a["imei"]},
        "duplicate_iccid": {**fresh, "iccid": b["iccid"]},
        "uid_of_a_new_ids": {**fresh, "uid": a["uid"]},
    }[case]
    before = _snapshot(bench_stack)
    with pytest.raises(ApiError) as e:
        _reg(bench_api, ids)
    assert e.value.status == 409 and e.value.code == "conflict"
    assert ra.serial in e.value.message or rb.serial in e.value.message
    assert "belong" in e.value.message
    assert _snapshot(bench_stack) == before


def test_invalid_hardware_ids_422(bench_stack, bench_api, hw) -> None:
    ids = hw()
    before = _snapshot(bench_stack)
    for bad in ({**ids, "imei": ids["imei"][:-1] + str((int(ids["imei"][-1]) + 1) % 10)},
                {**ids, "iccid": "12"}, {**ids, "uid": "not-hex!"}):
        with pytest.raises(ApiError) as e:
            _reg(bench_api, bad)
        assert e.value.status == 422 and e.value.code == "invalid_request"
    assert _snapshot(bench_stack) == before


def test_void_unit_is_never_registered_again(bench_stack, bench_api, hw) -> None:
    ids = hw()
    r = _reg(bench_api, ids)
    v = bench_api.void_unit(r.serial, "cracked enclosure")
    assert v.status == "void" and v.void_reason == "cracked enclosure"
    assert _connect_rc(bench_stack.broker, r.device_id, r.credentials.mqtt_pass) in REFUSED
    with pytest.raises(ApiError) as e:
        _reg(bench_api, ids)
    assert e.value.status == 409 and "voided" in e.value.message and r.serial in e.value.message
    with pytest.raises(ApiError) as e:
        bench_api.unit_result(r.serial, "verify", True)
    assert e.value.status == 409


def test_results_are_recorded_and_verify_needs_registration(bench_stack, bench_api, hw) -> None:
    r = _reg(bench_api, hw())
    with pytest.raises(ApiError) as e:
        bench_api.unit_result(r.serial, "verify", True)
    assert e.value.status == 422 and "registered" in e.value.message
    bench_api.unit_result(r.serial, "flash", True, detail={"seconds": 12.5})
    bench_api.unit_result(r.serial, "register", True)
    u = bench_api.unit_result(r.serial, "verify", True, detail={"hb_s": 1.2})
    assert u.status == "verified" and u.verified_at
    assert [s.step for s in u.steps][-3:] == ["flash", "register", "verify"]
    assert u.steps[-3].detail == {"seconds": 12.5}
    failed = bench_api.unit_result(r.serial, "verify", False, detail={"error": "no heartbeat"})
    assert failed.status == "failed"
    with pytest.raises(ApiError) as e:
        bench_api.unit(serials.format_serial(26, 999_997))
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        bench_api.unit_result(serials.format_serial(26, 999_998), "flash", True)
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        bench_api.unit_result("SK-nonsense", "flash", True)
    assert e.value.status == 422


def test_read_only_may_read_but_not_register(bench_stack, hw) -> None:
    with bench_stack.client("read-only") as ro:
        with pytest.raises(ApiError) as e:
            _reg(ro, hw())
        assert e.value.status == 403
    with bench_stack.client("operator") as op, pytest.raises(ApiError) as e:
        _reg(op, hw())
    assert e.value.status == 403


def test_credentials_unavailable_keeps_the_serial_and_records_the_failure(tmp_path) -> None:
    from tests.bench.conftest import make_hw

    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    broker_up = {"up": False}

    def issue(device_id: str) -> tuple[str, str]:
        if not broker_up["up"]:
            raise ConnectionError("the cloud is not connected to the broker")
        return device_id, "p" * 32

    units = Units(reg, issue_credentials=issue)
    actor = audit.Actor("t", "bench")
    ids = HardwareIds(**make_hw(1, 99))
    with pytest.raises(CredentialsUnavailable, match="keeps its serial"):
        units.register(ids, station="s", operator="o", actor=actor)
    (row,) = reg.units()
    assert row["status"] == "failed" and row["credentials_at"] is None
    assert [(s["step"], s["ok"]) for s in reg.unit_steps(row["serial"])] == [("allocate", True), ("credentials", False)]
    broker_up["up"] = True
    again = units.register(ids, station="s", operator="o", actor=actor)
    assert again.serial == row["serial"] and not again.created and again.credentials is not None
    assert reg.unit(row["serial"])["status"] == "credentials_issued"
    with pytest.raises(UnitConflict):
        units.register(HardwareIds(**{**make_hw(2, 99), "imei": ids.imei}), station="s", operator="o", actor=actor)
    reg.close()
