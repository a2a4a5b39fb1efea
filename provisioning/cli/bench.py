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


@bench_app.command("flash")
def flash(
    port: Annotated[list[str], typer.Option("--port", help="A unit's serial port; repeat for several (flashed "
                                                           "in parallel).")],
    image: Annotated[str, typer.Option("--image", help="The merged image of `simsock build`.")
                     ] = ".build/out/flash.bin",
    chip: Annotated[str, typer.Option("--chip", help="The chip this bench flashes; any other is refused.")
                    ] = "esp32",
    baud: Annotated[int, typer.Option(help="Serial speed after connecting at the ROM's 115200.")] = 921600,
    offset: Annotated[str, typer.Option(help="Flash offset of the image (0x1000 for the classic ESP32).")
                      ] = "0x1000",
    no_stub: Annotated[bool, typer.Option("--no-stub", help="Use the ROM loader only (no stub flasher).")] = False,
    before: Annotated[str, typer.Option(help="default-reset (DTR/RTS into download mode) or no-reset.")
                      ] = "default-reset",
    after: Annotated[str, typer.Option(help="hard-reset (RTS), soft-reset (run the app) or no-reset.")
                     ] = "hard-reset",
    connect_attempts: Annotated[int, typer.Option(min=1, help="Connection attempts (~0.7 s each).")] = 7,
) -> None:
    """Write the image (compressed) through esptool, verify it by MD5, reset the unit. Exit code 0 only
    when every port was written and verified."""
    import json
    import threading
    from pathlib import Path

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from provisioning.bench.flash import FlashError, FlashProgress, FlashResult, flash_unit

    try:
        at = int(offset, 0)
    except ValueError:
        raise fail(f"--offset {offset!r} is not a number") from None
    img = Path(image)
    if not img.is_file():
        raise fail(f"{image}: no such image (run simsock build --micropython-bin …)")
    expect: int | None = None
    with_build = img.parent / "build.json"  # the build says which chip and flash size the image is for
    if with_build.is_file():
        try:
            info = json.loads(with_build.read_text())
            built = info["flash"] if info.get("flash") and info["flash"].get("file") == img.name else None
        except (ValueError, KeyError, TypeError, AttributeError):
            built = None
        if built is not None:
            if built.get("chip") and built["chip"] != chip:
                raise fail(f"{image} was built for {built['chip']}, this bench flashes --chip {chip}")
            if built.get("offset") is not None and int(built["offset"]) != at:
                raise fail(f"{image} belongs at {int(built['offset']):#x} (build.json), not {at:#x}")
            expect = int(info["fs"]["flash_size"])
    results: dict[str, FlashResult | FlashError] = {}
    with Progress(TextColumn("[bold]{task.fields[port]}[/]"), TextColumn("{task.description:<8}"), BarColumn(),
                  DownloadColumn(), TimeElapsedColumn(), console=console) as bars:
        tasks = {p: bars.add_task("waiting", total=None, port=p) for p in port}

        def show(p: FlashProgress) -> None:
            if p.phase == "write" and p.total:
                bars.update(tasks[p.port], description="write", completed=p.done, total=p.total)
            elif p.phase == "done":
                bars.update(tasks[p.port], description="[green]verified[/]")
            else:
                bars.update(tasks[p.port], description=p.phase)

        def one(p: str) -> None:
            try:
                results[p] = flash_unit(p, img, offset=at, chip=chip, baud=baud, stub=not no_stub,
                                        connect_mode=before, connect_attempts=connect_attempts, after=after,
                                        expect_flash_size=expect, progress=show, cancel=stop)
            except FlashError as exc:
                results[p] = exc
                bars.update(tasks[p], description=f"[red]{exc.step} failed[/]")
            except Exception as exc:  # a bug must not count as a flashed unit either
                results[p] = FlashError("internal", repr(exc), FlashResult(p, str(img), at, 0, "", ""))
                bars.update(tasks[p], description="[red]failed[/]")

        stop = threading.Event()  # Ctrl-C: every flash stops at its next block and fails as interrupted
        threads = [threading.Thread(target=one, args=(p,), name=f"flash {p}") for p in port]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            stop.set()
            for t in threads:
                t.join()
    failed = 0
    for p in port:
        r = results.get(p)
        if isinstance(r, FlashResult) and r.ok:
            console.print(f"[green]flashed[/] {escape(p)}  {escape(r.chip or '')}  MAC {r.mac}  {r.size} bytes at "
                          f"{r.offset:#x}, MD5 verified ({r.seconds:.1f}s)", highlight=False)
        else:
            failed += 1
            why = r.message if isinstance(r, FlashError) else "no result"
            step = r.step if isinstance(r, FlashError) else "?"
            console.print(f"[red]FAILED[/] {escape(p)}  at {step}: {escape(why)}", highlight=False)
    if failed:
        raise fail(f"flash failed on {failed} of {len(port)} port(s)")


