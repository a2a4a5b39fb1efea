"""`simsock build` outputs: manifest, reproducibility, flash layout, and every refusal."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from provisioning.build import FIRMWARE, BuildError, BuildResult, build, bundle_files, esp32img, fsimage, load, manifest
from provisioning.build import compile as bcompile
from provisioning.build.esp32img import Partition, fake_micropython_bin

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- manifest ---------------------------------------------------------------------------------------


def test_manifest_lists_every_file_with_size_and_sha256(esp32_build: BuildResult) -> None:
    man = esp32_build.manifest
    on_disk = bundle_files(esp32_build.bundle_dir)
    listed = {e["path"]: e for e in man["files"]}
    assert set(on_disk) - set(listed) == {"manifest.json"}
    for path, e in listed.items():
        assert e["size"] == len(on_disk[path]) and e["sha256"] == sha(on_disk[path]), path
    # every module compiled, main.py kept as source, nothing else
    expected = {p.relative_to(FIRMWARE).with_suffix(".mpy").as_posix() for p in bcompile.sources()} - {"main.mpy"}
    assert set(listed) == expected | {"main.py"}
    assert [e["path"] for e in man["files"]] == sorted(listed)
    for path in listed:
        if path.endswith(".mpy"):
            assert on_disk[path][:3] == b"M\x06\x00", path  # .mpy v6, no native code, sub-version in header bits
    assert manifest.verify_files(man, on_disk) == []


def test_manifest_fields(esp32_build: BuildResult) -> None:
    man = esp32_build.manifest
    assert man["format"] == "simsock-bundle/1"
    assert man["firmware_version"] == manifest.firmware_version(FIRMWARE)
    assert man["target"] == "esp32"
    assert man["mpy"] == {"version": 6, "sub_version": 3, "march": "xtensawin"}
    assert man["build"]["micropython"].startswith("1.29")
    assert man["build"]["source_hash"] == bcompile.source_hash()
    assert man["signature"] is None  # step 4 signs; nothing pretends to now
    assert man["bundle_hash"] == sha(manifest.canonical(man["files"]))
    assert "signature" not in json.loads(manifest.signed_bytes(man))
    # the manifest on disk is the one returned, and it names no host path
    text = (esp32_build.bundle_dir / "manifest.json").read_text()
    assert json.loads(text) == man
    assert str(FIRMWARE.parent) not in text and "/tmp" not in text


def test_tampered_file_is_reported(esp32_build: BuildResult) -> None:
    files = bundle_files(esp32_build.bundle_dir)
    files["app/unit.mpy"] = files["app/unit.mpy"][:-1] + b"\0"
    del files["version.mpy"]
    problems = manifest.verify_files(esp32_build.manifest, files)
    assert problems == ["app/unit.mpy: size or sha256 differs", "version.mpy: missing"]


def test_unix_target_is_bytecode_and_the_same_bytes(tmp_path: Path, esp32_build: BuildResult) -> None:
    """No module has native code, so esp32 and unix .mpy files are identical: same bundle hash."""
    r = build(tmp_path / "unix", target="unix")
    assert r.manifest["mpy"]["march"] is None
    assert r.bundle_hash == esp32_build.bundle_hash
    assert r.merged is None and not (tmp_path / "unix" / "flash.bin").exists()


def test_firmware_version_must_be_a_literal_tuple(tmp_path: Path) -> None:
    src = tmp_path / "fw"
    shutil.copytree(FIRMWARE, src)
    (src / "version.py").write_text("VERSION = (1, 2)\n")
    with pytest.raises(BuildError, match="VERSION must be"):
        build(tmp_path / "out", src=src)


# --- reproducible -----------------------------------------------------------------------------------


def test_same_inputs_same_bytes(tmp_path: Path, fake_bin: Path, esp32_build: BuildResult) -> None:
    """Another build, elsewhere, later: every output byte-identical."""
    again = build(tmp_path / "elsewhere" / "out", micropython_bin=fake_bin)
    for name in ("fs.img", "flash.bin", "build.json", "bundle/manifest.json"):
        assert sha((again.out / name).read_bytes()) == sha((esp32_build.out / name).read_bytes()), name
    assert bundle_files(again.bundle_dir) == bundle_files(esp32_build.bundle_dir)
    assert again.info == esp32_build.info
    assert load(again.out).info == again.info


def test_rebuild_in_place_drops_a_stale_flash_image(tmp_path: Path, fake_bin: Path) -> None:
    out = tmp_path / "out"
    assert build(out, micropython_bin=fake_bin).merged is not None
    r = build(out)
    assert r.merged is None and not (out / "flash.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "bundle", "fs.img"]


# --- littlefs image and flash layout ----------------------------------------------------------------


def test_image_is_the_vfs_partition_of_a_4mib_module(esp32_build: BuildResult) -> None:
    info = esp32_build.info
    assert info["fs"]["offset"] == 0x200000 and info["fs"]["size"] == 0x200000
    lfs = info["fs"]["lfs"]
    assert lfs == {
        "block_size": 4096,
        "block_count": 512,
        "read_size": 32,
        "prog_size": 32,
        "cache_size": 128,
        "lookahead_size": 32,
        "block_cycles": 100,
        "name_max": 255,
        "file_max": 0,
        "attr_max": 0,
        "disk_version": 0,
    }
    image = esp32_build.fs_image.read_bytes()
    assert len(image) == 0x200000
    got = fsimage.read_image(image)
    assert got.files == bundle_files(esp32_build.bundle_dir)
    assert info["fs"]["used_bytes"] == got.used_bytes < 0x200000 - 64 * 1024


def test_merged_image_layout(esp32_build: BuildResult, fake_bin: Path) -> None:
    merged = esp32_build.merged
    assert merged is not None
    data, mp = merged.read_bytes(), fake_bin.read_bytes()
    flash = esp32_build.info["flash"]
    assert flash["offset"] == 0x1000 and flash["chip"] == "esp32"
    assert len(data) == 0x400000 - 0x1000 == flash["size"]  # from 0x1000 to the end of a 4 MiB flash
    assert data[: len(mp)] == mp  # flash parameters kept as they are in the .bin
    assert set(data[len(mp) : 0x200000 - 0x1000]) == {0xFF}
    assert data[0x200000 - 0x1000 :] == esp32_build.fs_image.read_bytes()
    assert esp32_build.info["micropython_bin"]["sha256"] == sha(mp)
    assert esp32_build.info["micropython"] == "v1.29.0"  # read from the app's esp_app_desc_t


def test_fake_bin_is_a_valid_esp32_image_for_esptool() -> None:
    import io

    from esptool.targets import CHIP_DEFS

    data = fake_micropython_bin()
    esp = CHIP_DEFS["esp32"]
    esp.BOOTLOADER_IMAGE(io.BytesIO(data)).verify()
    esp.BOOTLOADER_IMAGE(io.BytesIO(data[0xF000:])).verify()


def test_layout_follows_the_flash_size(tmp_path: Path, fake_bin: Path) -> None:
    """MicroPython >= 1.26 makes `vfs` from the end of the app partition to the end of flash."""
    r = build(tmp_path / "o", micropython_bin=fake_bin, flash_size=8 * MiB)
    assert (r.fs_offset, r.fs_size) == (0x200000, 6 * MiB)
    assert r.info["fs"]["lfs"]["block_count"] == 1536
    assert len(r.merged.read_bytes()) == 8 * MiB - 0x1000  # type: ignore[union-attr]


def test_a_vfs_entry_in_the_bins_table_wins(tmp_path: Path) -> None:
    """Older releases (< 1.26) and custom builds name the partition in their table."""
    table = [
        Partition("nvs", 1, 2, 0x9000, 0x6000),
        Partition("phy_init", 1, 1, 0xF000, 0x1000),
        Partition("factory", 0, 0, 0x10000, 0x180000),
        Partition("vfs", 1, 0x81, 0x190000, 0x100000),
    ]
    path = tmp_path / "custom.bin"
    path.write_bytes(fake_micropython_bin(table=table))
    r = build(tmp_path / "o", micropython_bin=path)
    assert (r.fs_offset, r.fs_size) == (0x190000, 0x100000)
    with pytest.raises(BuildError, match="differs from the vfs partition"):
        build(tmp_path / "o", micropython_bin=path, partition_size=0x80000)


def test_partition_size_and_offset_options(tmp_path: Path) -> None:
    r = build(tmp_path / "o", partition_size=0x100000)
    assert (r.fs_offset, r.fs_size) == (0x200000, 0x100000)
    assert len(r.fs_image.read_bytes()) == 0x100000
    assert esp32img.parse_size("2048K") == esp32img.parse_size("0x200000") == esp32img.parse_size("2MB") == 0x200000


# --- refusals ---------------------------------------------------------------------------------------


def test_refuses_firmware_too_large_for_the_partition(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="more than the 65536-byte"):
        build(tmp_path / "o", partition_size=64 * 1024)
    # fits by size, but not once littlefs lays it out (metadata, block granularity)
    files = {f"f{i}.bin": b"x" * 5000 for i in range(7)}  # 35 KB in 10 blocks of 4 KiB: 7 files take 14
    with pytest.raises(BuildError, match="do not fit"):
        fsimage.make_image(files, 10 * 4096)
    with pytest.raises(BuildError, match=r"leaves .* free"):
        fsimage.make_image({"a": b"x" * 4096 * 20}, 32 * 4096, min_free=10 * 4096)


def test_refuses_missing_or_unreadable_bin(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no such file"):
        build(tmp_path / "o", micropython_bin=tmp_path / "nope.bin")
    with pytest.raises(BuildError, match="is a directory"):
        build(tmp_path / "o", micropython_bin=tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x7fELF" + b"\0" * 4096)
    with pytest.raises(BuildError, match="not an ESP32 firmware image"):
        build(tmp_path / "o", micropython_bin=junk)
    app_only = tmp_path / "app.bin"
    app_only.write_bytes(fake_micropython_bin()[0xF000:])  # the app alone, as for 0x10000
    with pytest.raises(BuildError, match="no partition table"):
        build(tmp_path / "o", micropython_bin=app_only)
    torn = bytearray(fake_micropython_bin())
    torn[0x7000 + 20] ^= 0xFF  # a bit flip in the partition table
    (tmp_path / "torn.bin").write_bytes(torn)
    with pytest.raises(BuildError, match="MD5"):
        build(tmp_path / "o", micropython_bin=tmp_path / "torn.bin")
    assert not (tmp_path / "o" / "flash.bin").exists()


def test_refuses_a_bin_that_overlaps_the_filesystem(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(fake_micropython_bin(app_size=0x200000))  # ends past 0x200000
    with pytest.raises(BuildError, match="overlap the filesystem partition"):
        build(tmp_path / "o", micropython_bin=big)
    with pytest.raises(BuildError, match="overlaps partition 'factory'"):
        build(tmp_path / "o", micropython_bin=esp32img_fake(tmp_path), partition_offset=0x100000)


def esp32img_fake(tmp_path: Path) -> Path:
    p = tmp_path / "ok.bin"
    p.write_bytes(fake_micropython_bin())
    return p


def test_refuses_layouts_that_cannot_be(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="past the 4 MiB flash"):
        build(tmp_path / "o", partition_size=0x300000)
    with pytest.raises(BuildError, match="not aligned"):
        build(tmp_path / "o", partition_size=0x100100)
    with pytest.raises(BuildError, match="unknown target"):
        build(tmp_path / "o", target="rp2")


def test_refuses_an_mpy_cross_of_another_micropython(tmp_path: Path, fake_bin: Path) -> None:
    with pytest.raises(BuildError, match=r"mpy-cross is MicroPython 1\.29.*target runs MicroPython 1\.22.*v6\.2"):
        build(tmp_path / "o", micropython_version="1.22")
    with pytest.raises(BuildError, match="not a MicroPython version"):
        build(tmp_path / "o", micropython_version="latest")
    old = tmp_path / "old.bin"
    old.write_bytes(fake_micropython_bin(version="v1.22.2"))
    with pytest.raises(BuildError, match=r"target runs MicroPython v1\.22\.2"):
        build(tmp_path / "o", micropython_bin=old)
    with pytest.raises(BuildError, match="which one does the unit run"):
        build(tmp_path / "o", micropython_bin=fake_bin, micropython_version="1.28")
    assert build(tmp_path / "o", micropython_version="1.29").info["micropython"] == "1.29"


def test_mpy_cross_banner_parsing() -> None:
    mp, mpy = bcompile.parse_mpy_cross_banner("MicroPython v1.29.0 on 2026-08-29; mpy-cross emitting mpy v6.3")
    assert mp == (1, 29, 0) and mpy == (6, 3)
    assert bcompile.MPY_FOR_MICROPYTHON[(1, 29)] == mpy
    with pytest.raises(BuildError):
        bcompile.parse_mpy_cross_banner("mpy-cross: command not found")


def test_compile_firmware_cache_is_reused(tmp_path: Path) -> None:
    first = bcompile.compile_firmware(tmp_path / "c")
    mtime = (first / "app" / "unit.mpy").stat().st_mtime_ns
    assert bcompile.compile_firmware(tmp_path / "c") == first
    assert (first / "app" / "unit.mpy").stat().st_mtime_ns == mtime
    assert (first / "main.py").read_bytes() == (FIRMWARE / "main.py").read_bytes()
