"""Serial numbers and device ids: formats, check digit, parsing. Pure functions, no I/O.

A serial number is the label on one physical unit (docs/bench.md):

    SK 26 000042 7      ->  "SK260000427"
    |  |  |      `- check digit: Damm algorithm over the eight digits before it
    |  |  `-------- sequence within the year, 000001..999999, allocated by the cloud
    |  `----------- the last two digits of the year the number was allocated in
    `-------------- product prefix (fixed: a changed letter fails the format check)

Why Damm (and not Luhn mod N or ISO/IEC 7064 MOD 37,36, the usual candidates): the
check has to catch every single-character error and every transposition of two
adjacent characters, the two mistakes people make copying a label.
- Luhn (mod 10 or mod 36) misses one transposition pair (09<->90, 0Z<->Z0).
- ISO 7064 MOD 37,36 (hybrid) catches every single error but only *nearly* every adjacent
  transposition: measured here on random serials, about 3 in 1,000 pass (e.g.
  SK26132047V <-> SK26123047V); its pure sibling MOD 37-2 catches them all but needs a
  37th symbol, '*', as check character on one label in 37.
- Damm's quasigroup of order 10 catches all single-digit errors and all adjacent
  transpositions (the check digit included), with a plain digit and a 10x10 table. The
  letters around the digits are fixed, so a change there (or a letter typed for a
  digit) fails the format instead. tests/bench/test_serials.py checks both properties
  exhaustively for a sample of serials.

Device ids (the customer's slot, the MQTT username and topic root) are "sd-" followed by
8 characters of lowercase Crockford base32 (40 random bits): short enough for a topic
the units pay for, lowercase and free of i/l/o/u so they survive being read aloud.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

PREFIX = "SK"
SEQ_DIGITS = 6
SEQ_MAX = 10**SEQ_DIGITS - 1

SERIAL_RE = re.compile(r"^SK(\d{2})(\d{6})(\d)$")

# Damm's totally anti-symmetric quasigroup of order 10 (H. M. Damm, 2004).
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

DEVICE_ID_PREFIX = "sd-"
DEVICE_ID_LEN = 8
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
DEVICE_ID_RE = re.compile(r"^sd-[0-9abcdefghjkmnpqrstvwxyz]{8}$")


class SerialError(ValueError):
    """A serial number that is malformed or whose check digit does not match."""


def _damm(digits: str) -> int:
    interim = 0
    for ch in digits:
        if not ("0" <= ch <= "9"):
            raise SerialError(f"{ch!r} is not a digit")
        interim = _DAMM[interim][ord(ch) - 48]
    return interim


def check_digit(digits: str) -> str:
    """The Damm check digit to append to `digits`."""
    return str(_damm(digits))


def check_ok(serial: str) -> bool:
    """True if `serial` has the serial format and its last digit checks (Damm over the eight digits before it)."""
    m = SERIAL_RE.match(serial)
    return m is not None and _damm(serial[2:]) == 0


@dataclass(frozen=True)
class Serial:
    year: int  # two digits, 0..99
    seq: int  # 1..999999

    def __str__(self) -> str:
        return format_serial(self.year, self.seq)


def format_serial(year: int, seq: int) -> str:
    """'SK' + YY + 6-digit sequence + check digit. `year` may be 2026 or 26."""
    yy = year % 100
    if not 1 <= seq <= SEQ_MAX:
        raise SerialError(f"sequence {seq} out of range 1..{SEQ_MAX}")
    digits = f"{yy:02d}{seq:0{SEQ_DIGITS}d}"
    return PREFIX + digits + check_digit(digits)


def parse_serial(text: str) -> Serial:
    """A serial from its label text (surrounding spaces and lowercase accepted); SerialError otherwise."""
    code = text.strip().upper()
    m = SERIAL_RE.match(code)
    if m is None:
        raise SerialError(f"{text!r} is not a serial number (SK + 2-digit year + 6-digit sequence + check digit, "
                          f"e.g. {format_serial(26, 1)})")
    if not check_ok(code):
        raise SerialError(f"{text!r}: check digit does not match (a misread or mistyped serial)")
    seq = int(m.group(2))
    if seq == 0:
        raise SerialError(f"{text!r}: sequence 000000 is never issued")
    return Serial(int(m.group(1)), seq)


def is_serial(text: str) -> bool:
    try:
        parse_serial(text)
    except SerialError:
        return False
    return True


def new_device_id() -> str:
    """A fresh random device id: 'sd-' + 8 lowercase Crockford base32 characters (40 bits)."""
    return DEVICE_ID_PREFIX + "".join(secrets.choice(CROCKFORD) for _ in range(DEVICE_ID_LEN))


def is_device_id(text: str) -> bool:
    return DEVICE_ID_RE.match(text) is not None


# --- hardware ids --------------------------------------------------------------------------

_UID_RE = re.compile(r"^[0-9a-f]{8,32}$")


def luhn_ok(number: str) -> bool:
    """The Luhn check of an IMEI or ICCID (its last digit)."""
    if not number.isdigit() or len(number) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def check_uid(uid: str) -> str:
    """MCU unique id / MAC as lowercase hex, 8..32 digits (separators ':' and '-' removed)."""
    u = uid.strip().lower().replace(":", "").replace("-", "")
    if not _UID_RE.match(u):
        raise SerialError(f"unique id {uid!r}: expected 8 to 32 hex digits")
    return u


def check_imei(imei: str) -> str:
    s = imei.strip()
    if len(s) != 15 or not s.isdigit():
        raise SerialError(f"IMEI {imei!r}: expected 15 digits")
    if not luhn_ok(s):
        raise SerialError(f"IMEI {imei!r}: Luhn check digit does not match")
    return s


def check_iccid(iccid: str) -> str:
    """ICCID: 19 or 20 digits starting 89 with a Luhn check digit (a trailing F filler is dropped)."""
    s = iccid.strip().upper().rstrip("F")
    if not (18 <= len(s) <= 20) or not s.isdigit() or not s.startswith("89"):
        raise SerialError(f"ICCID {iccid!r}: expected 18 to 20 digits starting with 89")
    if not luhn_ok(s):
        raise SerialError(f"ICCID {iccid!r}: Luhn check digit does not match")
    return s


__all__ = [
    "PREFIX", "SEQ_MAX", "Serial", "SerialError", "check_digit", "check_iccid", "check_imei",
    "check_ok", "check_uid", "format_serial", "is_device_id", "is_serial", "luhn_ok", "new_device_id",
    "parse_serial",
]
