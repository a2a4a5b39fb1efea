"""Register one unit over its serial port: hardware ids -> cloud -> identity.json on the unit -> read back.

    from provisioning.api_client import ApiClient
    from provisioning.bench.register import register_unit

    with ApiClient(url, token) as api:
        reg = register_unit("/dev/ttyUSB0", api, station="bench-1", operator="ann")
        print(reg.serial, reg.device_id, reg.outcome)     # SK260000429 sd-4kq7… registered

Steps (docs/bench.md, "Registration"):

1. open the port, Ctrl-C, raw REPL (no soft reset)        -> console.UnitConsole
2. read the hardware ids through the firmware's board layer, the identity the unit already
   holds (through app.store) and the bundle hash of its manifest.json
3. `POST /v1/units/register` (uid, IMEI, ICCID, station, operator, bundle hash, rotate)
4. new credentials: write identity.json through the firmware's own `Store.save` (``.new`` +
   rename: never half-written), then read it back in a separate command and compare (the
   password is compared by its SHA-256, so it crosses the line once);
   no new credentials (the unit holds confirmed ones): read the unit's identity and check it
   is this serial's (serial, device id, user, a password) — else refuse, pointing at --rotate
5. `POST /v1/units/{serial}/result` register ok — only now do the credentials count as
   confirmed on the unit; any failure after step 3 records register *failed* (best effort:
   a cloud that is gone cannot be told, and then nothing was recorded as good either)
6. reset the unit through its board layer: it boots into the firmware with its identity.

A `RegisterError` names the step that failed and whether the failure reached the cloud.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioning.api_client import ApiClient, ApiError
from provisioning.bench.console import ConsoleError, UnitConsole

IDENTITY_FILE = "identity.json"

# Runs on the unit. `board.load()` and `Store` are the firmware's own: the ids come from the same
# code the unit uses in the field, and the store's atomic write is the one its boot trusts.
READ_IDS = """\
import board
from app.store import Store
_b = board.load()
_s = Store(_b.storage_root())
try:
    from app import config as _c
    _b.configure(_c.load(_s)['board'])
except Exception:
    pass
_imei, _iccid = _b.modem_ids()
if not (_imei and _iccid):
    _rd = getattr(_b, 'read_ids', None)
    if _rd is not None:
        import asyncio
        asyncio.run(_rd())
        _imei, _iccid = _b.modem_ids()
_bh = None
try:
    import json as _j2
    _root = _b.storage_root()
    with open(('' if _root == '/' else _root) + '/manifest.json') as _f:
        _bh = _j2.load(_f).get('bundle_hash')
except Exception:
    pass
try:
    from version import VERSION as _v
    _fw = '%d.%d.%d' % _v
except Exception:
    _fw = None
_r = {'board': _b.name, 'uid': _b.unique_id(), 'imei': _imei, 'iccid': _iccid, 'bundle_hash': _bh, 'fw': _fw}
"""

READ_IDENTITY = """\
import board, hashlib, binascii
from app.store import Store
_i = Store(board.load().storage_root()).load('identity.json', recover=False)
if type(_i) is dict:
    _p = _i.pop('mqtt_pass', None)
    _h = None
    if type(_p) is str and _p:
        _h = binascii.hexlify(hashlib.sha256(_p.encode()).digest()).decode()
    _i['pass_sha256'] = _h
_r = _i
"""

WRITE_IDENTITY = """\
import board, json
from app.store import Store
Store(board.load().storage_root()).save('identity.json', json.loads({doc!r}))
_r = True
"""


class RegisterError(Exception):
    """Registration failed at `step`; `serial` if the cloud had allocated one; `recorded`: the failure
    reached the cloud's record of the unit."""

    def __init__(self, step: str, message: str, *, serial: str | None = None, recorded: bool = False) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.serial = serial
        self.recorded = recorded

    def __str__(self) -> str:
        return self.message


@dataclass
class Registration:
    port: str
    serial: str
    device_id: str
    created: bool  # a new serial was allocated
    outcome: str  # "registered" (new identity written) | "rotated" | "already registered" (verified on the unit)
    uid: str
    imei: str
    iccid: str
    bundle_hash: str | None
    fw: str | None
    rebooted: bool
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds


