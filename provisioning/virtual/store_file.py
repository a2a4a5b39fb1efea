"""Host side of the firmware's persistent-file format (firmware/app/store.py).

A stored file is two lines: compact JSON, then the CRC-32 of that JSON's bytes as
8 lowercase hex digits. The CRC is how the firmware tells a torn write from a good
one; host tools write identity and config files in the same format.
"""

from __future__ import annotations

import binascii
import json
import os
from pathlib import Path
from typing import Any


class StoreFileError(ValueError):
    """The file is missing its checksum line or the checksum does not match."""


def encode(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return body + b"\n" + b"%08x" % binascii.crc32(body) + b"\n"


def decode(data: bytes) -> Any:
    lines = data.split(b"\n")
    if len(lines) < 2 or len(lines[1]) != 8:
        raise StoreFileError("no checksum line")
    body, crc = lines[0], lines[1]
    if b"%08x" % binascii.crc32(body) != crc:
        raise StoreFileError("checksum mismatch")
    return json.loads(body)


def read(path: str | Path) -> Any:
    return decode(Path(path).read_bytes())


def write(path: str | Path, obj: Any) -> None:
    """Atomic replace, like the firmware does it: temp file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "wb") as f:
        f.write(encode(obj))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
