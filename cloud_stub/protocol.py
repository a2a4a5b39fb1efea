"""The cloud's side of the v1 wire protocol (docs/protocol.md): topics, heartbeat, JSON payloads.

The firmware encodes heartbeats and acks; this module decodes them, and encodes what the
cloud sends (desired state, commands). `encode_heartbeat` exists for host-side fakes and
tests only. Every decoder raises `ProtocolError` on a payload it does not understand; the
cloud logs and drops such messages, it never crashes on them.
"""

from __future__ import annotations

import json
import secrets
import struct
from dataclasses import asdict, dataclass
from typing import Any, Literal

TOPIC_ROOT = "simsock/v1"
LEAVES = ("hb", "status", "alert", "desired", "cmd", "ack")
UNIT_TO_CLOUD = ("hb", "status", "ack", "alert")

MODES: tuple[str, ...] = ("active", "suspended", "sleep", "deep_sleep", "delinked")
MODE_CODES: dict[str, int] = {name: code for code, name in enumerate(MODES)}
STATUSES = ("online", "offline", "dormant")
COMMAND_OPS = ("relay", "status", "reboot")
RELAY_ARGS = ("on", "off", "toggle")

HEARTBEAT_FORMAT = 1
HEARTBEAT_STRUCT = struct.Struct(">BIBBBIBIBhbI")
HEARTBEAT_SIZE = HEARTBEAT_STRUCT.size  # 25
TEMP_UNKNOWN = -32768
SIGNAL_UNKNOWN = -128
FLAG_RELAY = 0x01
FLAG_MAINS = 0x02
FLAG_CLOCK = 0x04

MAX_JSON = 512  # the unit's limit for JSON it parses; the cloud keeps its own payloads below it


class ProtocolError(ValueError):
    """A payload or topic that the v1 protocol does not define."""


# --- topics -------------------------------------------------------------------------------


def valid_device_id(device_id: str) -> bool:
    return (
        bool(device_id)
        and len(device_id) <= 64
        and not any(c in device_id for c in "/+#\x00")
        and device_id.isprintable()
        and device_id.strip() == device_id
    )


def check_device_id(device_id: str) -> str:
    if not valid_device_id(device_id):
        raise ProtocolError(f"invalid device id {device_id!r} (1-64 printable characters, no '/', '+', '#')")
    return device_id


def topic(device_id: str, leaf: str) -> str:
    """`simsock/v1/<device_id>/<leaf>`."""
    if leaf not in LEAVES:
        raise ProtocolError(f"unknown topic leaf {leaf!r}")
    return f"{TOPIC_ROOT}/{check_device_id(device_id)}/{leaf}"


def subscription(leaf: str) -> str:
    """The wildcard filter for one leaf across all units: `simsock/v1/+/<leaf>`."""
    if leaf not in LEAVES:
        raise ProtocolError(f"unknown topic leaf {leaf!r}")
    return f"{TOPIC_ROOT}/+/{leaf}"


def parse_topic(name: str) -> tuple[str, str]:
    """`simsock/v1/<device_id>/<leaf>` -> (device_id, leaf); ProtocolError for anything else."""
    parts = name.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] not in LEAVES:
        raise ProtocolError(f"not a simsock v1 topic: {name!r}")
    return check_device_id(parts[2]), parts[3]


# --- modes --------------------------------------------------------------------------------


def mode_code(name: str) -> int:
    try:
        return MODE_CODES[name]
    except KeyError:
        raise ProtocolError(f"unknown mode {name!r} (one of {', '.join(MODES)})") from None


def mode_name(code: int) -> str:
    if 0 <= code < len(MODES):
        return MODES[code]
    raise ProtocolError(f"unknown mode code {code}")


