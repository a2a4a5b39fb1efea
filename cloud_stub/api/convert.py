"""Registry rows and Cloud results -> API models, and the before/after snapshots of the audit log."""

from __future__ import annotations

from typing import Any

from cloud_stub import accounts as acc
from cloud_stub.api import models as m
from cloud_stub.registry import Registry


def account(a: acc.Account, device_count: int) -> m.Account:
    return m.Account(**a.to_dict(), device_count=device_count)


def account_detail(view: dict[str, Any]) -> m.AccountDetail:
    conv = view["convergence"]
    return m.AccountDetail(
        **{k: v for k, v in view.items() if k != "convergence"},
        device_count=len(view["devices"]),
        convergence=m.Convergence(converged=conv["converged"], pending=conv["pending"],
                                  converged_count=len(conv["converged"]), pending_count=len(conv["pending"])),
    )


def change(c: acc.Change, registry: Registry) -> m.AccountChange:
    published = {(d.device_id, d.version) for d in c.published}
    return m.AccountChange(
        account=account(c.account, len(registry.device_ids(c.account.id))),
        old_state=c.old_state,
        state_changed=c.state_changed,
        desired=[m.DesiredChange(device_id=d.device_id, version=d.version, mode=d.mode,
                                 published=(d.device_id, d.version) in published) for d in c.desired],
        steps=[m.Step(**vars(s)) for s in getattr(c, "steps", [])],
        notifications=[m.Notification(**vars(n)) for n in getattr(c, "notifications", [])],
    )


def heartbeat(row: dict[str, Any]) -> m.Heartbeat | None:
    if not row.get("hb_at"):
        return None
    return m.Heartbeat(
        at=row["hb_at"], seq=row.get("last_seq"), fw=row.get("hb_fw"), uptime_s=row.get("hb_uptime_s"),
        mode=row.get("hb_mode"), desired_version=row.get("hb_desired_version"), flags=row.get("hb_flags"),
        temperature_c=row.get("hb_temperature_c"), signal_dbm=row.get("hb_signal_dbm"),
        free_heap=row.get("hb_free_heap"), interval_s=row.get("hb_interval_s"),
    )


def _status_fields(view: dict[str, Any]) -> dict[str, Any]:
    return {
        "device_id": view["device_id"], "status": view["status"], "online": view["online"],
        "status_at": view.get("status_at"), "status_reason": view.get("status_reason"),
        "last_seen": view.get("last_seen"), "hb_count": view.get("hb_count") or 0, "heartbeat": heartbeat(view),
    }


def device_status(view: dict[str, Any]) -> m.DeviceStatus:
    return m.DeviceStatus(**_status_fields(view))


def device(view: dict[str, Any]) -> m.Device:
    return m.Device(
        **_status_fields(view),
        account_id=view["account_id"], serial=view["serial"], created=view["created"],
        desired_version=view.get("desired_version"), desired_mode=view.get("desired_mode"),
        desired_published_at=view.get("desired_published_at"), applied_version=view["applied_version"],
        applied_at=view.get("applied_at"), converged=view["converged"],
    )


def desired(view: dict[str, Any], row: dict[str, Any] | None) -> m.DesiredState:
    return m.DesiredState(
        device_id=view["device_id"], version=row["version"] if row else None, mode=row["mode"] if row else None,
        created=row["created"] if row else None, published_at=row["published_at"] if row else None,
        applied_version=view["applied_version"], converged=view["converged"],
    )


def command(row: dict[str, Any], acks: list[dict[str, Any]]) -> m.Command:
    first = acks[0] if acks else None
    return m.Command(
        id=row["id"], device_id=row["device_id"], op=row["op"], arg=row["arg"], exp=row["exp"],
        sent_at=row["sent_at"], acked=first is not None,
        ack=None if first is None else m.Ack(ok=first["ok"], err=first["err"], res=first["res"], at=first["at"]),
    )


# --- audit snapshots ----------------------------------------------------------------------


def account_snapshot(registry: Registry, account_id: int) -> dict[str, Any] | None:
    """The account row as stored (every column, so later columns are audited too) and its device ids."""
    row = registry.account(account_id)
    if row is None:
        return None
    return {**row, "devices": registry.device_ids(account_id)}


def device_snapshot(registry: Registry, device_id: str) -> dict[str, Any] | None:
    """The device row as stored and its desired state."""
    row = registry.device_row(device_id)
    if row is None:
        return None
    d = registry.desired(device_id)
    return {**row, "desired": None if d is None else {"version": d["version"], "mode": d["mode"]}}
