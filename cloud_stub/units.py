"""Factory registration of units: serial allocation, hardware-id rules, credentials, step results.

    units = Units(registry, clock, issue_credentials=cloud.issue_credentials,
                  revoke_credentials=cloud.revoke_credentials)
    reg = units.register(HardwareIds(uid, imei, iccid), station="bench-1", operator="ann",
                         bundle_hash="…", actor=caller.actor, via="POST /v1/units/register")
    reg.serial, reg.device_id, reg.credentials      # (mqtt_user, mqtt_pass) or None
    units.record_result(reg.serial, "register", ok=True, …)   # the bench wrote and read back the identity

The rules (docs/bench.md has the reasons):

- **A serial is allocated in one transaction with the unit's row** (sequence counter +1,
  unit inserted, audit row): the number either exists bound to those hardware ids or was
  never taken. No number is issued twice (the counter row is locked: BEGIN IMMEDIATE on
  SQLite, a row lock on PostgreSQL) and none is lost (a failure rolls the counter back).
  A unit that later fails keeps its number, bound to its hardware, with the failed step
  recorded; a unit that will never ship is *voided* with a reason — the number stays
  taken for ever.
- **Idempotent per hardware ids**: uid, IMEI and ICCID that all belong to one unit give
  that unit's serial and device id again, never a second number. Ids split across units,
  or one id of a known unit with the others different, are refused (`UnitConflict`,
  HTTP 409) and nothing is written: a unit whose ids do not match its record is refused.
- **Credentials**: only their hash is stored, so "the same credentials again" cannot be
  given. A unit gets new credentials when it has none, or when the ones it got were never
  confirmed on it (no successful `register` step since they were issued), or on
  `rotate=True` (the old ones are revoked at once, by the broker). Otherwise the answer
  carries `credentials=None` and the bench must prove the unit holds them by reading its
  identity back.
- Credentials are made after the allocation's commit (issuing talks to the broker, which
  must not happen while the registry is locked); if that fails the unit keeps its serial,
  the failure is recorded, and the next registration of the same hardware issues them.

Every change writes its audit row in the change's transaction (cloud_stub/audit.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloud_stub import audit, serials
from cloud_stub.registry import NotFound, Registry, RegistryError

STEPS = ("allocate", "credentials", "flash", "register", "verify", "label", "void")
RESULT_STEPS = ("flash", "register", "verify", "label")  # what a bench reports
MAX_TEXT = 200

IssueFn = Callable[[str], tuple[str, str]]
RevokeFn = Callable[..., bool]


class UnitError(ValueError):
    """A registration request the rules refuse (HTTP 422)."""


class UnitConflict(RegistryError):
    """Hardware ids that belong to another unit, or a voided unit (HTTP 409)."""


class CredentialsUnavailable(ConnectionError):
    """The cloud could not issue credentials now (no broker connection); nothing is recorded as good (HTTP 503)."""


@dataclass(frozen=True)
class HardwareIds:
    uid: str
    imei: str
    iccid: str

    @classmethod
    def checked(cls, uid: str, imei: str, iccid: str) -> HardwareIds:
        """Normalised and validated (hex uid, Luhn IMEI/ICCID); UnitError otherwise."""
        try:
            return cls(serials.check_uid(uid), serials.check_imei(imei), serials.check_iccid(iccid))
        except serials.SerialError as exc:
            raise UnitError(str(exc)) from None


@dataclass(frozen=True)
class Registration:
    serial: str
    device_id: str
    created: bool
    credentials: tuple[str, str] | None  # (mqtt_user, mqtt_pass): only when issued by this call
    rotated: bool
    unit: dict[str, Any]

    @property
    def mqtt_user(self) -> str:
        return self.device_id


def _text(name: str, value: str | None, required: bool = True) -> str | None:
    if value is None or not value.strip():
        if required:
            raise UnitError(f"{name} is required")
        return None
    v = value.strip()
    if len(v) > MAX_TEXT or not v.isprintable():
        raise UnitError(f"{name}: 1-{MAX_TEXT} printable characters")
    return v


def unit_view(row: dict[str, Any]) -> dict[str, Any]:
    """A unit row as the API shows it (and as the audit log keeps it)."""
    return dict(row)


class Units:
    def __init__(
        self,
        registry: Registry,
        clock: Callable[[], float] = time.time,
        *,
        issue_credentials: IssueFn | None = None,
        revoke_credentials: RevokeFn | None = None,
        new_device_id: Callable[[], str] = serials.new_device_id,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.issue_credentials = issue_credentials
        self.revoke_credentials = revoke_credentials
        self.new_device_id = new_device_id

    # --- lookups -------------------------------------------------------------------------

    def get(self, serial: str) -> dict[str, Any]:
        """The unit with its step history; NotFound if unknown, UnitError if not a serial."""
        row = self.registry.unit(self._serial(serial))
        if row is None:
            raise NotFound(f"unknown unit {serial!r}")
        view = unit_view(row)
        view["steps"] = self.registry.unit_steps(row["serial"])
        return view

    @staticmethod
    def _serial(serial: str) -> str:
        try:
            return str(serials.parse_serial(serial))
        except serials.SerialError as exc:
            raise UnitError(str(exc)) from None

    @staticmethod
    def match(rows: list[dict[str, Any]], hw: HardwareIds) -> dict[str, Any] | None:
        """The one unit these ids belong to, None for new hardware; UnitConflict for anything mixed."""
        if not rows:
            return None
        if len(rows) > 1:
            parts = []
            for r in rows:
                held = [f"{k} {getattr(hw, k)}" for k in ("uid", "imei", "iccid") if r[k] == getattr(hw, k)]
                parts.append(f"{' and '.join(held)} belong to {r['serial']}")
            raise UnitConflict("hardware ids belong to different units: " + "; ".join(parts)
                               + " (a swapped modem or SIM? resolve it before registering)")
        row = rows[0]
        diff = [k for k in ("uid", "imei", "iccid") if row[k] != getattr(hw, k)]
        if diff:
            same = [k for k in ("uid", "imei", "iccid") if k not in diff]
            was = ", ".join(f"{k} {row[k]}" for k in diff)
            raise UnitConflict(f"{' and '.join(f'{k} {getattr(hw, k)}' for k in same)} belong to unit "
                               f"{row['serial']}, registered with {was}: the unit's ids do not match its record")
        if row["status"] == "void":
            raise UnitConflict(f"this hardware is unit {row['serial']}, voided ({row['void_reason']}); "
                               "a voided unit is never registered again")
        return row

    # --- register ----------------------------------------------------------------------------

    def register(
        self,
        hw: HardwareIds,
        *,
        station: str,
        operator: str,
        bundle_hash: str | None = None,
        rotate: bool = False,
        actor: audit.Actor,
        via: str | None = None,
    ) -> Registration:
        station_ = _text("station", station)
        operator_ = _text("operator", operator)
        bundle = _text("bundle_hash", bundle_hash, required=False)
        now = self.clock()
        year = time.gmtime(now).tm_year % 100
        try:
            after, created = self._allocate(hw, year, now, station_, operator_, bundle, rotate, actor, via)
        except sqlite3.IntegrityError as exc:  # the same hardware registered by two benches at the same instant
            raise UnitConflict(f"hardware ids registered concurrently by another bench; try again ({exc})") from None
        serial, device_id = after["serial"], after["device_id"]
        need = created or rotate or not self._credentials_confirmed(after)
        if not need:
            return Registration(serial, device_id, created, None, False, unit_view(after))
        creds = self._issue(serial, device_id, station_, operator_, bundle, rotate, actor, via)
        final = self._row(serial)
        return Registration(serial, device_id, created, creds, rotate and not created, unit_view(final))

    def _allocate(self, hw: HardwareIds, year: int, now: float, station_: str | None, operator_: str | None,
                  bundle: str | None, rotate: bool, actor: audit.Actor, via: str | None
                  ) -> tuple[dict[str, Any], bool]:
        """One transaction: find the unit by its ids or allocate a serial and store it; audited."""
        reg = self.registry
        with audit.change(reg, actor, "unit.allocate", "unit", None, at=now, via=via) as entry:
            row = self.match(reg.units_by_hardware(hw.uid, hw.imei, hw.iccid), hw)
            created = row is None
            if row is None:
                seq = reg.next_serial_seq(serials.PREFIX, year)
                if seq > serials.SEQ_MAX:
                    raise UnitError(f"serial numbers of 20{year:02d} are exhausted ({serials.SEQ_MAX})")
                serial = serials.format_serial(year, seq)
                device_id = self._fresh_device_id()
                reg.insert_unit({
                    "serial": serial, "year": year, "seq": seq, "uid": hw.uid, "imei": hw.imei, "iccid": hw.iccid,
                    "device_id": device_id, "status": "allocated", "bundle_hash": bundle, "station": station_,
                    "operator": operator_, "created": now, "updated": now,
                })
                reg.ensure_device(device_id, now)
                reg.set_device_serial(device_id, serial)
                entry.before = None
            else:
                serial, device_id = row["serial"], row["device_id"]
                entry.before = unit_view(row)
                reg.update_unit(serial, station=station_, operator=operator_, updated=now,
                                **({"bundle_hash": bundle} if bundle else {}))
            reg.add_unit_step(serial, "allocate", True, now, station=station_, operator=operator_, bundle_hash=bundle,
                              detail={"created": created, "rotate": rotate})
            after = reg.unit(serial)
            assert after is not None
            entry.target_id = serial
            entry.after = unit_view(after)
            entry.detail = {"created": created, "rotate": rotate, "device_id": device_id}
        return after, created

    def _credentials_confirmed(self, row: dict[str, Any]) -> bool:
        """The unit holds live credentials that a successful register step confirmed were written to it."""
        if row["device_id"] is None or self.registry.live_credential(row["device_id"]) is None:
            return False
        issued, confirmed = row["credentials_at"], row["credentials_confirmed_at"]
        return issued is not None and confirmed is not None and confirmed >= issued

    def _fresh_device_id(self) -> str:
        for _ in range(20):
            d = self.new_device_id()
            if self.registry.unit_by_device(d) is None and self.registry.device_row(d) is None:
                return d
        raise UnitError("could not find a free device id")  # 40 random bits: practically never

    def _issue(self, serial: str, device_id: str, station: str | None, operator: str | None, bundle: str | None,
               rotate: bool, actor: audit.Actor, via: str | None) -> tuple[str, str]:
        if self.issue_credentials is None:
            raise CredentialsUnavailable("this cloud cannot issue credentials")
        try:
            user, password = self.issue_credentials(device_id)
        except Exception as exc:
            now = self.clock()
            with audit.change(self.registry, actor, "unit.credentials_failed", "unit", serial, at=now,
                              via=via) as entry:
                entry.before = unit_view(self._row(serial))
                self.registry.update_unit(serial, status="failed", updated=now)
                self.registry.add_unit_step(serial, "credentials", False, now, station=station, operator=operator,
                                            bundle_hash=bundle, detail={"error": f"{type(exc).__name__}: {exc}"})
                entry.after = unit_view(self._row(serial))
            raise CredentialsUnavailable(f"unit {serial} keeps its serial, but the cloud could not issue its "
                                         f"credentials now ({exc}); register it again") from exc
        now = self.clock()
        action = "unit.credentials_rotated" if rotate else "unit.credentials_issued"
        with audit.change(self.registry, actor, action, "unit", serial, at=now, via=via) as entry:
            row = self._row(serial)
            entry.before = unit_view(row)
            status = row["status"] if row["status"] in ("registered", "verified") and rotate else "credentials_issued"
            self.registry.update_unit(serial, status=status, credentials_at=now, credentials_confirmed_at=None,
                                      updated=now)
            self.registry.add_unit_step(serial, "credentials", True, now, station=station, operator=operator,
                                        bundle_hash=bundle, detail={"rotated": rotate, "mqtt_user": user})
            entry.after = unit_view(self._row(serial))
            entry.detail = {"mqtt_user": user, "rotated": rotate}
        return user, password

    def _row(self, serial: str) -> dict[str, Any]:
        row = self.registry.unit(serial)
        if row is None:
            raise NotFound(f"unknown unit {serial!r}")
        return row

    # --- results and void ----------------------------------------------------------------------

    def record_result(
        self,
        serial: str,
        step: str,
        ok: bool,
        *,
        detail: dict[str, Any] | None = None,
        station: str | None = None,
        operator: str | None = None,
        bundle_hash: str | None = None,
        actor: audit.Actor,
        via: str | None = None,
    ) -> dict[str, Any]:
        """Record a bench step's result (flash, register, verify, label) for traceability.

        register ok: the identity was written and read back, so the current credentials are
        confirmed on the unit (status registered); verify ok: status verified (PASS); any
        failure: status failed (the serial stays bound to the unit's hardware)."""
        if step not in RESULT_STEPS:
            raise UnitError(f"unknown step {step!r} (one of: {', '.join(RESULT_STEPS)})")
        serial = self._serial(serial)
        station_ = _text("station", station, required=False)
        operator_ = _text("operator", operator, required=False)
        bundle = _text("bundle_hash", bundle_hash, required=False)
        now = self.clock()
        with audit.change(self.registry, actor, f"unit.{step}", "unit", serial, at=now, via=via) as entry:
            row = self._row(serial)
            if row["status"] == "void":
                raise UnitConflict(f"unit {serial} is void ({row['void_reason']}); nothing more is recorded for it")
            entry.before = unit_view(row)
            fields: dict[str, Any] = {"updated": now}
            if not ok:
                fields["status"] = "failed"
            elif step == "register":
                if row["credentials_at"] is None:
                    raise UnitError(f"unit {serial} has no credentials to confirm: register it first")
                fields.update(status="registered", registered_at=now, credentials_confirmed_at=now)
            elif step == "verify":
                if row["status"] not in ("registered", "verified"):
                    raise UnitError(f"unit {serial} is {row['status']}: only a registered unit can pass verify")
                fields.update(status="verified", verified_at=now)
            if bundle:
                fields["bundle_hash"] = bundle
            self.registry.update_unit(serial, **fields)
            self.registry.add_unit_step(serial, step, ok, now, detail=detail, station=station_, operator=operator_,
                                        bundle_hash=bundle)
            entry.after = unit_view(self._row(serial))
            entry.detail = {"step": step, "ok": ok, **({"detail": detail} if detail else {})}
        return self.get(serial)

    def void(self, serial: str, reason: str, *, actor: audit.Actor, via: str | None = None) -> dict[str, Any]:
        """Scrap a unit: its serial is never reused, its hardware never registered again, its credentials revoked."""
        serial = self._serial(serial)
        reason_ = _text("reason", reason)
        now = self.clock()
        with audit.change(self.registry, actor, "unit.void", "unit", serial, at=now, via=via) as entry:
            row = self._row(serial)
            if row["status"] == "void":
                raise UnitConflict(f"unit {serial} is already void ({row['void_reason']})")
            entry.before = unit_view(row)
            self.registry.update_unit(serial, status="void", void_at=now, void_reason=reason_, updated=now)
            self.registry.add_unit_step(serial, "void", True, now, detail={"reason": reason_})
            entry.after = unit_view(self._row(serial))
        device_id = row["device_id"]
        if device_id and self.revoke_credentials is not None and self.registry.live_credential(device_id):
            self.revoke_credentials(device_id, reason=f"unit {serial} void: {reason_}")
        return self.get(serial)


__all__ = [
    "CredentialsUnavailable", "HardwareIds", "Registration", "UnitConflict", "UnitError", "Units", "unit_view",
]
