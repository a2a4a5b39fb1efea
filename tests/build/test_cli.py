"""`simsock build` on the command line: a summary on success, one clear line and exit 1 on refusal."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from provisioning.cli import app

runner = CliRunner()


def test_build_prints_a_summary(tmp_path: Path, fake_bin: Path) -> None:
    out = tmp_path / "out"
    r = runner.invoke(app, ["build", "--out", str(out), "--micropython-bin", str(fake_bin)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for text in ("app/unit.mpy", "bundle hash", "v6.3 march=xtensawin", "littlefs2 at 0x200000", "write at 0x1000"):
        assert text in r.output, text
    assert (out / "flash.bin").is_file() and (out / "fs.img").is_file() and (out / "build.json").is_file()


def test_build_refusal_is_one_clear_message(tmp_path: Path) -> None:
    r = runner.invoke(app, ["build", "--out", str(tmp_path), "--micropython-bin", str(tmp_path / "missing.bin")])
    assert r.exit_code == 1
    assert "build refused" in r.output and "no such file" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["build", "--out", str(tmp_path), "--partition-size", "nonsense"])
    assert r.exit_code != 0