def _sha256_hex(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _check_ids(ids: Any, port: str) -> dict[str, str]:
    if not isinstance(ids, dict):
        raise RegisterError("read_ids", f"{port}: the unit answered {ids!r} instead of its hardware ids")
    missing = [k for k in ("uid", "imei", "iccid") if not isinstance(ids.get(k), str) or not ids[k]]
    if missing:
        raise RegisterError("read_ids", f"{port}: the unit reports no {', '.join(missing)} (modem not answering? "
                                        f"SIM missing?); board {ids.get('board')!r}")
    return ids


def register_unit(
    port: str,
    api: ApiClient,
    station: str,
    operator: str,
    rotate: bool = False,
    *,
    bundle_hash: str | None = None,
    timeout: float = 5.0,
    reboot: bool = True,
    baud: int = 115200,
    progress: Callable[[str], None] | None = None,
) -> Registration:
    """Register the unit on `port` (see the module doc). Raises RegisterError; never reports a unit
    as registered unless its identity was written (or found), read back and confirmed to the cloud.

    `bundle_hash`: recorded when the unit has no manifest.json to read it from (a unit running
    sources); the unit's own manifest wins. `timeout`: seconds to wait for the unit's console."""
    t0 = time.monotonic()
    steps: dict[str, float] = {}
    note = progress or (lambda _s: None)

    def mark(step: str, since: float) -> float:
        now = time.monotonic()
        steps[step] = round(now - since, 3)
        return now

    note("console")
    try:
        con = UnitConsole(port, baud=baud, timeout=timeout).open()
    except ConsoleError as exc:
        raise RegisterError("console", str(exc)) from None
    serial: str | None = None
    try:
        t = mark("console", t0)
        note("read ids")
        try:
            ids = _check_ids(con.call(READ_IDS, timeout=max(timeout, 30.0)), port)
        except ConsoleError as exc:
            raise RegisterError("read_ids", str(exc)) from None
        bh = ids.get("bundle_hash") or bundle_hash
        t = mark("read_ids", t)

        note("cloud")
        try:
            r = api.register_unit(ids["uid"], ids["imei"], ids["iccid"], station=station, operator=operator,
                                  bundle_hash=bh, rotate=rotate)
        except ApiError as exc:
            why = {409: "refused by the cloud", 422: "refused by the cloud", 403: "not allowed",
                   401: "not allowed", 503: "the cloud cannot issue credentials now"}.get(exc.status, "cloud error")
            if exc.status == 0:
                why = "cloud unreachable"
            raise RegisterError("cloud", f"{port}: {why}: {exc.message}") from None
        serial = r.serial
        t = mark("cloud", t)

        def fail(step: str, message: str, detail: dict[str, Any] | None = None) -> RegisterError:
            recorded = False
            try:
                api.unit_result(r.serial, "register", False, station=station, operator=operator,
                                detail={"step": step, "error": message, **(detail or {})})
                recorded = True
            except ApiError:
                pass
            return RegisterError(step, f"{port}: unit {r.serial}: {message}", serial=r.serial, recorded=recorded)

        try:
            if r.credentials is not None:
                note("write identity")
                identity = {"device_id": r.device_id, "serial": r.serial, "mqtt_user": r.credentials.mqtt_user,
                            "mqtt_pass": r.credentials.mqtt_pass}
                con.call(WRITE_IDENTITY.format(doc=json.dumps(identity, separators=(",", ":"))),
                         timeout=max(timeout, 10.0))
                t = mark("write", t)
                note("read back")
                back = con.call(READ_IDENTITY, timeout=max(timeout, 10.0))
                want = {k: v for k, v in identity.items() if k != "mqtt_pass"}
                want["pass_sha256"] = _sha256_hex(identity["mqtt_pass"])
                if back != want:
                    raise fail("read_back", "the identity read back differs from the one written: "
                                            f"{_redact(back)} != {_redact(want)}")
                t = mark("read_back", t)
                outcome = "rotated" if r.rotated else "registered"
            else:
                note("check identity")
                back = con.call(READ_IDENTITY, timeout=max(timeout, 10.0))
                expected = {"device_id": r.device_id, "serial": r.serial, "mqtt_user": r.mqtt_user}
                if not isinstance(back, dict) or any(back.get(k) != v for k, v in expected.items()) \
                        or not back.get("pass_sha256"):
                    raise fail("check_identity", "the cloud has this unit registered with confirmed credentials, "
                                                 f"but the unit holds {_redact(back)}; run again with --rotate to "
                                                 "give it new credentials (the old ones are revoked)")
                t = mark("check_identity", t)
                outcome = "already registered"
        except ConsoleError as exc:
            raise fail("write", str(exc)) from None

        note("confirm")
        try:
            api.unit_result(r.serial, "register", True, station=station, operator=operator, bundle_hash=bh,
                            detail={"outcome": outcome, "port": port, "seconds": round(time.monotonic() - t0, 3)})
        except ApiError as exc:
            raise RegisterError("confirm", f"{port}: unit {r.serial}: the identity is on the unit but the cloud "
                                           f"did not take the confirmation ({exc.message}); register it again",
                                serial=r.serial) from None
        t = mark("confirm", t)
        rebooted = False
        if reboot:
            note("reboot")
            con.reset()
            rebooted = True
            mark("reboot", t)
        return Registration(port=port, serial=r.serial, device_id=r.device_id, created=r.created, outcome=outcome,
                            uid=ids["uid"], imei=ids["imei"], iccid=ids["iccid"], bundle_hash=bh, fw=ids.get("fw"),
                            rebooted=rebooted, seconds=round(time.monotonic() - t0, 3), steps=steps)
    except RegisterError:
        raise
    except Exception as exc:  # a bug or something unforeseen: still never a good unit
        raise RegisterError("internal", f"{port}: {type(exc).__name__}: {exc}", serial=serial) from exc
    finally:
        con.close()


def _redact(identity: Any) -> str:
    if not isinstance(identity, dict):
        return repr(identity)
    return json.dumps({k: (v if k != "mqtt_pass" else "***") for k, v in identity.items()}, sort_keys=True)


__all__ = ["RegisterError", "Registration", "register_unit"]
