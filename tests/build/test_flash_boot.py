"""The image boots: provisioning/virtual/mp_flash_boot.py mounts the littlefs partition of a
flash file with the MicroPython unix port, and the firmware runs from it — its code, its
identity and its config all read from inside the littlefs image, nothing from firmware/."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from provisioning.build import FIRMWARE, build, fsimage
from provisioning.virtual import store_file
from provisioning.virtual.unit import fake_hw_ids, fake_identity

from .conftest import run_mp

BOOT = Path(__file__).resolve().parents[2] / "provisioning" / "virtual" / "mp_flash_boot.py"
FLASH_SIZE = 0x400000


def flash_file(path: Path, merged: bytes, at: int = 0x1000) -> Path:
    """What the emulated ROM loader leaves behind: erased 4 MiB flash with the image written at `at`."""
    flash = bytearray(b"\xff" * FLASH_SIZE)
    flash[at : at + len(merged)] = merged
    path.write_bytes(flash)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MICROPYPATH", "SIMSOCK_ROOT")}
    return {**env, **extra}


def _read_str(buf: bytes, i: int) -> tuple[bytes, int]:
    n = int.from_bytes(buf[i : i + 2], "big")
    return buf[i + 2 : i + 2 + n], i + 2 + n


def parse_connect(pkt: bytes) -> dict[str, bytes]:
    """Client id, user and password from an MQTT 3.1.1 CONNECT."""
    assert pkt[0] == 0x10, pkt[:8]
    i, mult = 1, 1
    while pkt[i] & 0x80:
        i, mult = i + 1, mult * 128
    i += 1
    _proto, i = _read_str(pkt, i)
    flags = pkt[i + 1]
    i += 4  # level, flags, keepalive
    out: dict[str, bytes] = {}
    out["client_id"], i = _read_str(pkt, i)
    if flags & 0x04:
        _topic, i = _read_str(pkt, i)
        _msg, i = _read_str(pkt, i)
    if flags & 0x80:
        out["user"], i = _read_str(pkt, i)
    if flags & 0x40:
        out["password"], i = _read_str(pkt, i)
    return out


class OneConnect:
    """A listener that takes the first MQTT CONNECT and hangs up: the test's broker stand-in."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.packet = b""
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            while len(self.packet) < 2 or len(self.packet) < 2 + self.packet[1]:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                self.packet += chunk
            conn.close()
        except OSError:
            pass
        finally:
            self.done.set()
            self.sock.close()


def test_firmware_boots_from_the_image_with_identity_inside(mp_exe: str, tmp_path: Path) -> None:
    src = tmp_path / "fw"
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "version.py").write_text("VERSION = (9, 8, 7)\n")  # proves the code comes from the image
    broker = OneConnect()
    ident = fake_identity("boot-test-1")
    per_unit = {
        "identity.json": store_file.encode(ident),
        "config.json": store_file.encode({"broker_host": "127.0.0.1", "broker_port": broker.port}),
    }
    mpbin = tmp_path / "mp.bin"
    from provisioning.build.esp32img import fake_micropython_bin

    mpbin.write_bytes(fake_micropython_bin())
    r = build(tmp_path / "out", src=src, micropython_bin=mpbin, extra_files=per_unit)
    flash = flash_file(tmp_path / "flash.img", r.merged.read_bytes())  # type: ignore[union-attr]
    unit = tmp_path / "unit"
    (unit / "sim").mkdir(parents=True)
    (unit / "sim" / "hw.json").write_text(json.dumps(fake_hw_ids("boot-test-1")))

    proc = subprocess.Popen(
        [mp_exe, str(BOOT), str(flash)],
        cwd=tmp_path,  # nothing importable here or on MICROPYPATH: only the image
        env=clean_env(SIMSOCK_ROOT=str(unit)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert broker.done.wait(30), "the unit never connected"
    finally:
        proc.kill()
        console = proc.communicate(timeout=10)[0]
    assert "boot fw=9.8.7 board=unix device_id=boot-test-1" in console, console
    got = parse_connect(broker.packet)
    assert got["client_id"] == ident["device_id"].encode()
    assert got["user"] == ident["mqtt_user"].encode() and got["password"] == ident["mqtt_pass"].encode()
    # the simulated hardware stayed on the host, passed through at /flash/sim
    assert (unit / "sim" / "relay").read_text().strip() in ("0", "1")
    # and the partition is still a good littlefs after the unit ran on it (killed: a power cut)
    after = fsimage.read_image(flash.read_bytes()[0x200000:])
    assert store_file.decode(after.files["identity.json"]) == ident
    assert after.files["app/unit.mpy"] == (r.bundle_dir / "app" / "unit.mpy").read_bytes()


def test_main_runs_from_the_image_and_its_writes_persist(mp_exe: str, tmp_path: Path) -> None:
    src = tmp_path / "fw"
    src.mkdir()
    (src / "version.py").write_text("VERSION = (0, 0, 1)\n")
    (src / "helper.py").write_text("def where():\n    return __file__\n")
    (src / "main.py").write_text(
        "import os, sys, helper\n"
        "print('helper', helper.where())\n"
        "print('cwd', os.getcwd(), 'root', os.getenv('SIMSOCK_ROOT'), 'path', sys.path)\n"
        "with open('note.new', 'w') as f:\n"
        "    f.write('written on the unit')\n"
        "os.rename('note.new', 'note.txt')\n"
        "with open('/flash/sim/out', 'w') as f:\n"
        "    f.write('host side')\n"
        "sys.exit(42)\n"
    )
    r = build(tmp_path / "out", src=src, target="unix", partition_size=0x100000)
    flash = tmp_path / "fs.img"
    flash.write_bytes(r.fs_image.read_bytes())
    unit = tmp_path / "unit"
    unit.mkdir()
    done = run_mp(mp_exe, BOOT, str(flash), "--offset", "0", cwd=tmp_path, env=clean_env(SIMSOCK_ROOT=str(unit)))
    assert done.returncode == 42, done.stdout + done.stderr  # board.reset()'s exit code passes through
    assert "helper /flash/helper.mpy" in done.stdout, done.stdout
    assert "cwd /flash root /flash path ['/flash', '/flash/lib', '.frozen']" in done.stdout
    assert fsimage.read_image(flash.read_bytes()).files["note.txt"] == b"written on the unit"
    assert (unit / "sim" / "out").read_text() == "host side"


def test_a_flash_without_the_filesystem_does_not_boot(mp_exe: str, tmp_path: Path) -> None:
    flash = flash_file(tmp_path / "blank.img", b"")
    done = run_mp(mp_exe, BOOT, str(flash), cwd=tmp_path, env=clean_env())
    assert done.returncode == 3
    assert "no littlefs at" in done.stdout and "offset 0x200000 size 0x200000" in done.stdout