@bench_app.command("run")
def run(
    station: Annotated[str, typer.Option("--station", envvar="SIMSOCK_STATION", help="This bench station's name.")],
    operator: Annotated[str, typer.Option("--operator", envvar="SIMSOCK_OPERATOR", help="Who runs the bench.")],
    out: Annotated[str, typer.Option("--out", help="Directory for the report (report.json, units.csv, "
                                                   "summary.csv) and labels/.")],
    port: Annotated[list[str] | None, typer.Option("--port", help="A unit's serial port; repeat for several "
                                                                  "(all run in parallel).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Also start a unit on every new port that appears "
                                                        "(matched by --vid/--pid), until Ctrl-C.")] = False,
    vid: Annotated[str | None, typer.Option("--vid", help="USB vendor id for --watch (hex, e.g. 10c4).")] = None,
    pid: Annotated[str | None, typer.Option("--pid", help="USB product id for --watch (hex, e.g. ea60).")] = None,
    image: Annotated[str | None, typer.Option("--image", help="A merged image of `simsock build` (flash.bin).")
                     ] = None,
    micropython_bin: Annotated[str | None, typer.Option("--micropython-bin", help="Build once first, with this "
                                                        "MicroPython ESP32 .bin (instead of --image).")] = None,
    config: Annotated[str | None, typer.Option("--config", help="With --micropython-bin: a factory config.json "
                                                                "bundled into the image (broker, …).")] = None,
    chip: Annotated[str, typer.Option("--chip", help="The chip this bench flashes; any other is refused.")
                    ] = "esp32",
    baud: Annotated[int, typer.Option(help="Flash speed after connecting at the ROM's 115200.")] = 921600,
    offset: Annotated[str, typer.Option(help="Flash offset of the image.")] = "0x1000",
    no_stub: Annotated[bool, typer.Option("--no-stub", help="Use the ROM loader only (no stub flasher).")] = False,
    before: Annotated[str, typer.Option(help="default-reset or no-reset.")] = "default-reset",
    after: Annotated[str, typer.Option(help="hard-reset, soft-reset or no-reset (after the flash).")
                     ] = "hard-reset",
    connect_attempts: Annotated[int, typer.Option(min=1, help="Flash connection attempts.")] = 7,
    register_timeout: Annotated[float, typer.Option(min=0.5, help="Seconds to wait for the flashed unit's "
                                                                  "console.")] = 20.0,
    verify_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the first heartbeat.")
                              ] = 60.0,
    api: ApiOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Build once (or take --image), then flash → register → verify → label every unit in parallel with a
    live table; one failing unit never stops the others; Ctrl-C stops cleanly (units in flight FAIL as
    interrupted). Writes the report and labels to --out. Exit code 0 only when every unit PASSed."""
    import json
    import threading
    from pathlib import Path

    from rich.live import Live

    from provisioning.api_client import ApiClient
    from provisioning.bench.run import BenchRun, RunConfig, status_table, watch_ports

    ports = list(port or [])
    if not ports and not watch:
        raise fail("give --port (repeat for several) or --watch --vid …")
    if watch and vid is None:
        raise fail("--watch needs --vid (and optionally --pid) to tell the bench's units from other ports")
    try:
        at = int(offset, 0)
        vid_n = int(vid, 16) if vid is not None else None
        pid_n = int(pid, 16) if pid is not None else None
    except ValueError as exc:
        raise fail(f"not a number: {exc}") from None
    if (image is None) == (micropython_bin is None):
        raise fail("give exactly one of --image (a built flash.bin) or --micropython-bin (build first)")
    expect: int | None = None
    bundle_hash: str | None = None
    if micropython_bin is not None:
        from provisioning.build import BuildError, build

        extra: dict[str, bytes] = {}
        if config is not None:
            from provisioning.virtual import store_file

            try:
                extra["config.json"] = store_file.encode(json.loads(Path(config).read_text()))
            except (OSError, ValueError) as exc:
                raise fail(f"--config {config}: {exc}") from None
        with console.status("building once…"):
            try:
                built = build(Path(out) / "build", micropython_bin=Path(micropython_bin), extra_files=extra)
            except BuildError as exc:
                raise fail(f"build refused: {exc}") from None
        assert built.merged is not None
        img = built.merged
        console.print(f"built {escape(str(img))}  bundle {built.bundle_hash[:16]}", highlight=False)
    else:
        img = Path(str(image))
        if not img.is_file():
            raise fail(f"{image}: no such image (run simsock build --micropython-bin …)")
    with_build = img.parent / "build.json"
    if with_build.is_file():
        try:
            info = json.loads(with_build.read_text())
            if info.get("flash") and info["flash"].get("file") == img.name:
                if info["flash"].get("chip") and info["flash"]["chip"] != chip:
                    raise fail(f"{img} was built for {info['flash']['chip']}, this bench flashes --chip {chip}")
                expect = int(info["fs"]["flash_size"])
            bundle_hash = json.loads((img.parent / "bundle" / "manifest.json").read_text()).get("bundle_hash") \
                if (img.parent / "bundle" / "manifest.json").is_file() else None
        except (ValueError, KeyError, TypeError, AttributeError):
            pass

    cfg = RunConfig(image=img, station=station, operator=operator, out=Path(out), offset=at, chip=chip, baud=baud,
                    stub=not no_stub, connect_mode=before, connect_attempts=connect_attempts, after=after,
                    expect_flash_size=expect, register_timeout=register_timeout, verify_timeout=verify_timeout,
                    bundle_hash=bundle_hash)
    with api_client(api, token) as probe:  # checks the URL and token options once, like the other commands
        url, tok = probe.base_url, probe.token
    stop = threading.Event()
    bench = BenchRun(cfg, api_factory=lambda: ApiClient(url, tok), cancel=stop)
    watcher: threading.Thread | None = None
    with Live(status_table(bench), console=console, refresh_per_second=4, transient=False) as live:
        for p in ports:
            bench.start(p)
        if watch:
            def on_new(dev: str) -> None:
                if dev not in ports and not bench.busy(dev):
                    bench.start(dev)

            watcher = threading.Thread(target=watch_ports, args=(on_new, stop), daemon=True, name="bench watch",
                                       kwargs={"vid": vid_n, "pid": pid_n, "include_present": True})
            watcher.start()
        try:
            while True:
                live.update(status_table(bench))
                if bench.wait(0.25):
                    if not watch:
                        break
                    stop.wait(0.25)  # watching, nothing running: wait for the next port (or Ctrl-C)
        except KeyboardInterrupt:
            stop.set()
            console.print("[yellow]stopping: units in flight are recorded as interrupted[/]")
            bench.wait()
        live.update(status_table(bench))
    stop.set()
    if watcher is not None:
        watcher.join(2)
    rep, paths = bench.finish()
    s = rep["summary"]
    console.print(f"{s['units']} units: [green]{s['passed']} PASS[/], [red]{s['failed']} FAIL[/]; "
                  f"{s['units_per_hour']} units/h over {s['span_s']:.0f}s", highlight=False)
    for o in bench.outcomes:
        if not o.ok:
            console.print(f"[red]FAIL[/] {escape(o.port)} {escape(o.serial or '')} at {o.failed_step}: "
                          f"{escape(o.reason or '')}", highlight=False)
    console.print("wrote " + ", ".join(escape(str(p)) for p in paths), highlight=False)
    if s["failed"] or not s["units"]:
        raise fail(f"{s['failed']} of {s['units']} unit(s) failed")


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
