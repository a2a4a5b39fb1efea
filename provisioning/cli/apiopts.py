"""What every CLI command that talks to the cloud shares: `--api`, `--token`, a client, clean failures.

Host tools reach the cloud only through its HTTP API (docs/api.md). The URL and token
come from `--api` / `--token` or the environment (`SIMSOCK_API`, `SIMSOCK_TOKEN`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from provisioning.api_client import API_ENV, DEFAULT_API_URL, TOKEN_ENV, ApiClient, ApiError

ApiOption = Annotated[str, typer.Option("--api", envvar=API_ENV, help="The cloud's HTTP API (http://host:port).")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar=TOKEN_ENV, show_default=False, help="API token (sst_…).")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


@contextmanager
def api_client(api: str = DEFAULT_API_URL, token: str | None = None) -> Iterator[ApiClient]:
    """An ApiClient; a missing token, a bad URL and every ApiError become a one-line error and exit 1."""
    if not token:
        raise fail(f"no API token: pass --token or set {TOKEN_ENV} "
                   f"(an admin makes one: simsock token create --role operator …)")
    try:
        with ApiClient(api, token) as client:
            yield client
    except ApiError as exc:
        raise fail(exc.message) from None
