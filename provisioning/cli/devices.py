"""`simsock devices …` and `simsock audit`: the fleet and the audit log, through the cloud's HTTP API."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provisioning.api_client import DEFAULT_API_URL
from provisioning.cli import app
from provisioning.cli.apiopts import ApiOption, TokenOption, api_client, fail

devices_app = typer.Typer(no_args_is_help=True, help="Devices: list, show, send a command.")
app.add_typer(devices_app, name="devices")

console = Console()


def _when(ts: float | None) -> str:
    return "never" if not ts else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@devices_app.command("list")
def list_devices(
    account: Annotated[str | None, typer.Option(help="Only this account's (id or name).")] = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Every device with its account, status, desired and applied versions."""
    with api_client(api, token) as client:
        rows = client.devices(account)
    table = Table("device", "account", "serial", "status", "last seen", "desired", "applied", "conv.")
    for d in rows:
        table.add_row(escape(d.device_id), str(d.account_id or "-"), escape(d.serial or "-"), d.status,
                      _when(d.last_seen), f"v{d.desired_version} {d.desired_mode}" if d.desired_version else "-",
                      f"v{d.applied_version}", "[green]yes[/]" if d.converged else "[yellow]pending[/]")
    console.print(table)


@devices_app.command("show")
def show(device_id: str, api: ApiOption = DEFAULT_API_URL, token: TokenOption = None) -> None:
    """One device as the cloud sees it (JSON)."""
    with api_client(api, token) as client:
        d = client.device(device_id)
    console.print_json(d.model_dump_json())


@devices_app.command("cmd")
def command(
    device_id: str,
    op: Annotated[str, typer.Argument(help="relay, status or reboot.")],
    arg: Annotated[str | None, typer.Argument(help="relay: on, off or toggle.")] = None,
    wait: Annotated[float, typer.Option(min=0, max=30, help="Seconds to wait for the unit's ack.")] = 5.0,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Send a command to a unit and show its ack."""
    with api_client(api, token) as client:
        c = client.send_command(device_id, op, arg, wait=wait)
    if c.ack is None:
        console.print(f"command {c.id} sent; no ack within {wait:g}s (see GET /v1/commands/{c.id})")
        return
    if not c.ack.ok:
        raise fail(f"command {c.id} refused by the unit: {c.ack.err}")
    console.print(f"command {c.id} [green]ok[/] {escape(json.dumps(c.ack.res)) if c.ack.res else ''}")


@app.command("audit")
def audit(
    account: Annotated[str | None, typer.Option(help="Only this account's (id or name).")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. account.topup, token.create.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """The audit log: who changed what, when, before and after (operator or admin)."""
    with api_client(api, token) as client:
        rows = client.audit(account=account, action=action, limit=limit)
    table = Table("id", "when", "who", "action", "target", "via", "change")
    for e in rows:
        change = ""
        if isinstance(e.before, dict) and isinstance(e.after, dict):
            keys = [k for k in sorted(set(e.before) | set(e.after)) if e.before.get(k) != e.after.get(k)]
            change = ", ".join(f"{k}: {e.before.get(k)} -> {e.after.get(k)}" for k in keys)
        elif e.after is not None and e.before is None:
            change = "created"
        table.add_row(str(e.id), _when(e.at), escape(f"{e.actor} ({e.role})"), e.action,
                      escape(f"{e.target_type} {e.target_id or ''}"), escape(e.via or "-"), escape(change))
    console.print(table)
