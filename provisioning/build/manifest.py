"""The firmware bundle's manifest: what is in it, and one hash that names it.

``manifest.json`` (written canonically: sorted keys, no timestamps, no host paths)::

    {
      "format": "simsock-bundle/1",
      "firmware_version": "0.1.0",
      "target": "esp32",
      "mpy": {"version": 6, "sub_version": 3, "march": "xtensawin"},
      "files": [{"path": "app/commands.mpy", "sha256": "…", "size": 1234}, …],   # sorted by path
      "bundle_hash": "…",
      "build": {"micropython": "1.29.0", "mpy_cross": "MicroPython v1.29.0 …", "source_hash": "…", …},
      "signature": null
    }

``bundle_hash`` = sha256 of the canonical JSON of ``files`` (the list above, compact
separators, sorted keys). It names exactly the bytes a unit runs: the same files give
the same hash whatever the target label says (bytecode-only .mpy files are identical
for esp32 and unix). ``signature`` is the place for step 4 (OTA): a signature over
:func:`signed_bytes` (the canonical manifest without ``signature``); nothing signs yet,
and nothing may treat an unsigned bundle as authenticated.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from provisioning.build.errors import BuildError

FORMAT = "simsock-bundle/1"
MANIFEST = "manifest.json"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def file_entries(root: Path) -> list[dict[str, Any]]:
    """path/size/sha256 of every file under `root` except the manifest itself, sorted by path."""
    out: list[dict[str, Any]] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == MANIFEST or rel.startswith(".") or "/." in rel:
            continue
        data = p.read_bytes()
        out.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    out.sort(key=lambda e: e["path"])
    return out


def bundle_hash(files: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical(sorted(files, key=lambda e: e["path"]))).hexdigest()


def firmware_version(src: Path) -> str:
    """VERSION = (major, minor, patch) from firmware/version.py, read without running it."""
    path = src / "version.py"
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError) as exc:
        raise BuildError(f"cannot read the firmware version from {path}: {exc}") from exc
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "VERSION" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            if isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in value):
                return ".".join(map(str, value))
            break
    raise BuildError(f"{path}: VERSION must be a literal (major, minor, patch) tuple of uint8")


def make_manifest(
    root: Path,
    *,
    version: str,
    target: str,
    mpy: dict[str, Any],
    build: dict[str, Any],
) -> dict[str, Any]:
    files = file_entries(root)
    return {
        "format": FORMAT,
        "firmware_version": version,
        "target": target,
        "mpy": mpy,
        "files": files,
        "bundle_hash": bundle_hash(files),
        "build": build,
        "signature": None,
    }


def dumps(manifest: dict[str, Any]) -> bytes:
    """The bytes of manifest.json: canonical apart from indentation, so it diffs well."""
    return json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True).encode() + b"\n"


def signed_bytes(manifest: dict[str, Any]) -> bytes:
    """What step 4's signature covers: the canonical manifest without its `signature`."""
    return canonical({k: v for k, v in manifest.items() if k != "signature"})


def verify_files(manifest: dict[str, Any], files: dict[str, bytes]) -> list[str]:
    """Problems found checking `files` (path -> bytes) against `manifest`; [] when they match."""
    problems = []
    listed = {e["path"]: e for e in manifest["files"]}
    for path, e in listed.items():
        data = files.get(path)
        if data is None:
            problems.append(f"{path}: missing")
        elif len(data) != e["size"] or hashlib.sha256(data).hexdigest() != e["sha256"]:
            problems.append(f"{path}: size or sha256 differs")
    if bundle_hash(manifest["files"]) != manifest["bundle_hash"]:
        problems.append("bundle_hash does not match the file list")
    return problems
