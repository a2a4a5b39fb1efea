"""firmware/app/store.py: format, boot recovery, power cuts, kill -9.

The power-cut test runs in MicroPython on littlefs (vfs.VfsLfs2) over a RAM block
device that is a fault injector — a mock for a fault that can't be produced for real
here (see tests/firmware/mp/app_powercut.py). The kill -9 test runs the real store in
a real interpreter on the host filesystem: it covers process death at any instant,
not loss of the page cache.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from provisioning.virtual import store_file
from tests.conftest import FIRMWARE, REPO, micropython_exe

MP = REPO / "tests" / "firmware" / "mp"


def test_recovery_cases(mp, tmp_path: Path) -> None:
    r = mp(MP / "app_store_cases.py", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok all" in r.stdout


def test_same_format_as_host_tools(mp, tmp_path: Path) -> None:
    obj = {"device_id": "dev-7", "serial": "SN1", "mqtt_user": "u", "mqtt_pass": "p\u00e9", "n": [1, 2]}
    store_file.write(tmp_path / "identity.json", obj)
    script = tmp_path / "rt.py"
    script.write_text(
        "import sys\nfrom app.store import Store\ns = Store(sys.argv[1])\n"
        "o = s.load('identity.json')\nprint(o['device_id'], o['n'])\n"
        "o['back'] = True\ns.save('copy.json', o)\n"
    )
    r = mp(script, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["dev-7", "[1,", "2]"]
    copy = store_file.read(tmp_path / "copy.json")
    assert copy == {**obj, "back": True}
    # Byte-identical to the host encoder (both write compact JSON; key order may differ,
    # so compare re-encoded content through the CRC check instead of raw bytes).
    raw = (tmp_path / "copy.json").read_bytes()
    assert store_file.decode(raw) == copy and raw.count(b"\n") == 2


def test_power_cut_at_every_write(mp) -> None:
    seed = random.randrange(1 << 30)
    r = mp(MP / "app_powercut.py", "1000", str(seed), timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"seed {seed}:\n{out[-3000:]}"
    assert "MemoryError" not in out and "Traceback" not in out, out[-3000:]
    assert "POWERCUT ok exhaustive" in r.stdout
    m = re.search(r"random rounds=(\d+) cuts=(\d+)", r.stdout)
    assert m and int(m.group(1)) == 1000 and int(m.group(2)) > 500
    m = re.search(r"negative-control caught=(\d+)/(\d+)", r.stdout)
    assert m and int(m.group(1)) > 0  # the injector does catch a non-atomic save
    print(r.stdout)


def _run_until_killed(root: Path, delay: float) -> tuple[int, int | None]:
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:{MP}:.frozen")
    p = subprocess.Popen(
        [micropython_exe(), str(MP / "app_store_loop.py"), str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=10)
    assert p.returncode == -signal.SIGKILL, err.decode()
    lines = out.decode().splitlines()
    starts = [int(x.split()[1]) for x in lines if x.startswith("start ")]
    saved = [int(x.split()[1]) for x in lines if x.startswith("saved ")]
    if not starts:
        return -1, None  # killed before it even loaded
    return starts[0], (saved[-1] if saved else None)


def test_kill_9_while_saving(tmp_path: Path) -> None:
    rng = random.Random()
    state = tmp_path / "state.json"
    known = 0  # the value the last run reported as saved (or found)
    killed_mid_loop = 0
    for it in range(50):
        start, last = _run_until_killed(tmp_path, rng.uniform(0.0, 0.12))
        if start == -1:
            continue
        # The firmware's own load (with recovery) found the old-or-new state of the
        # previous run.
        assert start in (known, known + 1), (it, start, known)
        known = start if last is None else last
        if last is not None:
            killed_mid_loop += 1
        # Host reader (no recovery): old or new, never torn.
        if state.exists():
            obj = store_file.read(state)
            assert obj["i"] in (known, known + 1), (it, obj["i"], known)
            assert obj["pad"] == "x" * (obj["i"] * 37 % 700)
            assert obj["mode"] == ("suspended" if obj["i"] % 2 else "active")
        else:
            assert known == 0
    assert killed_mid_loop >= 25
