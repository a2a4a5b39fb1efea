"""`simsock bench …`: the factory bench. `register` gives a unit on a serial port its serial and identity."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from provisioning.api_client import DEFAULT_API_URL
from provisioning.cli import app
from provisioning.cli.apiopts import ApiOption, TokenOption, api_client, fail

bench_app = typer.Typer(no_args_is_help=True, help="The factory bench: register units over their serial ports.")
app.add_typer(bench_app, name="bench")

console = Console()


@bench_app.command("register")
def register(
    port: Annotated[str, typer.Option("--port", help="The unit's serial port (/dev/ttyUSB0, a pty path).")],
    station: Annotated[str, typer.Option("--station", envvar="SIMSOCK_STATION", help="This bench station's name.")],
    operator: Annotated[str, typer.Option("--operator", envvar="SIMSOCK_OPERATOR", help="Who runs the bench.")],
    rotate: Annotated[bool, typer.Option("--rotate", help="Issue new credentials even if the unit holds "
                                                          "confirmed ones (the old ones are revoked).")] = False,
    bundle_hash: Annotated[str | None, typer.Option("--bundle-hash", help="Recorded when the unit has no "
                                                    "manifest.json to read it from.")] = None,
    timeout: Annotated[float, typer.Option(min=0.5, help="Seconds to wait for the unit's console.")] = 5.0,
    baud: Annotated[int, typer.Option(help="Serial speed.")] = 115200,
    no_reboot: Annotated[bool, typer.Option("--no-reboot", help="Leave the unit in its REPL.")] = False,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Read the unit's hardware ids, get its serial and credentials from the cloud, write its identity
    atomically, read it back, confirm, reboot. Exit code 0 only for a unit registered for sure."""
    from provisioning.bench.register import RegisterError, register_unit

    with api_client(api, token) as client:
        try:
            with console.status(f"[bold]{escape(port)}[/]: registering…") as status:
                reg = register_unit(port, client, station, operator, rotate, bundle_hash=bundle_hash,
                                    timeout=timeout, baud=baud, reboot=not no_reboot,
                                    progress=lambda s: status.update(f"[bold]{escape(port)}[/]: {escape(s)}…"))
        except RegisterError as exc:
            where = f" (unit {exc.serial}, recorded as failed)" if exc.serial and exc.recorded else (
                f" (unit {exc.serial}; the failure could not be recorded)" if exc.serial else "")
            raise fail(f"register failed at {exc.step}: {exc.message}{where}") from None
    new = "new serial" if reg.created else "known unit"
    console.print(f"[green]{escape(reg.outcome)}[/] {escape(reg.serial)}  device {escape(reg.device_id)}  "
                  f"({new}; uid {reg.uid}, IMEI {reg.imei}, ICCID {reg.iccid}; {reg.seconds:.1f}s"
                  f"{'; rebooted' if reg.rebooted else ''})", highlight=False)
