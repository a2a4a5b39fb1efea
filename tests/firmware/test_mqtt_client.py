"""The firmware's MQTT client on real MicroPython against real brokers (amqtt and Mosquitto).

The MicroPython side is tests/firmware/mp/mqtt_driver.py (one scenario per test); it
prints "<ms> EV ..." / "<ms> LOG ..." lines that the test follows while it plays the
rest of the world with paho-mqtt, a NetProxy (bad link) and the broker itself.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from provisioning.virtual.netproxy import NetProxy
from tests.conftest import FIRMWARE, REPO, micropython_exe

DRIVER = Path(__file__).parent / "mp" / "mqtt_driver.py"

# The MQTT client on raw topics (t/<cid>/…) with ad-hoc clients: the open mode of the `broker` fixture.
pytestmark = pytest.mark.open_broker


class MP:
    """A MicroPython process running one driver scenario, followed line by line."""

    def __init__(
        self,
        scenario: str,
        host: str,
        port: int,
        cid: str,
        *opts: str,
        heapsize: str | None = None,
        mpy_dir: Path | None = None,
    ) -> None:
        cmd = [micropython_exe()]
        if heapsize:
            cmd += ["-X", f"heapsize={heapsize}"]
        env = dict(os.environ)
        if mpy_dir:  # compiled modules, as on a unit (compiling source needs more heap than a unit has)
            cmd += ["-m", "mqtt_driver"]
            env["MICROPYPATH"] = f"{mpy_dir}:.frozen"
        else:
            cmd += [str(DRIVER)]
            env["MICROPYPATH"] = f"{FIRMWARE}:{REPO / 'tests' / 'firmware' / 'mp'}:.frozen"
        cmd += [scenario, host, str(port), cid, *opts]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._pos = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def _take(self, timeout: float) -> int:
        """1: a line arrived, 0: nothing within timeout, -1: the process's output ended."""
        try:
            line = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return 0
        if line is None:
            self._q.put(None)
            return -1
        self.lines.append(line)
        return 1

    def wait(self, pattern: str, timeout: float = 10.0, rescan: bool = False) -> re.Match[str]:
        """The first not-yet-consumed output line matching `pattern` (regex search);
        rescan: search all output, consumed or not."""
        rx = re.compile(pattern)
        if rescan:
            self._pos = 0
        deadline = time.monotonic() + timeout
        while True:
            while self._pos < len(self.lines):
                line = self.lines[self._pos]
                self._pos += 1
                m = rx.search(line)
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0 or self._take(min(left, 0.2)) < 0:
                pytest.fail(f"no line matching {pattern!r} within {timeout}s; output:\n{self.output()}")

    def finish(self, timeout: float = 15.0) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"MicroPython did not finish; output:\n{self.output()}")
        out = self.output()
        assert self.proc.returncode == 0, out
        assert "Traceback" not in out, out
        return out

    def output(self) -> str:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and self._take(0.1 if self.proc.poll() is not None else 0) >= 0:
            if self.proc.poll() is None and self._q.empty():
                break
        return "\n".join(self.lines)

    def grep(self, pattern: str) -> list[re.Match[str]]:
        rx = re.compile(pattern)
        return [m for m in (rx.search(x) for x in self.lines) if m]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Host:
    """The cloud side: a paho client that records what it receives."""

    def __init__(self, broker: object, *topics: str, clean: bool = True, cid: str | None = None) -> None:
        self.msgs: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=cid or f"host-{uuid.uuid4().hex[:8]}", clean_session=clean
        )
        subscribed = threading.Event()
        self.c.on_message = lambda _c, _u, m: self._add(m)
        self.c.on_subscribe = lambda *_a: subscribed.set()
        self.c.connect(broker.host, broker.port)  # type: ignore[attr-defined]
        self.c.loop_start()
        if topics:
            self.c.subscribe([(t, 1) for t in topics])
            assert subscribed.wait(5), "host subscribe timed out"

    def _add(self, m: paho.MQTTMessage) -> None:
        with self._lock:
            self.msgs.append(m)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.msgs if topic is None or m.topic == topic]

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what or pred}; host got {self.payloads()!r}")
            time.sleep(0.02)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def compile_mpy(out: Path) -> Path:
    """mpy-cross the client and the driver into `out` (layout as on a unit's filesystem)."""
    (out / "mqtt").mkdir(parents=True, exist_ok=True)
    jobs = [(FIRMWARE / "mqtt" / f"{m}.py", out / "mqtt" / f"{m}.mpy") for m in ("__init__", "packet", "client")]
    jobs.append((DRIVER, out / "mqtt_driver.mpy"))
    for src, dst in jobs:
        subprocess.run(["mpy-cross", "-o", str(dst), str(src)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_mpy(tmp_path_factory.mktemp("mpy"))


@pytest.fixture
def cid() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


@pytest.fixture
def procs() -> Iterator[list[MP]]:
    started: list[MP] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    made: list[Host] = []
    yield made
    for h in made:
        h.close()


@pytest.fixture
def proxy(broker: object) -> Iterator[NetProxy]:
    p = NetProxy(broker.host, broker.port).start()  # type: ignore[attr-defined]
    yield p
    p.stop()


def test_roundtrip_qos0_qos1_retained_and_pings(broker, cid, procs, hosts) -> None:
    h = Host(broker, f"t/{cid}/out", f"t/{cid}/will")
    hosts.append(h)
    h.publish(f"t/{cid}/in", "q1-retained", qos=1, retain=True)
    mp = MP("roundtrip", broker.host, broker.port, cid, "keepalive=0.5", "ack=2", "idle=1.6")
    procs.append(mp)
    mp.wait("EV READY")
    mp.wait(rf"EV MSG t/{cid}/in 1 11 q1-retained")  # retained flag decoded
    h.publish(f"t/{cid}/in", "q0-hello", qos=0)
    mp.wait(rf"EV MSG t/{cid}/in 0 8 q0-hello")
    h.publish(f"t/{cid}/in", "q1-hello", qos=1)
    mp.wait(r"EV MSG .* q1-hello")
    h.publish(f"t/{cid}/in", "stop", qos=1)
    out = mp.finish()
    want = [b"echo:q1-retained", b"echo:q0-hello", b"echo:q1-hello"]
    h.wait_for(lambda: all(w in h.payloads(f"t/{cid}/out") for w in want), what="echoes")
    assert len(mp.grep(r"EV ACKED \d+ 1")) == 2, out
    assert len(mp.grep(r"LOG debug pong")) >= 2, out  # keepalive pings answered while idle
    time.sleep(0.3)
    assert h.payloads(f"t/{cid}/will") == [], "clean DISCONNECT must not fire the will"


@pytest.mark.parametrize("how", ["cut", "close"])
def test_will_when_link_dies(broker, proxy, cid, procs, hosts, how) -> None:
    h = Host(broker, f"w/{cid}/status")
    hosts.append(h)
    mp = MP("will", proxy.host, proxy.port, cid, "keepalive=5", "bmin=0.1", "bmax=0.5", f"mode={how}")
    procs.append(mp)
    mp.wait("EV READY")
    if how == "cut":
        proxy.cut()
    h.wait_for(lambda: h.payloads() == [b"offline"], timeout=5, what="last will")
    if how == "cut":
        mp.wait("EV DOWN")
        mp.wait("EV UP 2", timeout=10)  # run() came back by itself
        mp.kill()
    else:
        mp.wait("EV CLOSED")
        mp.finish()


def test_persistent_session_gets_messages_queued_while_offline(broker, cid, procs, hosts) -> None:
    # with credentials, as a unit connects (the embedded broker keeps no session for anonymous clients)
    creds = (f"user={cid}", "password=secret")
    mp1 = MP("persist", broker.host, broker.port, cid, "clean=0", "phase=1", *creds)
    procs.append(mp1)
    mp1.wait("EV SUBSCRIBED")
    mp1.finish()
    h = Host(broker)
    hosts.append(h)
    for i in range(3):
        h.publish(f"p/{cid}", f"queued-{i}", qos=1)
    mp2 = MP("persist", broker.host, broker.port, cid, "clean=0", "phase=2", "n=3", *creds)
    procs.append(mp2)
    out = mp2.finish()
    assert mp2.grep("EV UP 1 1"), out  # session_present
    assert mp2.grep("EV GOT 3"), out
    got = [m.group(1) for m in mp2.grep(r"EV MSG p/\S+ 0 \d+ (\S+)")]
    assert sorted(set(got)) == ["queued-0", "queued-1", "queued-2"], out


def test_broker_restart_reconnects_and_delivers_outage_publish(broker, cid, procs, hosts) -> None:
    mp = MP("restart", broker.host, broker.port, cid, "keepalive=2", "ack=1.5", "cto=1", "bmin=0.2", "bmax=1")
    procs.append(mp)
    mp.wait("EV READY")
    broker.restart(down_seconds=2.0)
    mp.wait(r"EV PUB \d+ 0")  # made while the broker was down
    mp.wait(r"EV UP 2", timeout=10)
    mp.wait(r"EV ACKED \d+ 1", rescan=True)  # resent before the subscriptions are renewed
    h = Host(broker, f"r/{cid}/out")
    hosts.append(h)
    h.wait_for(lambda: b"during-outage" in h.payloads(), what="publish made during the outage")
    h.publish(f"r/{cid}/in", "after-restart", qos=1)  # subscription renewed on reconnect
    mp.wait(r"EV MSG r/\S+ 0 13 after-restart")
    h.publish(f"r/{cid}/in", "stop", qos=1)
    out = mp.finish()
    delays = [int(m.group(1)) for m in mp.grep(r"reconnect in (\d+) ms")]
    assert len(delays) >= 2, out  # the outage took several attempts


def test_half_open_link_detected_by_keepalive_and_recovered(broker, proxy, cid, procs, hosts) -> None:
    mp = MP("halfopen", proxy.host, proxy.port, cid, "keepalive=1", "ack=1", "cto=1", "bmin=0.1", "bmax=0.5")
    procs.append(mp)
    mp.wait("EV READY")
    proxy.blackhole()
    t0 = time.monotonic()
    mp.wait("EV DOWN", timeout=6)
    detected = time.monotonic() - t0
    assert detected < 4.0, f"half-open link noticed only after {detected:.1f}s"  # keepalive + ack_timeout + slack
    mp.wait("LOG warning connect failed", timeout=6)  # no CONNACK over the dead link
    proxy.restore()
    mp.wait("EV UP 2", timeout=8)
    h = Host(broker)
    hosts.append(h)
    h.publish(f"h/{cid}/in", "stop", qos=1)
    out = mp.finish()
    assert mp.grep("half-open"), out


def test_half_open_while_publishing_resends_with_dup_and_bounds_inflight(broker, proxy, cid, procs, hosts) -> None:
    h = Host(broker, f"h/{cid}/out")
    hosts.append(h)
    n = 20
    mp = MP(
        "halfopen", proxy.host, proxy.port, cid, "keepalive=5", "ack=1", "cto=1", "bmin=0.1", "bmax=0.5",
        "inflight=4", f"n={n}", "every_ms=100",
    )  # fmt: skip
    procs.append(mp)
    mp.wait("EV PUB 3 ")
    proxy.blackhole()
    mp.wait("EV DOWN", timeout=6)  # the missing PUBACKs gave it away
    time.sleep(0.5)
    proxy.restore()
    mp.wait("EV ALLACKED 1", timeout=25)
    h.wait_for(lambda: len(set(h.payloads())) >= n, what="all publishes")
    h.publish(f"h/{cid}/in", "stop", qos=1)
    out = mp.finish()
    assert sorted(set(h.payloads()), key=lambda p: int(p[1:])) == [f"m{i}".encode() for i in range(n)], out
    assert mp.grep(r"resend pid \d+ \(dup\)"), out
    assert not mp.grep("EV OVERFLOW"), out
    assert max(int(m.group(1)) for m in mp.grep(r"EV PUB \d+ \d+ (\d+)")) <= 4, out


def test_oversize_inbound_is_dropped_in_small_heap(broker, cid, procs, hosts, mpy_dir) -> None:
    h = Host(broker, f"o/{cid}/out")
    hosts.append(h)
    mp = MP("oversize", broker.host, broker.port, cid, "maxp=1024", "keepalive=5", heapsize="64K", mpy_dir=mpy_dir)
    procs.append(mp)
    mp.wait("EV READY")
    h.publish(f"o/{cid}/in", os.urandom(100_000), qos=1)
    h.publish(f"o/{cid}/in", "after", qos=1)
    mp.wait(r"EV MSG o/\S+ 0 5 after")
    out = mp.finish()
    assert mp.grep(r"LOG warning dropped 1000\d\d-byte packet 0x3\d on o/"), out
    assert not mp.grep(r"EV MSG o/\S+ 0 100000"), out
    h.wait_for(lambda: b"alive" in h.payloads(), what="publish after the drop")


class RefusingServer:
    """Answers every CONNECT with CONNACK `code` and hangs up; counts connections."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.connects: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    self.connects.append(conn.recv(1024))
                    conn.sendall(bytes((0x20, 2, 0, self.code)))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_refused_connect_raises_and_backs_off_with_jitter(procs) -> None:
    srv = RefusingServer(code=4)  # bad user name or password
    try:
        mp = MP("backoff", "127.0.0.1", srv.port, "bad-creds", "bmin=0.05", "bmax=0.4", "secs=2.5")
        procs.append(mp)
        out = mp.finish()
    finally:
        srv.close()
    assert mp.grep("EV REFUSED 4"), out
    rows = [tuple(map(int, m.groups())) for m in mp.grep(r"reconnect in (\d+) ms \(attempt (\d+), cap (\d+) ms\)")]
    assert len(rows) >= 5, out
    for delay, attempt, cap in rows:
        assert cap == min(400, 50 * 2**attempt), rows
        assert 0 <= delay <= cap, rows
    assert [a for _, a, _ in rows] == list(range(len(rows))), rows  # never reset: never got a connection
    assert len({d for d, _, _ in rows}) > len(rows) // 2, rows  # jittered, not a fixed schedule
    # no hot loop: attempts are bounded by the backoff (a hot loop makes thousands)
    assert srv.connections <= len(rows) + 1 < 40, (srv.connections, rows)
    print("backoff delays (ms, attempt, cap):", rows)


def test_heartbeat_publish_loop_figures(broker, proxy, cid, procs, mpy_dir) -> None:
    """Heap and wire cost of the heartbeat path (QoS 1, 25 bytes, each acked); figures, not limits."""
    n = 200
    mp = MP("bench", proxy.host, proxy.port, cid, f"n={n}", heapsize="64K", mpy_dir=mpy_dir)
    procs.append(mp)
    mp.wait("EV PEAK", timeout=30)
    st = proxy.stats()
    out = mp.finish()
    alloc = int(mp.wait(r"EV ALLOC_PER_PUBLISH (\d+)", rescan=True).group(1))
    peak = int(mp.wait(r"EV PEAK (\d+)", rescan=True).group(1))
    live0, live1, free = map(int, mp.wait(r"EV LIVE (\d+) (\d+) (\d+)", rescan=True).groups())
    assert live1 - live0 < 1024, out  # nothing accumulates per publish
    topic_len = len(f"simsock/v1/{cid}/hb")
    publish_bytes = 2 + 2 + topic_len + 2 + 25
    # the connection: CONNECT/CONNACK, n + 25 PUBLISH + PUBACK, DISCONNECT (no pings at keepalive 5 s)
    assert st.bytes_up >= (n + 25) * publish_bytes, (st, out)
    assert st.bytes_down >= (n + 25) * 4, (st, out)
    print(
        f"\n[{broker.name}] heartbeat loop (-X heapsize=64K, compiled): {alloc} B garbage per publish+PUBACK+"
        f"wait_acked; live heap after gc {live0} -> {live1} B over {n} publishes, {free} B free; "
        f"micropython.mem_peak() {peak} (cumulative m_malloc, not live heap); "
        f"wire {publish_bytes} B up + 4 B down per heartbeat; "
        f"proxy saw {st.bytes_up} B / {st.chunks_up} chunks up, {st.bytes_down} B / {st.chunks_down} chunks down"
    )
