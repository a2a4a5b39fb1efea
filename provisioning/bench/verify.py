"""Verify a registered unit end to end: its first heartbeat after registration reaches the cloud.

    with ApiClient(url, token) as api:
        res = verify_unit(api, "SK260000429", timeout=60, station="bench-1", operator="ann")
        res.ok, res.reason, res.to_heartbeat_s, res.fw, res.signal_dbm

After `register_unit` the unit reboots, boots into the firmware with its identity, connects to
the broker with its own credentials and sends heartbeats on its own topic (the broker's ACL
lets only that user publish there). The cloud stores every heartbeat with the time *it*
received it; the register confirmation is a step result stamped by the same clock. So:

- PASS: the device's last heartbeat is later than the unit's last `register` ok step, seen
  within `timeout` seconds of polling `GET /v1/devices/{id}/status`. The result is recorded
  as step `verify` ok (status `verified`) with: seconds from the register confirmation to
  that heartbeat (reboot + boot + network + MQTT connect), whether it is the unit's first
  heartbeat since boot (sequence number 1), its firmware version and signal (dBm).
- FAIL: no such heartbeat within the timeout, or a unit that is not registered (unknown
  serial, not bound to a device, status other than registered/verified: register it
  again first — the cloud accepts a verify PASS only for a registered unit). Recorded as
  step `verify` failed (status `failed`) with the reason and what the cloud saw of the
  device (link status, last seen, heartbeat count) — best effort: `recorded` says
  whether the record reached the cloud. Never an exception for a unit that fails: the
  result says so, so a bench run can go on with the next unit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cloud_stub.api import models as m
from provisioning.api_client import ApiClient, ApiError

DEVICE_ID_RE = re.compile(r"^sd-[0-9a-z]{8}$")


@dataclass
class VerifyResult:
    unit: str  # what was asked for: a serial or a device id
    ok: bool
    reason: str | None  # why it failed (None on PASS)
    serial: str | None = None
    device_id: str | None = None
    seconds: float = 0.0  # how long verify waited
    to_heartbeat_s: float | None = None  # register confirmation -> the heartbeat that passed it (cloud clock)
    first_heartbeat: bool | None = None  # that heartbeat is the unit's first since boot (seq 1)
    hb_seq: int | None = None
    fw: str | None = None
    signal_dbm: int | None = None
    recorded: bool = False  # the result reached the cloud's record of the unit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _last_register_ok(unit: m.Unit) -> float | None:
    ats = [s.at for s in unit.steps if s.step == "register" and s.ok]
    return max(ats) if ats else None


def _seen(status: m.DeviceStatus | None) -> dict[str, Any]:
    if status is None:
        return {}
    return {"link": status.status, "last_seen": status.last_seen, "hb_count": status.hb_count,
            "last_hb_at": status.heartbeat.at if status.heartbeat else None}


def verify_unit(
    api: ApiClient,
    unit: str,
    *,
    timeout: float = 60.0,
    station: str | None = None,
    operator: str | None = None,
    poll: float = 0.25,
    record: bool = True,
    progress: Callable[[str], None] | None = None,
) -> VerifyResult:
    """PASS only when a heartbeat later than the unit's register confirmation reached the cloud within
    `timeout` seconds (see the module doc). `unit`: a serial (SK…) or a device id (sd-…)."""
    t0 = time.monotonic()
    note = progress or (lambda _s: None)
    res = VerifyResult(unit=unit, ok=False, reason=None)

    def finish(ok: bool, reason: str | None, extra: dict[str, Any] | None = None, *,
               recordable: bool = True) -> VerifyResult:
        res.ok, res.reason = ok, reason
        res.seconds = round(time.monotonic() - t0, 3)
        if record and recordable and res.serial is not None:
            detail: dict[str, Any] = {"device_id": res.device_id, "waited_s": res.seconds, "timeout_s": timeout}
            if ok:
                detail.update(to_heartbeat_s=res.to_heartbeat_s, first_heartbeat=res.first_heartbeat,
                              hb_seq=res.hb_seq, fw=res.fw, signal_dbm=res.signal_dbm)
            else:
                detail.update(error=reason, **(extra or {}))
            try:
                api.unit_result(res.serial, "verify", ok, detail=detail, station=station, operator=operator)
                res.recorded = True
            except ApiError as exc:
                res.recorded = False
                if ok:  # the cloud refused the PASS (e.g. the unit was re-registered meanwhile): not a PASS
                    res.ok, res.reason = False, f"the cloud did not take the verify result: {exc.message}"
        return res

    # --- which unit, which device, since when ----------------------------------------------
    note("look up")
    try:
        if DEVICE_ID_RE.match(unit.strip().lower()):
            res.device_id = unit.strip().lower()
            dev = api.device(res.device_id)
            if dev.serial is None:
                return finish(False, f"device {res.device_id} is bound to no unit serial", recordable=False)
            res.serial = dev.serial
        else:
            res.serial = unit.strip().upper()
        rec = api.unit(res.serial)
    except ApiError as exc:  # unknown serial or device, cloud unreachable: nothing to record against
        return finish(False, f"cannot look up {unit}: {exc.message}", recordable=False)
    res.serial = rec.serial
    if rec.device_id is None:
        return finish(False, f"unit {rec.serial} has no device id")
    if res.device_id is not None and res.device_id != rec.device_id:
        return finish(False, f"device {res.device_id} names unit {rec.serial}, but that unit's device is "
                             f"{rec.device_id}")
    res.device_id = rec.device_id
    if rec.status == "void":
        return finish(False, f"unit {rec.serial} is void ({rec.void_reason}); nothing is recorded for it",
                      recordable=False)
    since = _last_register_ok(rec)
    if rec.status not in ("registered", "verified") or since is None:
        return finish(False, f"unit {rec.serial} is {rec.status}, not registered: register it (again) before "
                             "verifying")

    # --- wait for a heartbeat later than the register confirmation ---------------------------
    note("waiting for the first heartbeat")
    deadline = t0 + timeout
    status: m.DeviceStatus | None = None
    last_error: str | None = None
    while True:
        try:
            status = api.device_status(rec.device_id)
            last_error = None
        except ApiError as exc:
            last_error = exc.message  # a cloud hiccup is not the unit's failure: keep polling until the deadline
        hb = status.heartbeat if status is not None else None
        if hb is not None and hb.at is not None and hb.at > since:
            res.to_heartbeat_s = round(hb.at - since, 3)
            res.hb_seq, res.fw, res.signal_dbm = hb.seq, hb.fw, hb.signal_dbm
            res.first_heartbeat = hb.seq == 1 if hb.seq is not None else None
            note("pass")
            return finish(True, None)
        if time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))

    seen = _seen(status)
    if last_error is not None and status is None:
        why = f"the cloud could not be asked ({last_error})"
    elif status is None or not status.last_seen or status.last_seen <= since:
        why = ("the unit never reached the cloud since its registration (not running? not rebooted? no network "
               "or SIM? wrong credentials?)")
    else:
        why = f"the device is {status.status} but sent no heartbeat since its registration"
    return finish(False, f"no heartbeat from {rec.device_id} within {timeout:g}s: {why}", {"seen": seen})


__all__ = ["VerifyResult", "verify_unit"]
