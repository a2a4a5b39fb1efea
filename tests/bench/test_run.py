"""`bench run`: virtual units in parallel through flash → register → verify → label; one faulty unit fails at
its step while the others PASS; a cancel mid-run leaves nothing in flight recorded as PASS; the CLI writes
labels and the report; the VID/PID watcher."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from provisioning.bench.run import BenchRun, RunConfig, port_matches, status_table, watch_ports
from provisioning.cli import app
from provisioning.virtual.esp32_rom import Faults

runner = CliRunner()


def booted(units) -> Callable[[str], None]:
    """RunConfig.ready for virtual units: the firmware from the flash is up (its first log line)."""
    by_port = {u.port: u for u in units}

    def ready(port: str) -> None:
        u = by_port[port]
        u.wait_booted(15)
        u.wait_log(r"unit: boot fw=", 15)

    return ready


def _cfg(fw_build, out: Path, **kw: object) -> RunConfig:
    assert fw_build.merged is not None
    opts: dict[str, object] = {"stub": False, "after": "soft-reset", "connect_mode": "no-reset",
                               "connect_attempts": 2, "baud": 460800, "register_timeout": 20.0,
                               "verify_timeout": 20.0, **kw}
    return RunConfig(image=fw_build.merged, station="st-run", operator="ann", out=out, **opts)  # type: ignore[arg-type]


def test_three_units_in_parallel_and_one_faulty(bench_stack, fw_build, make_unit, tmp_path: Path) -> None:
    good = [make_unit() for _ in range(3)]
    weak = make_unit(faults=Faults(weak_byte_at=0x1000 + 5000))  # MD5 fails: never a good unit
    s3 = make_unit(chip="esp32s3")
    run = BenchRun(_cfg(fw_build, tmp_path / "out", ready=booted(good)),
                   api_factory=lambda: bench_stack.client("bench"))
    t = time.monotonic()
    for u in (*good, weak, s3):
        run.start(u.port)
    assert run.wait(90), status_table(run)
    took = time.monotonic() - t
    rep, paths = run.finish()
    by_port = {o.port: o for o in run.outcomes}
    for u in good:
        o = by_port[u.port]
        assert o.ok, (o, u.console_tail(20))
        assert o.serial and o.device_id and set(o.steps) == {"flash", "register", "verify", "label"}
        assert (tmp_path / "out" / "labels" / f"{o.serial}.png").is_file()
        rec = bench_stack.cloud.registry  # the cloud's record: every step, verified
        with bench_stack.client("admin") as api:
            unit = api.unit(o.serial)
        assert unit.status == "verified", rec
        assert {s.step for s in unit.steps if s.ok} >= {"flash", "register", "verify", "label"}
        flash = next(s for s in unit.steps if s.step == "flash")
        assert flash.detail and flash.detail["sha256"] == fw_build.info["flash"]["sha256"]
    assert not by_port[weak.port].ok and by_port[weak.port].failed_step == "flash"
    assert "MD5" in (by_port[weak.port].reason or "") and by_port[weak.port].serial is None
    assert not by_port[s3.port].ok and by_port[s3.port].failed_step == "flash"
    assert "ESP32-S3" in (by_port[s3.port].reason or "")
    s = rep["summary"]
    assert (s["units"], s["passed"], s["failed"]) == (5, 3, 2) and s["units_per_hour"] > 0
    assert {p.name for p in paths} == {"report.json", "units.csv", "summary.csv"}
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["summary"]["passed"] == 3 and len(saved["failure_reasons"]) == 2
    assert took < 60
    table = status_table(run)
    assert table.row_count == 5
    # parallel registrations must not leave the process's stdout redirected (console.py's _quiet)
    assert not isinstance(sys.stdout, io.StringIO)


def test_cancel_mid_run_records_nothing_in_flight_as_pass(bench_stack, fw_build, make_unit, tmp_path: Path) -> None:
    units = [make_unit() for _ in range(2)]
    cancel = threading.Event()
    run = BenchRun(_cfg(fw_build, tmp_path / "out", ready=booted(units)),
                   api_factory=lambda: bench_stack.client("bench"), cancel=cancel, verify_slice=0.3)
    for u in units:
        run.start(u.port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(st.step in ("register", "verify") for st in run.states):
        time.sleep(0.02)
    cancel.set()  # what the CLI does on Ctrl-C
    assert run.wait(30)
    assert run.start(units[0].port) is None  # nothing new after a cancel
    rep, _ = run.finish()
    assert rep["summary"]["passed"] == 0 and rep["summary"]["failed"] == 2
    for o in run.outcomes:
        assert not o.ok and "interrupted" in (o.reason or "")
        if o.serial:  # got a serial before the cancel: the cloud does not hold it as verified
            with bench_stack.client("admin") as api:
                assert api.unit(o.serial).status != "verified"
    assert not list((tmp_path / "out").glob("labels/*.png"))


def test_cli_bench_run(bench_stack, fw_build, make_unit, tmp_path: Path) -> None:
    a, b = make_unit(), make_unit(faults=Faults(silent=True))
    out = tmp_path / "cli"
    r = runner.invoke(app, ["bench", "run", "--port", a.port, "--port", b.port, "--image", str(fw_build.merged),
                            "--no-stub", "--before", "no-reset", "--after", "soft-reset", "--baud", "460800",
                            "--connect-attempts", "2", "--verify-timeout", "20", "--station", "st-cli",
                            "--operator", "bob", "--out", str(out), "--api", bench_stack.url,
                            "--token", bench_stack.tokens["bench"]],
                      env={"COLUMNS": "200"}, catch_exceptions=False)
    assert r.exit_code == 1, r.output  # one unit failed
    assert "1 PASS" in r.output and "1 FAIL" in r.output and "no ROM loader answered" in r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["passed"] == 1
    serial = next(u["serial"] for u in rep["units"] if u["ok"])
    assert (out / "labels" / f"{serial}.png").is_file()


def test_port_matcher_and_watcher() -> None:
    usb = SimpleNamespace(device="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60)
    other = SimpleNamespace(device="/dev/ttyUSB1", vid=0x1A86, pid=0x7523)
    uart = SimpleNamespace(device="/dev/ttyS0", vid=None, pid=None)
    assert port_matches(usb, 0x10C4, 0xEA60) and port_matches(usb, 0x10C4, None)
    assert not port_matches(other, 0x10C4, None) and not port_matches(uart, None, None)
    # the jig: USB0 there at the start, USB2 plugged in, USB0 unplugged and a new unit plugged in
    frames = [[usb, uart], [usb, other, SimpleNamespace(device="/dev/ttyUSB2", vid=0x10C4, pid=0xEA60)],
              [SimpleNamespace(device="/dev/ttyUSB2", vid=0x10C4, pid=0xEA60)], [usb]]
    it = iter(frames)
    started: list[str] = []
    cancel = threading.Event()
    left = [len(frames)]

    def comports():
        left[0] -= 1
        return next(it)

    watch_ports(started.append, cancel, vid=0x10C4, pid=0xEA60, poll=0.0, comports=comports,
                until=lambda: left[0] == 0)
    assert started == ["/dev/ttyUSB0", "/dev/ttyUSB2", "/dev/ttyUSB0"]
