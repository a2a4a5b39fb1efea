"""`simsock account …`: prepaid accounts and their devices, through the cloud's HTTP API.

Every command talks to a running `simsock cloud serve` (`--api`, `--token`, or
SIMSOCK_API / SIMSOCK_TOKEN); the cloud writes the change, its audit entry and the new
desired states in one go and publishes them to the units. Amounts are currency units
("12.50"), checked here before anything is sent.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_stub.accounts import AccountError, format_cents, parse_amount
from cloud_stub.api import models as m
from provisioning.api_client import DEFAULT_API_URL
from provisioning.cli import app
from provisioning.cli.apiopts import ApiOption, TokenOption, api_client, fail

account_app = typer.Typer(no_args_is_help=True, help="Prepaid accounts: create, add devices, charge, top up, show.")
app.add_typer(account_app, name="account")

AccountArg = Annotated[str, typer.Argument(help="Account id or name.")]
AmountArg = Annotated[str, typer.Argument(help="Amount in currency units, e.g. 12.50.")]

console = Console()


def _amount(text: str, allow_zero: bool = False) -> str:
    try:
        return format_cents(parse_amount(text, allow_zero=allow_zero))
    except AccountError as exc:
        raise fail(str(exc)) from None


def _report(change: m.AccountChange) -> None:
    a = change.account
    line = f"[bold]{escape(a.name)}[/] (id {a.id}): balance {a.balance}, state [bold]{a.state}[/]"
    if change.state_changed:
        line += f" (was {change.old_state})"
    console.print(line)
    for d in change.desired:
        sent = "published" if d.published else "[yellow]stored, not published yet[/]"
        console.print(f"  desired {escape(d.device_id)}: v{d.version} {d.mode} — {sent}")
    if not all(d.published for d in change.desired):
        console.print("[yellow]warning:[/] some desired states were not published; "
                      "the cloud publishes them within a second of its broker connection coming back.")


@account_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Account name (unique, not all digits).")],
    balance: Annotated[str, typer.Option(help="Opening balance in currency units.")] = "0",
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Create an account; a positive balance makes it active, otherwise it starts suspended."""
    amount = _amount(balance, allow_zero=True)
    with api_client(api, token) as client:
        a = client.create_account(name, amount)
    console.print(f"created account [bold]{escape(a.name)}[/] id {a.id}: balance {a.balance}, "
                  f"state [bold]{a.state}[/]")


@account_app.command("add-device")
def add_device(
    account: AccountArg,
    device_id: Annotated[str, typer.Argument(help="The customer's slot id (MQTT topics hang off it).")],
    serial: Annotated[str | None, typer.Option(help="Serial of the unit in the slot.")] = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Put a device on an account and publish its desired mode."""
    with api_client(api, token) as client:
        change = client.add_device(account, device_id, serial)
    _report(change)


@account_app.command("charge", context_settings={"ignore_unknown_options": True})
def charge(
    account: AccountArg,
    amount: AmountArg,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the event log).")] = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Take money from the balance; at zero or below the account is suspended."""
    value = _amount(amount)
    with api_client(api, token) as client:
        change = client.charge(account, value, reason)
    _report(change)


@account_app.command("topup", context_settings={"ignore_unknown_options": True})
def topup(
    account: AccountArg,
    amount: AmountArg,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the event log).")] = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Add money to the balance; above zero the account is active again."""
    value = _amount(amount)
    with api_client(api, token) as client:
        change = client.top_up(account, value, reason)
    _report(change)


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@account_app.command("show")
def show(account: AccountArg, api: ApiOption = DEFAULT_API_URL, token: TokenOption = None) -> None:
    """Balance, state and every device with its status and convergence."""
    with api_client(api, token) as client:
        a = client.account(account)
        devices = client.devices(a.id)
    conv = a.convergence
    console.print(f"[bold]{escape(a.name)}[/] (id {a.id}): balance {a.balance}, state [bold]{a.state}[/] "
                  f"since {_ago(a.state_since)}, devices want [bold]{a.mode}[/]")
    table = Table("device", "serial", "status", "last seen", "hbs", "hb mode", "desired", "applied", "conv.")
    for d in devices:
        desired = f"v{d.desired_version} {d.desired_mode}" if d.desired_version else "-"
        if d.desired_version and d.desired_published_at is None:
            desired += " (unpublished)"
        table.add_row(
            escape(d.device_id), escape(d.serial or "-"), d.status, _ago(d.last_seen), str(d.hb_count),
            (d.heartbeat.mode if d.heartbeat else None) or "-", desired, f"v{d.applied_version}",
            "[green]yes[/]" if d.converged else "[yellow]pending[/]",
        )
    console.print(table)
    console.print(f"converged {conv.converged_count}/{len(devices)}"
                  + (f"; pending: {', '.join(conv.pending)}" if conv.pending else ""))


@account_app.command("list")
def list_accounts(api: ApiOption = DEFAULT_API_URL, token: TokenOption = None) -> None:
    """All accounts."""
    with api_client(api, token) as client:
        rows = client.accounts()
    table = Table("id", "name", "balance", "state", "devices")
    for a in rows:
        table.add_row(str(a.id), escape(a.name), a.balance, a.state, str(a.device_count))
    console.print(table)
