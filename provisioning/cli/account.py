"""`simsock account …`: prepaid accounts and their devices.

Every command works on the database (`--db`); the ones that change a device's desired
state also publish it to the broker (`--broker`), so they drive a `simsock cloud serve`
running in another terminal. The broker is reached before anything is written: an
unreachable broker fails the command with nothing changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_stub import views
from cloud_stub.accounts import AccountError, Accounts, Change, format_cents, parse_amount
from cloud_stub.publisher import DesiredPublisher
from cloud_stub.registry import DEFAULT_DB_URL, Registry, RegistryError
from cloud_stub.service import BrokerURLError
from provisioning.cli import app

account_app = typer.Typer(no_args_is_help=True, help="Prepaid accounts: create, add devices, charge, top up, show.")
app.add_typer(account_app, name="account")

DbOption = Annotated[str, typer.Option("--db", envvar="SIMSOCK_DB", help="Database URL (sqlite:///path.db).")]
BrokerOption = Annotated[
    str, typer.Option("--broker", envvar="SIMSOCK_BROKER", help="Broker to publish desired state to (mqtt://host:port).")
]
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
AccountArg = Annotated[str, typer.Argument(help="Account id or name.")]
AmountArg = Annotated[str, typer.Argument(help="Amount in currency units, e.g. 12.50.")]

console = Console()


def fail(message: str, code: int = 1) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


@contextmanager
def _accounts(db: str, broker: str | None = None, account: str | None = None) -> Iterator[Accounts]:
    """Accounts on `db`, publishing to `broker` if given; every failure becomes a clean exit.

    Order of checks: database, then `account` exists, then the broker answers; only
    then does the caller write (in one transaction).
    """
    try:
        with Registry(db) as registry:
            if account is not None:
                registry.find_account(account)
            if broker is None:
                yield Accounts(registry)
                return
            with DesiredPublisher(broker) as publisher:
                yield Accounts(registry, publish=publisher)
    except (AccountError, RegistryError, BrokerURLError, ConnectionError) as exc:
        raise fail(str(exc)) from None


def _amount(text: str) -> int:
    try:
        return parse_amount(text)
    except AccountError as exc:
        raise fail(str(exc)) from None


def _report(change: Change) -> None:
    a = change.account
    line = f"[bold]{escape(a.name)}[/] (id {a.id}): balance {format_cents(a.balance_cents)}, state [bold]{a.state}[/]"
    if change.state_changed:
        line += f" (was {change.old_state})"
    console.print(line)
    for d in change.desired:
        sent = "published" if d in change.published else "[yellow]stored, not published yet[/]"
        console.print(f"  desired {escape(d.device_id)}: v{d.version} {d.mode} — {sent}")
    if len(change.published) < len(change.desired):
        console.print("[yellow]warning:[/] some desired states were not published; "
                      "a running `simsock cloud serve` publishes them within a second.")


@account_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Account name (unique, not all digits).")],
    balance: Annotated[str, typer.Option(help="Opening balance in currency units.")] = "0",
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Create an account; a positive balance makes it active, otherwise it starts suspended."""
    try:
        cents = parse_amount(balance, allow_zero=True)
    except AccountError as exc:
        raise fail(str(exc)) from None
    with _accounts(db) as accounts:
        a = accounts.create(name, cents)
    console.print(f"created account [bold]{escape(a.name)}[/] id {a.id}: balance {format_cents(a.balance_cents)}, "
                  f"state [bold]{a.state}[/]")


@account_app.command("add-device")
def add_device(
    account: AccountArg,
    device_id: Annotated[str, typer.Argument(help="The customer's slot id (MQTT topics hang off it).")],
    serial: Annotated[str | None, typer.Option(help="Serial of the unit in the slot.")] = None,
    db: DbOption = DEFAULT_DB_URL,
    broker: BrokerOption = DEFAULT_BROKER,
) -> None:
    """Put a device on an account and publish its desired mode."""
    with _accounts(db, broker, account) as accounts:
        change = accounts.add_device(account, device_id, serial)
    _report(change)


@account_app.command("charge", context_settings={"ignore_unknown_options": True})
def charge(
    account: AccountArg,
    amount: AmountArg,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the event log).")] = None,
    db: DbOption = DEFAULT_DB_URL,
    broker: BrokerOption = DEFAULT_BROKER,
) -> None:
    """Take money from the balance; at zero or below the account is suspended."""
    cents = _amount(amount)
    with _accounts(db, broker, account) as accounts:
        change = accounts.charge(account, cents, reason)
    _report(change)


@account_app.command("topup", context_settings={"ignore_unknown_options": True})
def topup(
    account: AccountArg,
    amount: AmountArg,
    db: DbOption = DEFAULT_DB_URL,
    broker: BrokerOption = DEFAULT_BROKER,
) -> None:
    """Add money to the balance; above zero the account is active again."""
    cents = _amount(amount)
    with _accounts(db, broker, account) as accounts:
        change = accounts.top_up(account, cents)
    _report(change)


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@account_app.command("show")
def show(account: AccountArg, db: DbOption = DEFAULT_DB_URL) -> None:
    """Balance, state and every device with its status and convergence."""
    try:
        with Registry(db) as registry:
            a = views.account(registry, account)
            if a is None:
                raise fail(f"unknown account {account!r}")
            devices = views.devices(registry, a["id"])
    except RegistryError as exc:
        raise fail(str(exc)) from None
    conv = a["convergence"]
    console.print(f"[bold]{escape(a['name'])}[/] (id {a['id']}): balance {a['balance']}, state [bold]{a['state']}[/] "
                  f"since {_ago(a['state_since'])}, devices want [bold]{a['mode']}[/]")
    table = Table("device", "serial", "status", "last seen", "hbs", "hb mode", "desired", "applied", "conv.")
    for d in devices:
        desired = f"v{d['desired_version']} {d['desired_mode']}" if d["desired_version"] else "-"
        if d["desired_version"] and d["desired_published_at"] is None:
            desired += " (unpublished)"
        table.add_row(
            escape(d["device_id"]), escape(d["serial"] or "-"), d["status"], _ago(d["last_seen"]),
            str(d["hb_count"] or 0), d["hb_mode"] or "-", desired, f"v{d['applied_version']}",
            "[green]yes[/]" if d["converged"] else "[yellow]pending[/]",
        )
    console.print(table)
    console.print(f"converged {len(conv['converged'])}/{len(devices)}"
                  + (f"; pending: {', '.join(conv['pending'])}" if conv["pending"] else ""))


@account_app.command("list")
def list_accounts(db: DbOption = DEFAULT_DB_URL) -> None:
    """All accounts."""
    with _accounts(db) as accounts:
        rows = accounts.list_accounts()
        counts = {a.id: len(accounts.registry.device_ids(a.id)) for a in rows}
    table = Table("id", "name", "balance", "state", "devices")
    for a in rows:
        table.add_row(str(a.id), escape(a.name), format_cents(a.balance_cents), a.state, str(counts[a.id]))
    console.print(table)