# --- heartbeat ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    seq: int
    fw: tuple[int, int, int]
    uptime_s: int
    mode: str
    desired_version: int
    flags: int
    temperature_c: float | None
    signal_dbm: int | None
    free_heap: int
    format: int = HEARTBEAT_FORMAT

    @property
    def relay_on(self) -> bool:
        return bool(self.flags & FLAG_RELAY)

    @property
    def mains_present(self) -> bool:
        return bool(self.flags & FLAG_MAINS)

    @property
    def clock_valid(self) -> bool:
        return bool(self.flags & FLAG_CLOCK)

    @property
    def fw_version(self) -> str:
        return ".".join(str(n) for n in self.fw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fw"] = self.fw_version
        d.update(relay_on=self.relay_on, mains_present=self.mains_present, clock_valid=self.clock_valid)
        return d


def decode_heartbeat(payload: bytes) -> Heartbeat:
    """Decode the 25-byte v1 heartbeat; refuse any other length, format byte or mode code."""
    if len(payload) != HEARTBEAT_SIZE:
        raise ProtocolError(f"heartbeat of {len(payload)} bytes (v1 is {HEARTBEAT_SIZE})")
    if payload[0] != HEARTBEAT_FORMAT:
        raise ProtocolError(f"unknown heartbeat format {payload[0]}")
    (_fmt, seq, major, minor, patch, uptime, mode, dv, flags, temp, signal, heap) = HEARTBEAT_STRUCT.unpack(payload)
    return Heartbeat(
        seq=seq,
        fw=(major, minor, patch),
        uptime_s=uptime,
        mode=mode_name(mode),
        desired_version=dv,
        flags=flags,
        temperature_c=None if temp == TEMP_UNKNOWN else temp / 10,
        signal_dbm=None if signal == SIGNAL_UNKNOWN else signal,
        free_heap=heap,
    )


def encode_heartbeat(
    seq: int,
    *,
    fw: tuple[int, int, int] = (0, 0, 0),
    uptime_s: int = 0,
    mode: str = "active",
    desired_version: int = 0,
    relay_on: bool = False,
    mains_present: bool = True,
    clock_valid: bool = False,
    temperature_c: float | None = None,
    signal_dbm: int | None = None,
    free_heap: int = 0,
) -> bytes:
    """Host-side encoder for fake units and tests (the firmware has its own)."""
    flags = (FLAG_RELAY if relay_on else 0) | (FLAG_MAINS if mains_present else 0) | (FLAG_CLOCK if clock_valid else 0)
    temp = TEMP_UNKNOWN if temperature_c is None else round(temperature_c * 10)
    signal = SIGNAL_UNKNOWN if signal_dbm is None else signal_dbm
    return HEARTBEAT_STRUCT.pack(
        HEARTBEAT_FORMAT, seq & 0xFFFFFFFF, *fw, uptime_s, mode_code(mode), desired_version,
        flags, temp, signal, free_heap,
    )


# --- status -------------------------------------------------------------------------------


def parse_status(payload: bytes) -> Literal["online", "offline", "dormant"]:
    text = payload.decode("utf-8", "replace").strip()
    if text == "online":
        return "online"
    if text == "offline":
        return "offline"
    if text == "dormant":
        return "dormant"
    raise ProtocolError(f"unknown status {text[:40]!r}")


# --- JSON payloads ------------------------------------------------------------------------


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_JSON:
        raise ProtocolError(f"{what} of {len(payload)} bytes (limit {MAX_JSON})")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return obj


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_desired(version: int, mode: str) -> bytes:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProtocolError(f"desired version must be an integer >= 1, not {version!r}")
    mode_code(mode)
    return _dumps({"v": version, "mode": mode})


def parse_desired(payload: bytes) -> tuple[int, str]:
    obj = _json_object(payload, "desired state")
    v, mode = obj.get("v"), obj.get("mode")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or not isinstance(mode, str):
        raise ProtocolError(f"bad desired state {obj!r}")
    return v, mode


def new_command_id() -> str:
    return "c-" + secrets.token_hex(6)


def valid_command_id(cmd_id: object) -> bool:
    return isinstance(cmd_id, str) and 1 <= len(cmd_id) <= 32


def encode_command(cmd_id: str, op: str, arg: str | None = None, exp: int | None = None) -> bytes:
    """Validate and encode a command; ProtocolError for anything the unit would refuse as malformed."""
    if not valid_command_id(cmd_id):
        raise ProtocolError(f"command id must be 1-32 characters, not {cmd_id!r}")
    if op not in COMMAND_OPS:
        raise ProtocolError(f"unknown command op {op!r} (one of {', '.join(COMMAND_OPS)})")
    if op == "relay":
        if arg not in RELAY_ARGS:
            raise ProtocolError(f"relay needs arg {'/'.join(RELAY_ARGS)}, not {arg!r}")
    elif arg is not None:
        raise ProtocolError(f"{op} takes no arg")
    msg: dict[str, Any] = {"id": cmd_id, "op": op}
    if arg is not None:
        msg["arg"] = arg
    if exp is not None:
        if not isinstance(exp, int) or isinstance(exp, bool) or exp < 0:
            raise ProtocolError(f"exp must be Unix seconds, not {exp!r}")
        msg["exp"] = exp
    return _dumps(msg)


@dataclass(frozen=True)
class CommandAck:
    id: str
    ok: bool
    res: dict[str, Any] | None = None
    err: str | None = None


@dataclass(frozen=True)
class DesiredAck:
    dv: int
    ok: bool
    mode: str | None = None
    err: str | None = None


def parse_ack(payload: bytes) -> CommandAck | DesiredAck:
    """A command ack (`id`) or a desired-state ack (`dv`)."""
    obj = _json_object(payload, "ack")
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError(f"ack without boolean 'ok': {obj!r}")
    err = obj.get("err")
    err = None if err is None else str(err)
    if "id" in obj:
        if not valid_command_id(obj["id"]):
            raise ProtocolError(f"ack with bad command id {obj['id']!r}")
        res = obj.get("res")
        return CommandAck(id=obj["id"], ok=ok, res=res if isinstance(res, dict) else None, err=err)
    if "dv" in obj:
        dv = obj["dv"]
        if not isinstance(dv, int) or isinstance(dv, bool) or dv < 0:
            raise ProtocolError(f"ack with bad desired version {dv!r}")
        mode = obj.get("mode")
        return DesiredAck(dv=dv, ok=ok, mode=mode if isinstance(mode, str) else None, err=err)
    raise ProtocolError(f"ack with neither 'id' nor 'dv': {obj!r}")


def parse_alert(payload: bytes) -> dict[str, Any]:
    obj = _json_object(payload, "alert")
    if not isinstance(obj.get("t"), str):
        raise ProtocolError(f"alert without type 't': {obj!r}")
    return obj
