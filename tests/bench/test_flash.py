"""Flashing over a serial port, end to end and under faults: `flash_unit` (esptool's Python API, ROM
mode) writes the merged image of one build into a blank virtual unit, esptool's MD5 check passes, the
unit boots the firmware from the very bytes written (littlefs inside its flash file), and registration
over the same port works and the unit reaches the cloud. Faults: wrong chip, image too large, a flash of
another size than the build's, a weak flash byte (MD5 fails), the port disappearing mid-flash, a unit
that never answers, a missing port, the stub on a ROM without one — every one a failure, never success."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import esptool
import pytest
from typer.testing import CliRunner

from provisioning.bench.flash import FlashError, FlashProgress, flash_unit
from provisioning.bench.register import register_unit
from provisioning.cli import app
from provisioning.virtual.esp32_rom import Faults, FlashTiming
from provisioning.virtual.flashable_unit import FlashableUnit

runner = CliRunner()
MiB = 1024 * 1024


def _flash(unit: FlashableUnit, image: Path, **kw: object):
    opts: dict[str, object] = {"stub": False, "after": "soft-reset", "connect_attempts": 2, **kw}
    return flash_unit(unit.port, image, **opts)  # type: ignore[arg-type]


def test_flash_verify_boot_from_the_written_bytes_register_and_connect(bench_stack, fw_build, make_unit) -> None:
    unit = make_unit()
    assert fw_build.merged is not None
    image = fw_build.merged.read_bytes()
    seen: list[FlashProgress] = []
    res = _flash(unit, fw_build.merged, progress=seen.append)
    assert res.ok and res.step == "done" and res.chip_name == "ESP32" and res.flash_size == 4 * MiB
    assert res.chip == "ESP32-D0WD-V3 (revision v3.0)" and res.mac and not res.stub
    assert any("Hash of data verified" in ln for ln in res.log)
    d = res.detail()
    assert json.loads(json.dumps(d)) == d and d["ok"] and d["sha256"] == fw_build.info["flash"]["sha256"]
    phases = [p.phase for p in seen]
    assert phases[0] == "connect" and phases[-1] == "done" and "verify" in phases
    assert phases.index("write") < phases.index("verify") < phases.index("reset")
    writes = [p.done for p in seen if p.phase == "write" and p.total]
    assert writes and writes == sorted(writes)  # compressed bytes on the wire, monotonic
    # the unit boots from those bytes (the firmware is not on its path: MICROPYPATH is unset)
    unit.wait_booted(10)
    assert unit.boot_reasons == ["run_user_code"]
    unit.wait_log(r"unit: boot fw=\S+ board=unix device_id=-", 15)
    unit.wait_log(r"unit: unprovisioned: waiting for registration", 15)
    # the flash file holds the image at 0x1000 (the app part byte for byte; the littlefs partition is
    # the unit's own from now on), nothing below it, and the bundle's files in the partition
    flash = unit.flash_path.read_bytes()
    fs_at = fw_build.fs_offset
    assert set(flash[:0x1000]) == {0xFF} and flash[0x1000:fs_at] == image[: fs_at - 0x1000]
    files = unit.fs_files()
    assert files["app/unit.mpy"] == (fw_build.bundle_dir / "app" / "unit.mpy").read_bytes()

    # registration over the same port: raw REPL of the firmware that came from the flash
    with bench_stack.client("bench") as api:
        reg = register_unit(unit.port, api, "st-flash", "ann", timeout=5)
    assert reg.outcome == "registered" and reg.bundle_hash == fw_build.bundle_hash
    ident = unit.identity_on_unit()  # read from the littlefs partition inside flash.bin
    assert ident is not None and ident["serial"] == reg.serial and ident["device_id"] == reg.device_id
    unit.wait_reboots(1, 10)
    unit.wait_log(rf"unit: boot fw=\S+ board=unix device_id={reg.device_id}", 15, since=unit.last_offset)
    unit.wait_log(r"unit: connected", 20, since=unit.last_offset)
    assert bench_stack.cloud.wait_heartbeats(reg.device_id, 1, 20), unit.console_tail(20)


def test_cli_flash_two_ports_in_parallel(fw_build, make_unit) -> None:
    a, b = make_unit(), make_unit()
    assert fw_build.merged is not None
    r = runner.invoke(app, ["bench", "flash", "--port", a.port, "--port", b.port, "--image", str(fw_build.merged),
                            "--no-stub", "--after", "soft-reset", "--baud", "460800"],
                      env={"COLUMNS": "200"}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.count("MD5 verified") == 2 and a.port in r.output and b.port in r.output
    for u in (a, b):
        u.wait_booted(10)
        u.wait_log(r"unprovisioned: waiting for registration", 15)


def test_parallel_flashes_keep_their_own_esptool_output(fw_build, make_unit) -> None:
    units = [make_unit() for _ in range(3)]
    results: dict[str, object] = {}

    def one(u: FlashableUnit) -> None:
        results[u.port] = _flash(u, fw_build.fs_image, offset=0x200000, after="no-reset")

    threads = [threading.Thread(target=one, args=(u,)) for u in units]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for u in units:
        res = results[u.port]
        assert getattr(res, "ok", False), res
        log = getattr(res, "log", [])
        assert sum("Hash of data verified" in ln for ln in log) == 1 and sum("Detecting chip" in ln for ln in log) == 1


def test_cli_refuses_before_touching_the_port(fw_build, tmp_path: Path) -> None:
    r = runner.invoke(app, ["bench", "flash", "--port", "/dev/null", "--image", str(tmp_path / "none.bin")])
    assert r.exit_code == 1 and "no such image" in r.output
    assert fw_build.merged is not None
    r = runner.invoke(app, ["bench", "flash", "--port", "/dev/null", "--image", str(fw_build.merged),
                            "--chip", "esp32s3"], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "built for esp32" in r.output


# --- refusals and faults ---------------------------------------------------------------------


def test_wrong_chip_is_refused_and_nothing_written(fw_build, make_unit) -> None:
    unit = make_unit(chip="esp32s3")
    with pytest.raises(FlashError) as e:
        _flash(unit, fw_build.merged)
    assert e.value.step == "chip" and not e.value.result.ok
    assert "ESP32-S3" in str(e.value) and "--chip esp32" in str(e.value)
    assert unit.rom is not None and unit.rom.commands["FLASH_DEFL_BEGIN"] == 0
    assert not unit.booted.is_set()


def test_image_too_large_is_refused_before_writing(fw_build, make_unit) -> None:
    unit = make_unit(flash_size=2 * MiB)
    with pytest.raises(FlashError, match=r"image too large.*past the 2 MB flash") as e:
        _flash(unit, fw_build.merged)
    assert e.value.step == "size" and e.value.result.flash_size == 2 * MiB
    assert unit.rom is not None and unit.rom.commands["FLASH_DEFL_BEGIN"] == 0
    assert set(unit.rom.read_flash()) == {0xFF}


def test_module_with_another_flash_size_than_the_build_is_refused(fw_build, make_unit) -> None:
    unit = make_unit(flash_size=8 * MiB)  # the 4 MB build's filesystem would not mount there
    with pytest.raises(FlashError, match="8 MB of flash, the image was built for 4 MB") as e:
        _flash(unit, fw_build.merged, expect_flash_size=4 * MiB)
    assert e.value.step == "size" and unit.rom is not None and unit.rom.commands["FLASH_DEFL_BEGIN"] == 0


def test_corrupt_flash_byte_fails_verify_and_the_unit_is_not_booted(fw_build, make_unit) -> None:
    unit = make_unit(faults=Faults(weak_byte_at=0x1000 + 5000))
    with pytest.raises(FlashError, match="MD5") as e:
        _flash(unit, fw_build.merged)
    assert e.value.step == "verify" and not e.value.result.ok
    assert unit.rom is not None and unit.rom.left_loader == []  # no soft reset after a failed verify
    assert not unit.booted.is_set()


def test_port_disappearing_mid_flash_is_a_failure(fw_build, make_unit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(esptool.cmds, "DEFAULT_CONNECT_ATTEMPTS", 1)  # esptool reopens once a second
    unit = make_unit(faults=Faults(drop_after_bytes=20_000))
    t = time.monotonic()
    with pytest.raises(FlashError) as e:
        _flash(unit, fw_build.merged)
    assert e.value.step == "write" and not e.value.result.ok and "port went away" in str(e.value)
    assert time.monotonic() - t < 15
    assert not unit.booted.is_set()


def test_unit_that_never_answers(fw_build, make_unit) -> None:
    unit = make_unit(faults=Faults(silent=True))
    t = time.monotonic()
    with pytest.raises(FlashError, match=r"no ROM loader answered.*download mode") as e:
        _flash(unit, fw_build.merged)
    assert e.value.step == "connect" and e.value.result.chip is None
    assert time.monotonic() - t < 10


def test_missing_port(fw_build) -> None:
    with pytest.raises(FlashError, match="cannot open the port") as e:
        flash_unit("/dev/does-not-exist-simsock", fw_build.merged, stub=False, connect_attempts=1)
    assert e.value.step == "connect"


def test_stub_on_a_rom_without_one_fails_clearly(fw_build, make_unit) -> None:
    unit = make_unit()
    with pytest.raises(FlashError, match=r"stub flasher did not start.*--no-stub") as e:
        _flash(unit, fw_build.merged, stub=True)
    assert e.value.step == "stub" and unit.rom is not None and unit.rom.commands["FLASH_DEFL_BEGIN"] == 0


def test_bad_inputs_fail_before_the_port(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path, kw, msg in ((tmp_path / "missing.bin", {}, "cannot read image"), (empty, {}, "is empty"),
                          (empty, {"chip": "esp99"}, "unknown chip")):
        with pytest.raises(FlashError, match=msg) as e:
            flash_unit("/dev/null", path, **kw)  # type: ignore[arg-type]
        assert e.value.step == "image"
    img = tmp_path / "x.bin"
    img.write_bytes(b"\x00" * 16)
    with pytest.raises(FlashError, match="not a multiple of the 4 KB"):
        flash_unit("/dev/null", img, offset=0x1001)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SIMSOCK_SLOW_TESTS"), reason="~25 s: set SIMSOCK_SLOW_TESTS=1")
def test_flash_over_a_paced_921600_baud_link_with_flash_timing(fw_build, make_unit) -> None:
    """Realistic: the line paced to 921600 baud, W25Q32 erase/program times. Figures printed (-s)."""
    unit = make_unit(baud="host", timing=FlashTiming())
    res = _flash(unit, fw_build.merged, baud=921600)
    assert res.ok
    print(f"\nflash.bin {res.size} B at 921600 baud with W25Q32 timing: {res.seconds:.1f} s "
          f"(write {res.write_seconds:.1f} s)")
    unit.wait_booted(10)
    unit.wait_log(r"unprovisioned: waiting for registration", 15)


def test_brownout_mid_flash_fails_at_write(fw_build, make_unit) -> None:
    unit = make_unit(faults=Faults(brownout_after_bytes=20_000))  # back in the ROM, write session lost
    with pytest.raises(FlashError) as e:
        _flash(unit, fw_build.merged)
    assert e.value.step == "write" and not e.value.result.ok and not unit.booted.is_set()


def test_unit_that_answers_garbage(fw_build, make_unit) -> None:
    unit = make_unit(faults=Faults(garbage=True))  # wrong baud rate, a chatty app
    with pytest.raises(FlashError, match="no ROM loader answered") as e:
        _flash(unit, fw_build.merged)
    assert e.value.step == "connect"


def test_power_cycle_into_download_mode_and_reflash(fw_build, make_unit) -> None:
    unit = make_unit()
    assert _flash(unit, fw_build.merged).ok
    unit.wait_booted(10)
    unit.wait_log(r"unprovisioned: waiting for registration", 15)
    unit.power_cycle(download=True)  # the jig: IO0 low, power on
    assert unit.rom is not None and unit.rom.state == "download" and not unit.is_running
    since = unit.mark()
    assert _flash(unit, fw_build.merged).ok
    unit.wait_booted(10)
    unit.wait_log(r"unprovisioned: waiting for registration", 15, since=since)
    assert unit.boot_reasons == ["run_user_code", "run_user_code"]


def test_interrupted_flash_is_a_failure(fw_build, make_unit) -> None:
    unit = make_unit()
    stop = threading.Event()

    def progress(p: FlashProgress) -> None:
        if p.phase == "write" and p.done > 4096:
            stop.set()  # what the CLI does on Ctrl-C

    with pytest.raises(FlashError, match="interrupted at write") as e:
        _flash(unit, fw_build.merged, progress=progress, cancel=stop)
    assert e.value.step == "write" and not e.value.result.ok
    assert unit.rom is not None and unit.rom.left_loader == [] and not unit.booted.is_set()
    assert _flash(unit, fw_build.merged).ok  # the next attempt (same port, same ROM session) works
