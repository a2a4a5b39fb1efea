"""Verify, labels, report (docs/bench.md): a virtual unit registered over its pty reboots and its first
heartbeat passes verify (recorded, status verified); a registered unit that is not running fails verify
within a short timeout, recorded with a clear reason; the label PNG is 50×30 mm at 300 dpi, its QR code
decodes back (OpenCV) and the same inputs give the same bytes; the report's counts, grouped reasons,
units per hour and step durations for a synthetic session."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from provisioning.bench.label import HEIGHT, WIDTH, LabelInfo, qr_matrix, render_label, short_id
from provisioning.bench.register import register_unit
from provisioning.bench.report import UnitOutcome, build_report, load_outcomes, reason_key
from provisioning.bench.verify import verify_unit
from provisioning.cli import app

runner = CliRunner()


def _cli(bench_stack, *args: str):
    env = {"SIMSOCK_API": bench_stack.url, "SIMSOCK_TOKEN": bench_stack.tokens["bench"], "COLUMNS": "200"}
    return runner.invoke(app, ["bench", *args], env=env, catch_exceptions=False)


def _decode_qr(png: bytes) -> str:
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    text, _points, _ = cv2.QRCodeDetector().detectAndDecode(img)
    return text


# --- verify -------------------------------------------------------------------------------------


def test_verify_passes_on_the_first_heartbeat_after_registration_then_label(bench_stack, make_console_unit, tmp_path):
    unit = make_console_unit()
    with bench_stack.client("bench") as api:
        reg = register_unit(unit.port, api, "st-v", "ann", timeout=5)
        res = verify_unit(api, reg.serial, timeout=30, station="st-v", operator="ann")
        assert res.ok, (res.reason, unit.console_tail(20))
        assert res.recorded and res.reason is None
        assert (res.serial, res.device_id) == (reg.serial, reg.device_id)
        assert res.fw == reg.fw == "0.1.0"
        assert res.first_heartbeat is True and res.hb_seq == 1  # the unit's first heartbeat since its reboot
        assert res.to_heartbeat_s is not None and 0 < res.to_heartbeat_s < 30
        u = api.unit(reg.serial)
        assert u.status == "verified" and u.verified_at is not None
        step = u.steps[-1]
        assert (step.step, step.ok, step.station, step.operator) == ("verify", True, "st-v", "ann")
        assert step.detail is not None and step.detail["fw"] == "0.1.0" and step.detail["hb_seq"] == 1
        assert step.detail["to_heartbeat_s"] == res.to_heartbeat_s and "signal_dbm" in step.detail

    # by device id, through the CLI: the same unit passes again (its heartbeat is after its registration)
    r = _cli(bench_stack, "verify", "--serial", reg.device_id, "--timeout", "10")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and reg.serial in r.output and "fw 0.1.0" in r.output

    # its label: the QR code decodes to serial and device id; the label step is recorded
    out = tmp_path / "labels"
    r = _cli(bench_stack, "label", "--serial", reg.serial, "--out", str(out))
    assert r.exit_code == 0, r.output
    png = (out / f"{reg.serial}.png").read_bytes()
    assert _decode_qr(png) == f"SIMSOCK:{reg.serial}:{reg.device_id}"
    with bench_stack.client("read-only") as ro:
        last = ro.unit(reg.serial).steps[-1]
    assert last.step == "label" and last.ok and last.detail is not None and last.detail["fw"] == "0.1.0"
    assert last.detail["sha256"] == hashlib.sha256(png).hexdigest()


def test_verify_fails_recorded_for_a_registered_unit_that_never_connects(bench_stack, make_console_unit, tmp_path):
    unit = make_console_unit()
    with bench_stack.client("bench") as api:
        reg = register_unit(unit.port, api, "st-v", "bob", timeout=5, reboot=False)
        unit.kill9()  # registered, then unplugged: it never boots into the firmware
        t = time.monotonic()
        res = verify_unit(api, reg.serial, timeout=2, station="st-v", operator="bob", poll=0.1)
        assert time.monotonic() - t < 6
        assert not res.ok and res.recorded
        assert res.reason is not None and f"no heartbeat from {reg.device_id} within 2s" in res.reason
        assert "never reached the cloud" in res.reason
        u = api.unit(reg.serial)
        assert u.status == "failed"
        step = u.steps[-1]
        assert (step.step, step.ok, step.operator) == ("verify", False, "bob")
        assert step.detail is not None and step.detail["error"] == res.reason and step.detail["timeout_s"] == 2

        # failed now: verify refuses it until it is registered again (the cloud takes PASS only then)
        again = verify_unit(api, reg.serial, timeout=1)
        assert not again.ok and "failed, not registered" in (again.reason or "")

    r = _cli(bench_stack, "verify", "--serial", reg.serial, "--timeout", "0.5")
    assert r.exit_code == 1 and "verify FAIL" in r.output and "recorded as failed" in r.output
    r = _cli(bench_stack, "label", "--serial", reg.serial, "--out", str(tmp_path / "never-written"))
    assert r.exit_code == 1 and "not verified" in r.output and not (tmp_path / "never-written").exists()


def test_verify_unknown_unit_is_a_clear_failure_with_nothing_recorded(bench_api):
    res = verify_unit(bench_api, "SK269999994", timeout=1)
    assert not res.ok and not res.recorded and "cannot look up SK269999994" in (res.reason or "")
    res = verify_unit(bench_api, "sd-zzzzzzzz", timeout=1)
    assert not res.ok and not res.recorded and "unknown device" in (res.reason or "")


# --- label --------------------------------------------------------------------------------------

INFO = LabelInfo(serial="SK260000429", device_id="sd-4kq7m2xa", uid="0a1b2c3d4e5f", imei="356938035643809",
                 iccid="89490200001234567890", fw="0.1.0")


def test_label_is_50x30mm_at_300dpi_its_qr_decodes_and_it_is_deterministic():
    png = render_label(INFO)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (WIDTH, HEIGHT) == (591, 354)
    assert tuple(round(d) for d in img.info["dpi"]) == (300, 300)
    assert _decode_qr(png) == "SIMSOCK:SK260000429:sd-4kq7m2xa"
    assert render_label(LabelInfo(**vars(INFO))) == png  # same inputs, same bytes
    assert render_label(LabelInfo(**{**vars(INFO), "fw": "0.1.1"})) != png
    unbound = LabelInfo(serial="SK260000437")
    assert unbound.qr_text == "SIMSOCK:SK260000437:"
    assert _decode_qr(render_label(unbound)) == "SIMSOCK:SK260000437:"


def test_label_qr_modules_are_drawn_as_the_qrcode_library_made_them():
    # independent of any decoder: every module of the QR matrix is the colour of its box's centre
    png = render_label(INFO)
    img = Image.open(io.BytesIO(png)).convert("L")
    matrix = qr_matrix(INFO.qr_text)
    n = len(matrix)
    box = (HEIGHT - 12) // n
    x0 = 6 + ((HEIGHT - 12) - box * n) // 2
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            px = img.getpixel((x0 + c * box + box // 2, x0 + r * box + box // 2))
            assert (px == 0) == dark, (r, c)


def test_short_ids():
    assert short_id("356938035643809") == "…643809"
    assert short_id("abc") == "abc" and short_id(None) == "-" and short_id("") == "-"


# --- report -------------------------------------------------------------------------------------


def _session() -> list[UnitOutcome]:
    t0 = 1_780_000_000.0
    out = []
    for i in range(8):  # 8 pass, two ports in parallel, 5 min each
        out.append(UnitOutcome(port=f"/dev/ttyUSB{i % 2}", ok=True, started=t0 + (i // 2) * 300,
                               finished=t0 + (i // 2) * 300 + 290, serial=f"SK26{i + 1:06d}0", device_id=None,
                               steps={"flash": 200.0, "register": 10.0, "verify": 80.0}))
    out.append(UnitOutcome(port="/dev/ttyUSB0", ok=False, started=t0 + 1200, finished=t0 + 1260,
                           serial="SK260000100", device_id="sd-aaaaaaaa", failed_step="verify",
                           reason="no heartbeat from sd-aaaaaaaa within 60s: the unit never reached the cloud",
                           steps={"flash": 200.0, "register": 10.0, "verify": 60.0}))
    out.append(UnitOutcome(port="/dev/ttyUSB1", ok=False, started=t0 + 1200, finished=t0 + 1290,
                           serial="SK260000118", device_id="sd-bbbbbbbb", failed_step="verify",
                           reason="no heartbeat from sd-bbbbbbbb within 60s: the unit never reached the cloud",
                           steps={"flash": 200.0, "register": 12.0, "verify": 60.0}))
    out.append(UnitOutcome(port="/dev/ttyUSB1", ok=False, started=t0 + 1290, finished=t0 + 1800,
                           failed_step="register", reason="/dev/ttyUSB1: unit did not answer within 5s",
                           steps={"flash": 180.0}))
    return out


def test_report_counts_reasons_units_per_hour_and_steps(tmp_path):
    rep = build_report(_session())
    s = rep["summary"]
    assert (s["units"], s["passed"], s["failed"]) == (11, 8, 3)
    assert s["span_s"] == 1800 and s["units_per_hour"] == 16.0 and s["attempted_per_hour"] == 22.0
    assert [(g["reason"], g["count"]) for g in rep["failure_reasons"]] == [
        ("verify: no heartbeat from <device> within Ns: the unit never reached the cloud", 2),
        ("register: unit did not answer within Ns", 1)]
    assert rep["failure_reasons"][0]["units"] == ["SK260000100", "SK260000118"]
    assert rep["failure_reasons"][1]["units"] == ["/dev/ttyUSB1"]  # no serial yet: the port
    fl = rep["steps"]["flash"]
    assert fl["count"] == 11 and fl["total_s"] == 2180 and fl["max_s"] == 200 and fl["median_s"] == 200
    reg = rep["steps"]["register"]
    assert reg["count"] == 10 and reg["total_s"] == 102 and reg["p95_s"] == 12
    total = 2180 + 102 + 8 * 80 + 120
    assert rep["steps"]["verify"]["share"] == round(760 / total, 4)

    r = runner.invoke(app, ["bench", "report", "--in", str(_write(tmp_path / "results.json")), "--out",
                            str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "11 units: 8 passed, 3 failed; 16.0 units/h" in r.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["summary"] == s and data["failure_reasons"] == rep["failure_reasons"]
    rows = list(csv.DictReader((tmp_path / "out" / "units.csv").open()))
    assert len(rows) == 11 and [r["result"] for r in rows].count("PASS") == 8
    assert rows[-1]["failed_step"] == "register" and rows[-1]["register_s"] == "" and rows[0]["flash_s"] == "200.0"
    summary = list(csv.reader((tmp_path / "out" / "summary.csv").open()))
    assert ["summary", "units_per_hour", "16.0"] in summary
    assert ["failure", "register: unit did not answer within Ns", "1"] in summary
    # an earlier report.json is valid input too
    assert [o.serial for o in load_outcomes(tmp_path / "out" / "report.json")] == [o.serial for o in _session()]


def _write(path: Path) -> Path:
    path.write_text(json.dumps([o.to_dict() for o in _session()]))
    return path


def test_report_edge_cases(tmp_path):
    empty = build_report([])
    assert empty["summary"]["units"] == 0 and empty["summary"]["units_per_hour"] == 0.0
    assert reason_key("register", "/dev/pts/7: unit SK260000429: the identity read back differs") == \
        "register: the identity read back differs"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"port": "/dev/x"}]')
    r = runner.invoke(app, ["bench", "report", "--in", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "without finished, ok, started" in r.output
