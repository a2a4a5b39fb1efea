"""`simsock build`: compile the firmware once into a bundle, a littlefs image and (optionally) one flash image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from provisioning.cli import app


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / (1024 * 1024):.2f} MiB"


@app.command("build")
def build_cmd(
    out: Annotated[Path | None, typer.Option(help="output folder (default .build/out)")] = None,
    target: Annotated[
        str, typer.Option(help="esp32 (-march=xtensawin) or unix (bytecode, the virtual unit)")
    ] = "esp32",
    micropython_bin: Annotated[
        Path | None,
        typer.Option(help="MicroPython ESP32 release .bin (written at 0x1000); makes flash.bin, one write per unit"),
    ] = None,
    micropython_version: Annotated[
        str | None, typer.Option(help="MicroPython the units run, e.g. 1.29; refuses a different mpy-cross")
    ] = None,
    flash_size: Annotated[str, typer.Option(help="the modules' flash size: sets the filesystem's size")] = "4MB",
    partition_size: Annotated[
        str | None, typer.Option(help="filesystem partition size (default: end of app partition to end of flash)")
    ] = None,
    partition_offset: Annotated[str | None, typer.Option(help="filesystem partition offset (default 0x200000)")] = None,
    min_free: Annotated[str, typer.Option(help="free space the image must leave for the unit's own files")] = "64K",
    src: Annotated[Path | None, typer.Option(help="firmware source folder (default: firmware/)", hidden=True)] = None,
) -> None:
    """Compile firmware/ with mpy-cross, write the manifest, make the littlefs image and the merged flash image."""
    from provisioning.build import FIRMWARE, BuildError, build
    from provisioning.build.esp32img import parse_size

    console = Console()
    try:
        result = build(
            out,
            src=src or FIRMWARE,
            target=target,
            micropython_bin=micropython_bin,
            micropython_version=micropython_version,
            flash_size=parse_size(flash_size),
            partition_size=parse_size(partition_size) if partition_size else None,
            partition_offset=parse_size(partition_offset) if partition_offset else None,
            min_free=parse_size(min_free),
        )
    except BuildError as exc:
        Console(stderr=True).print(f"[bold red]build refused:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None

    man, info = result.manifest, result.info
    files = Table(title=f"firmware {man['firmware_version']} · target {man['target']}", show_footer=True)
    files.add_column("file", footer=f"{len(man['files'])} files")
    files.add_column("size", justify="right", footer=_size(sum(e["size"] for e in man["files"])))
    files.add_column("sha256", style="dim")
    for e in man["files"]:
        files.add_row(e["path"], str(e["size"]), e["sha256"][:16])
    console.print(files)

    fs = info["fs"]
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    mpy = man["mpy"]
    summary.add_row("bundle hash", man["bundle_hash"])
    summary.add_row("mpy", f"v{mpy['version']}.{mpy['sub_version']} march={mpy['march'] or 'bytecode'}")
    summary.add_row(
        "MicroPython", str(info["micropython"] or f"(not stated; mpy-cross is {man['build']['micropython']})")
    )
    summary.add_row(
        "filesystem",
        f"{result.fs_image}  littlefs2 at {fs['offset']:#x}, {_size(fs['size'])} "
        f"({fs['lfs']['block_count']} × {fs['lfs']['block_size']}), used {_size(fs['used_bytes'])}",
    )
    if result.merged is not None:
        flash = info["flash"]
        summary.add_row(
            "flash image",
            f"{result.merged}  write at {flash['offset']:#x}, {_size(flash['size'])}, sha256 {flash['sha256'][:16]}",
        )
    else:
        summary.add_row("flash image", "(none: give --micropython-bin for a one-pass image)")
    summary.add_row("bundle", str(result.bundle_dir))
    console.print(summary)
