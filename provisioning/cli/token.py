"""`simsock token …`: API tokens. `--db` works on the database directly (the bootstrap), otherwise the API.

    simsock token create --role admin --db sqlite:///simsock-cloud.db      # first admin token
    export SIMSOCK_TOKEN=$(simsock token create --role admin --db sqlite:///simsock-cloud.db -q)
    simsock token create --role bench --name line-2                         # via the API, as admin

The token is printed once; the cloud keeps only its hash. Working on the database needs
no token, only access to the database file: that is what makes it the bootstrap (and it
is audited as `local:<user>`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_stub import auth
from cloud_stub.registry import NotFound, Registry, RegistryError
from provisioning.api_client import DEFAULT_API_URL
from provisioning.cli import app
from provisioning.cli.apiopts import ApiOption, TokenOption, api_client, fail

token_app = typer.Typer(no_args_is_help=True, help="API tokens with roles: create (shown once), list, revoke.")
app.add_typer(token_app, name="token")

DbOption = Annotated[
    str | None,
    typer.Option("--db", show_default=False,
                 help="Work on this database directly (sqlite:///path.db) instead of the API: the bootstrap."),
]

console = Console()


@contextmanager
def _registry(db: str) -> Iterator[Registry]:
    try:
        with Registry(db) as reg:
            yield reg
    except (RegistryError, NotFound) as exc:
        raise fail(str(exc)) from None


def _when(ts: float | None) -> str:
    return "-" if not ts else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@token_app.command("create")
def create(
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(auth.ROLES)}.")],
    name: Annotated[str | None, typer.Option(help="What the token is for (shown in the audit log); "
                                                  "default: the role.")] = None,
    db: DbOption = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the token.")] = False,
) -> None:
    """Create a token and print it (once: it is not stored)."""
    try:
        auth.check_role(role)
        name = auth.check_name(name or role)
    except auth.TokenError as exc:
        raise fail(str(exc)) from None
    if db is not None:
        with _registry(db) as reg:
            row, secret = auth.create_token(reg, name, role, actor=auth.local_actor(), at=time.time(),
                                            via="simsock token create --db")
        info: dict[str, Any] = row
    else:
        with api_client(api, token) as client:
            created = client.create_token(name, role)
        info, secret = created.model_dump(), created.token
    if quiet:
        print(secret)
        return
    console.print(f"created token id {info['id']} [bold]{escape(info['name'])}[/] role [bold]{info['role']}[/]")
    console.print("store it now, it is shown only this once:", style="yellow")
    print(secret)


@token_app.command("list")
def list_tokens(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    db: DbOption = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Tokens (never their secrets): id, name, role, key, created, last used, revoked."""
    if db is not None:
        with _registry(db) as reg:
            rows = [auth.token_view(r) for r in reg.tokens(all_)]
    else:
        with api_client(api, token) as client:
            rows = [t.model_dump() for t in client.tokens(all_)]
    table = Table("id", "name", "role", "key", "created", "by", "last used", "revoked")
    for r in rows:
        table.add_row(str(r["id"]), escape(r["name"]), r["role"], f"sst_{r['key']}_…", _when(r["created"]),
                      escape(r["created_by"] or "-"), _when(r["last_used"]), _when(r["revoked"]))
    console.print(table)


@token_app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (simsock token list).")],
    db: DbOption = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Revoke a token: the next request that presents it gets 401."""
    if db is not None:
        with _registry(db) as reg:
            row = auth.revoke_token(reg, token_id, actor=auth.local_actor(), at=time.time(),
                                    via="simsock token revoke --db")
    else:
        with api_client(api, token) as client:
            row = client.revoke_token(token_id).model_dump()
    console.print(f"revoked token id {row['id']} [bold]{escape(row['name'])}[/] ({row['role']})")
