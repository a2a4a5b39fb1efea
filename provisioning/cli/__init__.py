"""The `simsock` command: one typer app, one sub-command module per job."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="simsock: firmware and host tools for SIM sockets")


def _register() -> None:
    # Each module adds its commands to `app`; imported here so `simsock --help` lists them all.
    import importlib

    for name in ("demo", "cloud", "account", "token", "devices", "build", "bench"):
        try:
            importlib.import_module(f"provisioning.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"provisioning.cli.{name}":
                raise


_register()
