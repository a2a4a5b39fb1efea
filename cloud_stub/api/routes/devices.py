"""/v1/devices (list, get, status, desired state, commands, events) and /v1/commands/{id}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from cloud_stub import audit
from cloud_stub.api import convert
from cloud_stub.api import models as m
from cloud_stub.api.deps import ApiError, CallerDep, CloudDep, account_id_of, needs, via
from cloud_stub.auth import Permission as P
from cloud_stub.service import Cloud

router = APIRouter(prefix="/v1", tags=["devices"])


def _view(cloud: Cloud, device_id: str) -> dict[str, Any]:
    view = cloud.device(device_id)
    if view is None:
        raise ApiError(404, "not_found", f"unknown device {device_id!r}")
    return view


@router.get("/devices", response_model=list[m.Device], summary="List devices", **needs(P.READ))
def list_devices(cloud: CloudDep, account: Annotated[str | None, Query(description="account id or name")] = None
                 ) -> list[m.Device]:
    account_id = None if account is None else account_id_of(cloud, account)
    return [convert.device(v) for v in cloud.devices(account_id)]


@router.get("/devices/{device_id}", response_model=m.Device, summary="A device: status, last heartbeat, "
            "desired and applied versions", **needs(P.READ))
def get_device(device_id: str, cloud: CloudDep) -> m.Device:
    return convert.device(_view(cloud, device_id))


@router.get("/devices/{device_id}/status", response_model=m.DeviceStatus, summary="A device's link status and "
            "last heartbeat", **needs(P.READ))
def get_status(device_id: str, cloud: CloudDep) -> m.DeviceStatus:
    return convert.device_status(_view(cloud, device_id))


@router.get("/devices/{device_id}/desired", response_model=m.DesiredState, summary="A device's desired state "
            "and whether it has converged", **needs(P.READ))
def get_desired(device_id: str, cloud: CloudDep) -> m.DesiredState:
    view = _view(cloud, device_id)
    return convert.desired(view, cloud.registry.desired(device_id))


@router.post("/devices/{device_id}/desired/publish", response_model=m.DesiredState,
             summary="Publish a device's desired state again", description="Re-sends the stored desired state "
             "(retained) to the broker; the version does not change.", **needs(P.DESIRED_WRITE))
def republish_desired(device_id: str, cloud: CloudDep, caller: CallerDep, request: Request) -> m.DesiredState:
    _view(cloud, device_id)
    if cloud.registry.desired(device_id) is None:
        raise ApiError(409, "conflict", f"device {device_id!r} has no desired state (it is on no account)")
    with audit.change(cloud.registry, caller.actor, "desired.publish", "device", device_id, at=cloud.clock(),
                      via=via(request)) as entry:
        entry.before = cloud.registry.desired(device_id)
        entry.account_id = (cloud.registry.device_row(device_id) or {}).get("account_id")
        if not cloud.publish_desired(device_id):
            raise ApiError(503, "unavailable", "the cloud is not connected to the broker; try again")
        entry.after = cloud.registry.desired(device_id)
    return convert.desired(_view(cloud, device_id), cloud.registry.desired(device_id))


@router.post("/devices/{device_id}/commands", status_code=202, response_model=m.Command,
             summary="Send a command to a unit", description="Published at QoS 1, never retained. With `wait` "
             "the answer comes when the unit acks or `wait` seconds pass (then `acked` is false: poll "
             "GET /v1/commands/{id}).", **needs(P.COMMANDS_SEND))
def send_command(device_id: str, body: m.CommandIn, cloud: CloudDep, caller: CallerDep,
                 request: Request) -> m.Command:
    row = cloud.registry.device_row(device_id)
    if row is None:
        raise ApiError(404, "not_found", f"unknown device {device_id!r}")
    with audit.change(cloud.registry, caller.actor, "command.send", "device", device_id, at=cloud.clock(),
                      via=via(request)) as entry:
        entry.account_id = row["account_id"]
        cmd_id = cloud.send_command(device_id, body.op, body.arg, body.exp)
        entry.after = cloud.registry.command(cmd_id)
        entry.detail = {"command_id": cmd_id}
    if body.wait > 0:  # after the commit: the ack's ingestion needs the registry
        cloud.wait_ack(cmd_id, body.wait)
    return _command(cloud, cmd_id)


def _command(cloud: Cloud, cmd_id: str) -> m.Command:
    row = cloud.registry.command(cmd_id)
    if row is None:
        raise ApiError(404, "not_found", f"unknown command {cmd_id!r}")
    return convert.command(row, cloud.registry.acks(cmd_id=cmd_id))


@router.get("/commands/{cmd_id}", response_model=m.Command, tags=["commands"], summary="A command and its ack",
            **needs(P.READ))
def get_command(cmd_id: str, cloud: CloudDep,
                wait: Annotated[float, Query(ge=0, le=30, description="seconds to wait for the ack")] = 0
                ) -> m.Command:
    cmd = _command(cloud, cmd_id)
    if not cmd.acked and wait > 0:
        cloud.wait_ack(cmd_id, wait)
        cmd = _command(cloud, cmd_id)
    return cmd
