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


@bench_app.command("verify")
def verify(
    serial: Annotated[str, typer.Option("--serial", help="The unit's serial (SK…) or its device id (sd-…).")],
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for its first heartbeat.")] = 60.0,
    station: Annotated[str | None, typer.Option("--station", envvar="SIMSOCK_STATION",
                                                help="This bench station's name.")] = None,
    operator: Annotated[str | None, typer.Option("--operator", envvar="SIMSOCK_OPERATOR",
                                                 help="Who runs the bench.")] = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """PASS when the registered unit's first heartbeat since its registration reaches the cloud within
    --timeout; the result is recorded either way. Exit code 0 only for PASS."""
    from provisioning.bench.verify import verify_unit

    with api_client(api, token) as client, console.status(f"[bold]{escape(serial)}[/]: verifying…") as status:
        res = verify_unit(client, serial, timeout=timeout, station=station, operator=operator,
                          progress=lambda s: status.update(f"[bold]{escape(serial)}[/]: {escape(s)}…"))
    if not res.ok:
        rec = "recorded as failed" if res.recorded else "the failure could not be recorded"
        raise fail(f"verify FAIL {res.serial or serial}: {res.reason} ({rec})")
    first = "first heartbeat" if res.first_heartbeat else f"heartbeat #{res.hb_seq}"
    console.print(f"[green]PASS[/] {escape(res.serial or '')}  device {escape(res.device_id or '')}  ({first} "
                  f"{res.to_heartbeat_s:.1f}s after registration; fw {res.fw or '?'}; signal "
                  f"{'?' if res.signal_dbm is None else res.signal_dbm} dBm)",
                  highlight=False)


@bench_app.command("label")
def label(
    serial: Annotated[str, typer.Option("--serial", help="The unit's serial (SK…).")],
    out: Annotated[str, typer.Option("--out", help="Directory for <serial>.png.")],
    any_status: Annotated[bool, typer.Option("--any-status", help="Label a unit that has not passed verify.")
                          ] = False,
    station: Annotated[str | None, typer.Option("--station", envvar="SIMSOCK_STATION",
                                                help="This bench station's name.")] = None,
    operator: Annotated[str | None, typer.Option("--operator", envvar="SIMSOCK_OPERATOR",
                                                 help="Who runs the bench.")] = None,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Write the unit's 50×30 mm label (300 dpi PNG: serial, device id, hardware ids, firmware, QR code) and
    record the label step. Only for a verified unit unless --any-status."""
    from pathlib import Path

    from provisioning.bench.label import label_info, write_label

    with api_client(api, token) as client:
        unit = client.unit(serial)
        if unit.status != "verified" and not any_status:
            raise fail(f"unit {unit.serial} is {unit.status}, not verified: no label (verify it first, or "
                       "--any-status)")
        info = label_info(client, unit.serial)
        path, digest = write_label(info, Path(out))
        client.unit_result(unit.serial, "label", True, station=station, operator=operator,
                           detail={"file": path.name, "sha256": digest, "qr": info.qr_text, "fw": info.fw})
    console.print(f"[green]label[/] {escape(str(path))}  ({escape(info.qr_text)}; fw {info.fw or '?'})",
                  highlight=False)


@bench_app.command("report")
def report(
    in_: Annotated[str, typer.Option("--in", help="JSON: a list of unit outcomes (or a report.json).")],
    out: Annotated[str, typer.Option("--out", help="Directory for report.json, units.csv, summary.csv.")],
) -> None:
    """A bench report from per-unit outcomes: pass/fail counts, failure reasons grouped, units per hour,
    per-step durations; as JSON and CSV."""
    from pathlib import Path

    from provisioning.bench.report import build_report, load_outcomes, write_report

    try:
        outcomes = load_outcomes(Path(in_))
    except (OSError, ValueError, TypeError) as exc:
        raise fail(f"cannot read {in_}: {exc}") from None
    rep = build_report(outcomes)
    paths = write_report(rep, Path(out))
    s = rep["summary"]
    console.print(f"{s['units']} units: [green]{s['passed']} passed[/], [red]{s['failed']} failed[/]; "
                  f"{s['units_per_hour']} units/h over {s['span_s']:.0f}s", highlight=False)
    for g in rep["failure_reasons"]:
        console.print(f"  {g['count']:>4}  {escape(g['reason'])}", highlight=False)
    console.print("wrote " + ", ".join(escape(str(p)) for p in paths), highlight=False)
