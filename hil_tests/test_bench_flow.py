"""The factory bench flow on a unit: flash the image (esptool, MD5 verified), register (serial, identity written
and read back), verify (first heartbeat reaches the cloud), then the whole `bench run` flow.

Against a real unit: `pytest hil_tests --port /dev/ttyUSB0 --image .build/out/flash.bin` with SIMSOCK_API and
SIMSOCK_TOKEN (role bench) set; the unit must be able to reach the cloud's broker (its image's config.json).
Against virtual units: `pytest hil_tests --virtual` (what CI runs). Without either option: skipped.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from provisioning.api_client import ApiClient
from provisioning.bench.flash import flash_unit
from provisioning.bench.register import register_unit
from provisioning.bench.run import BenchRun, RunConfig
from provisioning.bench.verify import verify_unit

STATION, OPERATOR = "hil", "hil_tests"


@pytest.fixture(scope="module")
def flow(bench_target: Any) -> dict[str, Any]:
    """State handed from one step's test to the next (the steps run in file order)."""
    return {"port": bench_target.new_port()}


def test_flash(bench_target: Any, flow: dict[str, Any]) -> None:
    res = flash_unit(flow["port"], bench_target.image, chip="esp32",
                     expect_flash_size=bench_target.expect_flash_size, **bench_target.flash_opts)
    assert res.ok and res.chip_name == "ESP32" and res.mac
    assert any("Hash of data verified" in ln for ln in res.log)
    flow["flash"] = res


def test_register(bench_target: Any, flow: dict[str, Any]) -> None:
    if "flash" not in flow:
        pytest.skip("the flash step failed")
    bench_target.ready(flow["port"])
    with ApiClient(bench_target.api_url, bench_target.token) as api:
        reg = register_unit(flow["port"], api, STATION, OPERATOR, timeout=20)
        api.unit_result(reg.serial, "flash", True, detail=flow["flash"].detail(), station=STATION,
                        operator=OPERATOR)
    assert reg.outcome in ("registered", "already registered") and reg.serial.startswith("SK")
    assert reg.rebooted and reg.uid and reg.imei and reg.iccid
    flow["reg"] = reg


def test_verify(bench_target: Any, flow: dict[str, Any]) -> None:
    if "reg" not in flow:
        pytest.skip("the register step failed")
    with ApiClient(bench_target.api_url, bench_target.token) as api:
        res = verify_unit(api, flow["reg"].serial, timeout=60, station=STATION, operator=OPERATOR)
        assert res.ok, res.reason
        assert res.recorded and res.first_heartbeat
        assert api.unit(flow["reg"].serial).status == "verified"


def test_bench_run_whole_flow(bench_target: Any, tmp_path: Path) -> None:
    """`bench run` on one unit (a fresh blank one when virtual; the same unit again when real): PASS, a label,
    the report."""
    port = bench_target.new_port()
    cfg = RunConfig(image=bench_target.image, station=STATION, operator=OPERATOR, out=tmp_path,
                    expect_flash_size=bench_target.expect_flash_size, ready=bench_target.ready,
                    **bench_target.flash_opts)
    run = BenchRun(cfg, lambda: ApiClient(bench_target.api_url, bench_target.token), cancel=threading.Event())
    run.start(port)
    assert run.wait(180)
    rep, _ = run.finish()
    (o,) = run.outcomes
    assert o.ok, (o.failed_step, o.reason)
    assert rep["summary"]["passed"] == 1 and (tmp_path / "labels" / f"{o.serial}.png").is_file()
