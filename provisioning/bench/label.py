"""A unit's label as PNG: 50 × 30 mm at 300 dpi (591 × 354 px), QR code left, text right.

    info = label_info(api, "SK260000429")          # serial, device id, hardware ids, firmware version
    png = render_label(info)                       # bytes; the same info gives the same bytes
    path = write_label(info, Path("labels"))       # labels/SK260000429.png

The QR code holds `SIMSOCK:<serial>:<device_id>` (device id empty when the unit is bound to
none), error correction M, 2-module quiet zone, as large as the label's height allows. The
text: the serial (large), the device id, the hardware ids in short form (uid, IMEI and
ICCID by their last 6 digits: enough to tell units on one bench apart, the full ids are in
the cloud's record) and the firmware version (what the unit reported in its verify
heartbeat, else its last heartbeat; `?` when it never sent one).

Deterministic: 1-bit image, Pillow's built-in font, no metadata but the dpi — no time, no
path. (The bytes depend on the Pillow and qrcode versions, not on the machine.)
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import qrcode  # type: ignore[import-untyped]
from PIL import Image, ImageDraw, ImageFont
from qrcode.constants import ERROR_CORRECT_M  # type: ignore[import-untyped]

from provisioning.api_client import ApiClient

DPI = 300
WIDTH_MM, HEIGHT_MM = 50, 30
WIDTH = round(WIDTH_MM / 25.4 * DPI)  # 591
HEIGHT = round(HEIGHT_MM / 25.4 * DPI)  # 354
QR_BORDER = 2  # modules of quiet zone (the label's white margin adds to it)
MARGIN = 6


@dataclass(frozen=True)
class LabelInfo:
    serial: str
    device_id: str | None = None
    uid: str | None = None
    imei: str | None = None
    iccid: str | None = None
    fw: str | None = None

    @property
    def qr_text(self) -> str:
        return f"SIMSOCK:{self.serial}:{self.device_id or ''}"


def short_id(value: str | None, keep: int = 6) -> str:
    """The last `keep` characters of a hardware id, `…`-prefixed when cut; `-` for none."""
    if not value:
        return "-"
    return value if len(value) <= keep else "…" + value[-keep:]


def qr_matrix(text: str) -> list[list[bool]]:
    """The QR code's modules (quiet zone included), True = dark."""
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=QR_BORDER, box_size=1)
    qr.add_data(text)
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, size: int) -> tuple[ImageFont.FreeTypeFont |
                                                                             ImageFont.ImageFont, int]:
    """The largest font size <= `size` whose text fits `width` pixels."""
    while size > 10:
        font = _font(size)
        if draw.textlength(text, font=font) <= width:
            return font, size
        size -= 1
    return _font(size), size


def render_label(info: LabelInfo) -> bytes:
    """The label as PNG bytes (1-bit, WIDTH × HEIGHT, 300 dpi)."""
    img = Image.new("1", (WIDTH, HEIGHT), 1)
    draw = ImageDraw.Draw(img)
    matrix = qr_matrix(info.qr_text)
    n = len(matrix)
    box = (HEIGHT - 2 * MARGIN) // n
    x0 = y0 = MARGIN + ((HEIGHT - 2 * MARGIN) - box * n) // 2
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                draw.rectangle((x0 + c * box, y0 + r * box, x0 + (c + 1) * box - 1, y0 + (r + 1) * box - 1), fill=0)

    tx = x0 + box * n + MARGIN
    tw = WIDTH - tx - MARGIN
    y = MARGIN + 4
    font, size = _fit(draw, info.serial, tw, 44)
    draw.text((tx, y), info.serial, font=font, fill=0)
    y += size + 14
    lines = [
        info.device_id or "no device",
        f"uid {short_id(info.uid)}",
        f"IMEI {short_id(info.imei)}",
        f"ICCID {short_id(info.iccid)}",
        f"fw {info.fw or '?'}",
    ]
    for line in lines:
        font, size = _fit(draw, line, tw, 26)
        draw.text((tx, y), line, font=font, fill=0)
        y += size + 10

    buf = io.BytesIO()
    img.save(buf, format="PNG", dpi=(DPI, DPI), optimize=False)
    return buf.getvalue()


def label_info(api: ApiClient, serial: str, *, fw: str | None = None) -> LabelInfo:
    """What goes on the label of unit `serial`, from the cloud: its record, its device's heartbeat."""
    unit = api.unit(serial)
    if fw is None:
        verified = [s for s in unit.steps if s.step == "verify" and s.ok and s.detail and s.detail.get("fw")]
        if verified:
            fw = str(verified[-1].detail["fw"])  # type: ignore[index]
        elif unit.device_id:
            hb = api.device_status(unit.device_id).heartbeat
            fw = hb.fw if hb is not None else None
    return LabelInfo(serial=unit.serial, device_id=unit.device_id, uid=unit.uid, imei=unit.imei, iccid=unit.iccid,
                     fw=fw)


def label_path(out_dir: Path, serial: str) -> Path:
    return out_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", serial) + ".png")


def write_label(info: LabelInfo, out_dir: Path) -> tuple[Path, str]:
    """Write the label to `out_dir/<serial>.png` (atomically: temp file, rename); (path, sha256 of the PNG)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = render_label(info)
    path = label_path(out_dir, info.serial)
    tmp = path.with_suffix(".png.new")
    tmp.write_bytes(png)
    tmp.replace(path)
    return path, hashlib.sha256(png).hexdigest()


__all__ = ["HEIGHT", "WIDTH", "LabelInfo", "label_info", "label_path", "qr_matrix", "render_label", "short_id",
           "write_label"]
