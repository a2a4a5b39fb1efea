"""/v1/units: factory registration (bench role), step results, a unit's record. docs/bench.md."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cloud_stub.api import models as m
from cloud_stub.api.deps import ApiError, CallerDep, CloudDep, needs, via
from cloud_stub.auth import Permission as P
from cloud_stub.registry import NotFound
from cloud_stub.service import Cloud
from cloud_stub.units import HardwareIds, UnitError, Units

router = APIRouter(prefix="/v1", tags=["units"])

_409 = {409: {"model": m.ErrorBody, "description": "hardware ids belong to another unit, or the unit is void"}}


def units_of(cloud: Cloud) -> Units:
    return Units(cloud.registry, cloud.clock, issue_credentials=cloud.issue_credentials,
                 revoke_credentials=cloud.revoke_credentials)


def _unit(view: dict) -> m.Unit:
    return m.Unit.model_validate(view)


def _rules(exc: UnitError) -> ApiError:
    return ApiError(422, "rejected", str(exc))


@router.post("/units/register", response_model=m.UnitRegistration, summary="Register a unit at the factory "
             "bench: its serial, device id and credentials",
             description="Allocates the next serial number for new hardware ids (in one transaction with the "
             "unit's record), or answers the serial these ids already have. New credentials are in the "
             "response only (the cloud keeps their hash): for a new unit, for one whose credentials were never "
             "confirmed written (`POST /v1/units/{serial}/result` step `register`), or with `rotate` (the old ones "
             "are revoked). Otherwise `credentials` is null and the bench reads the unit's identity back. Ids "
             "that belong to another unit: 409, nothing written. No broker connection to issue credentials: "
             "503, the unit keeps its serial and the failure is recorded.",
             responses={**_409, 503: {"model": m.ErrorBody, "description": "credentials cannot be issued now"}},
             **needs(P.DEVICES_REGISTER))
def register(body: m.UnitRegister, cloud: CloudDep, caller: CallerDep, request: Request) -> m.UnitRegistration:
    units = units_of(cloud)
    try:
        r = units.register(HardwareIds(body.uid, body.imei, body.iccid), station=body.station,
                           operator=body.operator, bundle_hash=body.bundle_hash, rotate=body.rotate,
                           actor=caller.actor, via=via(request))
    except UnitError as exc:
        raise _rules(exc) from None
    creds = None if r.credentials is None else m.UnitCredentials(mqtt_user=r.credentials[0],
                                                                  mqtt_pass=r.credentials[1])
    return m.UnitRegistration(serial=r.serial, device_id=r.device_id, mqtt_user=r.mqtt_user, created=r.created,
                              rotated=r.rotated, credentials=creds, unit=_unit(units.get(r.serial)))


@router.post("/units/{serial}/result", response_model=m.Unit, summary="Record a bench step's result for a unit",
             description="`register` ok confirms the unit holds its current credentials (status registered); "
             "`verify` ok is PASS (status verified); any failure sets status failed (the serial stays the "
             "unit's). Every result is kept with station, operator and time.",
             responses=_409, **needs(P.DEVICES_REGISTER))
def record_result(serial: str, body: m.UnitResult, cloud: CloudDep, caller: CallerDep,
                  request: Request) -> m.Unit:
    try:
        view = units_of(cloud).record_result(serial, body.step, body.ok, detail=body.detail, station=body.station,
                                             operator=body.operator, bundle_hash=body.bundle_hash,
                                             actor=caller.actor, via=via(request))
    except UnitError as exc:
        raise _rules(exc) from None
    return _unit(view)


@router.post("/units/{serial}/void", response_model=m.Unit, summary="Void a unit that will never ship",
             description="Its serial is never issued again, its hardware ids are refused from now on and its "
             "credentials are revoked.", responses=_409, **needs(P.DEVICES_REGISTER))
def void(serial: str, body: m.UnitVoid, cloud: CloudDep, caller: CallerDep, request: Request) -> m.Unit:
    try:
        return _unit(units_of(cloud).void(serial, body.reason, actor=caller.actor, via=via(request)))
    except UnitError as exc:
        raise _rules(exc) from None


@router.get("/units/{serial}", response_model=m.Unit, summary="A unit's factory record and step results",
            **needs(P.READ))
def get_unit(serial: str, cloud: CloudDep) -> m.Unit:
    try:
        return _unit(units_of(cloud).get(serial))
    except UnitError as exc:
        raise ApiError(404, "not_found", f"unknown unit {serial!r}: {exc}") from None
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
