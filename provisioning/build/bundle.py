"""`simsock build`: firmware bundle + manifest, littlefs image, merged flash image.

Outputs in `out` (default .build/out), no timestamps and no host paths in any of them,
so the same inputs give the same bytes:

    bundle/            the compiled firmware as it sits on the unit, plus manifest.json
    fs.img             the littlefs2 image of the unit's `vfs` partition (exactly its size)
    flash.bin          with --micropython-bin: MicroPython .bin + 0xFF + fs.img, one write
    build.json         what was built and where it goes (offsets, sizes, sha256, lfs parameters)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.build import esp32img, fsimage, manifest
from provisioning.build.compile import (
    BUILD_ROOT,
    FIRMWARE,
    MPY_FOR_MICROPYTHON,
    TARGET_MARCH,
    check_micropython_version,
    compile_tree,
    mpy_cross_info,
    parse_micropython_version,
    source_hash,
)
from provisioning.build.errors import BuildError

DEFAULT_OUT = BUILD_ROOT / "out"
DEFAULT_MIN_FREE = 64 * 1024
BUILD_INFO = "build.json"
FS_IMAGE = "fs.img"
MERGED = "flash.bin"
BUNDLE = "bundle"


@dataclass(frozen=True)
class BuildResult:
    out: Path
    info: dict[str, Any]  # the content of build.json
    manifest: dict[str, Any]

    @property
    def bundle_dir(self) -> Path:
        return self.out / BUNDLE

    @property
    def fs_image(self) -> Path:
        return self.out / FS_IMAGE

    @property
    def merged(self) -> Path | None:
        return self.out / MERGED if self.info["flash"] else None

    @property
    def bundle_hash(self) -> str:
        return str(self.manifest["bundle_hash"])

    @property
    def fs_offset(self) -> int:
        return int(self.info["fs"]["offset"])

    @property
    def fs_size(self) -> int:
        return int(self.info["fs"]["size"])


def bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    """Every file of a bundle folder (manifest.json included), by posix path: what goes into the image."""
    out = {}
    for p in sorted(bundle_dir.rglob("*")):
        rel = p.relative_to(bundle_dir).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = p.read_bytes()
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(
    out: Path | None = None,
    *,
    src: Path = FIRMWARE,
    target: str = "esp32",
    micropython_bin: Path | None = None,
    micropython_version: str | None = None,
    flash_size: int = esp32img.DEFAULT_FLASH_SIZE,
    partition_size: int | None = None,
    partition_offset: int | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    min_free: int = DEFAULT_MIN_FREE,
) -> BuildResult:
    """Build once; see the module docstring. Raises BuildError with a message for the user."""
    out = Path(out or DEFAULT_OUT)
    if target not in TARGET_MARCH:
        raise BuildError(f"unknown target {target!r}: choose from {', '.join(TARGET_MARCH)}")
    march = TARGET_MARCH[target]
    tool = mpy_cross_info()

    mpbin = esp32img.load_micropython_bin(micropython_bin) if micropython_bin is not None else None
    wanted = micropython_version
    if mpbin is not None and mpbin.version:
        if wanted and parse_micropython_version(wanted)[:2] != parse_micropython_version(mpbin.version)[:2]:
            raise BuildError(
                f"--micropython-version {wanted} but {mpbin.path.name} is MicroPython {mpbin.version}: "
                "which one does the unit run?"
            )
        wanted = wanted or mpbin.version
    if wanted:
        check_micropython_version(tool, wanted)

    part = esp32img.fs_partition(flash_size, partition_size, partition_offset, mpbin, fsimage.BLOCK_SIZE)
    if mpbin is not None and mpbin.end > part.offset:
        raise BuildError(
            f"{mpbin.path.name} ({len(mpbin.data)} bytes at {mpbin.offset:#x}, ends at {mpbin.end:#x}) "
            f"would overlap the filesystem partition at {part.offset:#x}"
        )

    out.mkdir(parents=True, exist_ok=True)
    work = out / f".work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        bundle_dir = work / BUNDLE
        compile_tree(bundle_dir, src, march, tool.exe)
        version = manifest.firmware_version(src)
        man = manifest.make_manifest(
            bundle_dir,
            version=version,
            target=target,
            mpy={"version": tool.mpy[0], "sub_version": tool.mpy[1], "march": march},
            build={
                "micropython": tool.micropython_str,
                "mpy_cross": tool.banner,
                "mpy_cross_args": ["-s", "<path relative to firmware/>"] + ([f"-march={march}"] if march else []),
                "source_hash": source_hash(src),
                "entry": "main.py (source; every other module .mpy)",
            },
        )
        (bundle_dir / manifest.MANIFEST).write_bytes(manifest.dumps(man))

        files = bundle_files(bundle_dir)
        for path, data in sorted((extra_files or {}).items()):
            key = path.lstrip("/")
            if key in files:
                raise BuildError(f"per-unit file {path!r} would replace a firmware file")
            files[key] = bytes(data)
        image = fsimage.make_image(files, part.size, fsimage.MICROPYTHON_LFS2, min_free=min_free)
        used = fsimage.read_image(image).used_bytes  # proves it mounts with the unit's parameters
        (work / FS_IMAGE).write_bytes(image)

        flash: dict[str, Any] | None = None
        if mpbin is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # esptool logs its progress to stdout
                merged = esp32img.merge(mpbin, image, part)
            (work / MERGED).write_bytes(merged)
            flash = {
                "file": MERGED,
                "offset": mpbin.offset,
                "size": len(merged),
                "sha256": _sha(merged),
                "chip": "esp32",
            }

        info: dict[str, Any] = {
            "target": target,
            "firmware_version": version,
            "bundle_hash": man["bundle_hash"],
            "manifest_sha256": _sha(manifest.dumps(man)),
            "micropython": wanted or None,
            "fs": {
                "file": FS_IMAGE,
                "offset": part.offset,
                "size": part.size,
                "flash_size": part.flash_size,
                "layout": part.source,
                "sha256": _sha(image),
                "files": len(files),
                "files_bytes": sum(len(b) for b in files.values()),
                "used_bytes": used,
                "lfs": {**fsimage.MICROPYTHON_LFS2.as_dict(), "block_count": part.size // fsimage.BLOCK_SIZE},
            },
            "flash": flash,
            "micropython_bin": None
            if mpbin is None
            else {
                "name": mpbin.path.name,
                "size": len(mpbin.data),
                "sha256": mpbin.sha256,
                "offset": mpbin.offset,
                "version": mpbin.version,
                "partitions": [
                    {"label": p.label, "type": p.type, "subtype": p.subtype, "offset": p.offset, "size": p.size}
                    for p in mpbin.partitions
                ],
            },
        }
        (work / BUILD_INFO).write_text(json.dumps(info, sort_keys=True, indent=1) + "\n")

        # Replace the previous outputs: a stale flash.bin from an earlier build never survives.
        for name in (BUNDLE, FS_IMAGE, MERGED, BUILD_INFO):
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        for name in (BUNDLE, FS_IMAGE, MERGED, BUILD_INFO):
            if (work / name).exists():
                (work / name).rename(out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(out=out, info=info, manifest=man)


def load(out: Path) -> BuildResult:
    """A finished build from its folder (build.json + bundle/manifest.json)."""
    try:
        info = json.loads((out / BUILD_INFO).read_text())
        man = json.loads((out / BUNDLE / manifest.MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{out} holds no finished build ({exc})") from exc
    return BuildResult(out=out, info=info, manifest=man)


__all__ = ["DEFAULT_OUT", "MPY_FOR_MICROPYTHON", "BuildResult", "build", "bundle_files", "load"]
