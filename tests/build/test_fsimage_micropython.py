"""The littlefs trap, tested against MicroPython itself (the unix port's vfs.VfsLfs2, the same
extmod/vfs_lfs.c and lib/littlefs as the esp32 port): our image mounts with VfsLfs2's defaults
and every file reads back with its sha256; an image MicroPython wrote reads back with our
strict parameters; and images made with littlefs-python's own defaults, for another
partition size, or with a larger name_max do not mount — so the check above means something."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from littlefs import LittleFS

from provisioning.build import BuildResult, bundle_files, fsimage

from .conftest import MP_SCRIPTS, run_mp

DUMP = MP_SCRIPTS / "lfs_dump.py"
WRITE = MP_SCRIPTS / "lfs_write.py"


def mp_dump(exe: str, image: Path, offset: int | None = None, size: int | None = None) -> dict[str, dict]:
    args = [str(image)] + ([hex(offset)] if offset is not None else []) + ([hex(size)] if size is not None else [])
    r = run_mp(exe, DUMP, *args)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("OK"), (
        f"MicroPython could not mount it:\n{r.stdout}{r.stderr}"
    )
    rows = [json.loads(line) for line in r.stdout.splitlines()[:-1]]
    return {row["path"]: row for row in rows}


def test_micropython_mounts_our_image_and_reads_every_file(mp_exe: str, esp32_build: BuildResult) -> None:
    got = mp_dump(mp_exe, esp32_build.fs_image)
    want = bundle_files(esp32_build.bundle_dir)
    assert set(got) == set(want)
    for path, data in want.items():
        assert got[path]["size"] == len(data), path
        assert got[path]["sha256"] == hashlib.sha256(data).hexdigest(), path
    for e in esp32_build.manifest["files"]:  # and the manifest agrees with what the unit reads
        assert got[e["path"]]["sha256"] == e["sha256"]


def test_micropython_mounts_it_inside_the_merged_flash_image(
    mp_exe: str, esp32_build: BuildResult, tmp_path: Path
) -> None:
    """As written on a unit: the merged image at 0x1000 of a 4 MiB flash, partition at 0x200000."""
    flash = bytearray(b"\xff" * 0x400000)
    merged = esp32_build.merged.read_bytes()  # type: ignore[union-attr]
    flash[0x1000 : 0x1000 + len(merged)] = merged
    (tmp_path / "flash.img").write_bytes(flash)
    got = mp_dump(mp_exe, tmp_path / "flash.img", 0x200000, 0x200000)
    assert set(got) == set(bundle_files(esp32_build.bundle_dir))


def test_many_files_and_long_names_round_trip(mp_exe: str, tmp_path: Path) -> None:
    """Inline (< cache) and CTZ (multi-block) files, nested dirs, a 255-byte name."""
    files = {
        f"d{i % 3}/sub{i % 2}/file{i:03d}.bin": bytes((i * 31 + j) & 0xFF for j in range(i * 211)) for i in range(40)
    }
    files["x" * 255] = b"longest name MicroPython allows"
    files["big.bin"] = bytes(range(256)) * 200  # 51 KB, spans blocks
    image = tmp_path / "fs.img"
    image.write_bytes(fsimage.make_image(files, 0x100000))
    got = mp_dump(mp_exe, image)
    assert {p: r["sha256"] for p, r in got.items()} == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def test_an_image_micropython_wrote_reads_back_with_our_parameters(mp_exe: str, tmp_path: Path) -> None:
    image = tmp_path / "mp.img"
    image.write_bytes(b"\xff" * 0x200000)
    r = run_mp(mp_exe, WRITE, str(image))
    assert r.returncode == 0, r.stdout + r.stderr
    want = {row["path"]: row["sha256"] for row in map(json.loads, r.stdout.splitlines())}
    assert len(want) == 13 and "n" * 255 in want
    got = fsimage.read_image(image.read_bytes())  # strict: MicroPython's parameters, no auto-format
    assert {p: hashlib.sha256(d).hexdigest() for p, d in got.files.items()} == want
    assert got.block_count == 512


def _littlefs_python_image(path: Path, **cfg: int) -> Path:
    fs = LittleFS(**cfg)
    with fs.open("main.py", "wb") as f:
        f.write(b"print('hello')\n")
    path.write_bytes(bytes(fs.context.buffer))
    return path


@pytest.mark.parametrize(
    ("case", "cfg"),
    [
        # littlefs-python's defaults: 128-byte blocks (the classic trap)
        ("littlefs-python defaults", {"block_count": 0x200000 // 128}),
        # right block size, wrong partition size (e.g. built for 1 MiB, unit has 2 MiB: wrong --flash-size)
        ("block count", {"block_size": 4096, "block_count": 256}),
        # a name_max MicroPython's littlefs was not compiled for
        ("name_max 512", {"block_size": 4096, "block_count": 512, "name_max": 512}),
    ],
)
def test_images_with_other_parameters_do_not_mount(mp_exe: str, tmp_path: Path, case: str, cfg: dict[str, int]) -> None:
    image = _littlefs_python_image(tmp_path / "bad.img", **cfg)
    r = run_mp(mp_exe, DUMP, str(image), "0", hex(0x200000))
    assert r.returncode == 3 and "MOUNT FAILED" in r.stdout, f"{case}: {r.stdout}{r.stderr}"


def test_strict_reader_refuses_instead_of_formatting(tmp_path: Path) -> None:
    """littlefs-python's LittleFS(mount=True) formats what it cannot mount; read_image never does."""
    image = bytes(_littlefs_python_image(tmp_path / "bad.img", block_count=0x100000 // 128).read_bytes())
    with pytest.raises(Exception, match="does not mount"):
        fsimage.read_image(image)
