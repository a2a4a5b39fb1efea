"""TLS between units and broker (docs/security.md, "TLS"), on both brokers.

- cloud_stub.tls: the CA is made once and reused, keys 0600, the certificate's names.
- The real firmware (virtual unit) connects over TLS with credentials the cloud issued and
  sends heartbeats, next to a unit on the plain listener of the same broker.
- The firmware refuses a broker whose certificate chains to another CA, or does not carry
  the name it asked for, or when its CA file is missing: a clear TLS error in its log, it
  keeps backing off and never connects.
- A Python client (what the cloud uses: paho + tls_set with the CA) connects over TLS and
  is refused with the wrong CA.
- Figures (printed; in docs/security.md): handshake bytes on the wire (through NetProxy),
  connect time, and the heap TLS costs the unit, against plain MQTT.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from cloud_stub import tls
from cloud_stub.broker import EmbeddedBroker, MosquittoBroker
from cloud_stub.service import Cloud
from provisioning.demo import SCALED_CONFIG, SCALED_HB_S
from provisioning.virtual.netproxy import NetProxy
from provisioning.virtual.unit import VirtualUnit
from tests.conftest import FIRMWARE, _broker_params, micropython_exe

MP_DIR = Path(__file__).parent / "mp"
# fast retries: a refused unit must be seen trying again within a second or two
FAST = {**SCALED_CONFIG, "backoff_min_s": 0.3, "backoff_max_s": 1, "ack_timeout_s": 2}


# --- the PKI ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls.TLSFiles:
    return tls.ensure_server_cert(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> tls.TLSFiles:
    """An unrelated CA (same names): what an impostor broker would present."""
    return tls.ensure_server_cert(tmp_path_factory.mktemp("other-pki"), ca_common_name="simsock local CA")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_ca_is_made_once_and_reused_keys_private(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    f1 = tls.ensure_server_cert(d, ["broker.example.net", "10.1.2.3"])
    assert _mode(d) == 0o700 and _mode(d / tls.CA_KEY) == 0o600 and _mode(f1.key) == 0o600
    assert _mode(f1.ca_pem) == 0o644 and _mode(f1.ca_der) == 0o644
    ca = x509.load_pem_x509_certificate(f1.ca_pem.read_bytes())
    assert x509.load_der_x509_certificate(f1.ca_der.read_bytes()) == ca
    cert = x509.load_pem_x509_certificate(f1.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "broker.example.net"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.1.2.3"}
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.not_valid_before_utc.year == 2000  # a unit without network time yet (ESP32 epoch) accepts it

    before = {p.name: p.read_bytes() for p in d.iterdir()}
    f2 = tls.ensure_server_cert(d, ["broker.example.net"])  # covered already: nothing changes
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before and f2.cert == f1.cert
    f3 = tls.ensure_server_cert(d, ["other.example.net"])  # a new name: a new server cert, the same CA
    assert f3.ca_der.read_bytes() == before[tls.CA_DER] and f3.cert.read_bytes() != before[tls.SERVER_CERT]
    x509.load_pem_x509_certificate(f3.cert.read_bytes()).verify_directly_issued_by(ca)
    assert not list(d.glob("*.tmp"))


def test_bad_names_and_broken_ca_dirs_are_refused(tmp_path: Path) -> None:
    for bad in ("", "bad name", "-x.example", "a" * 64 + ".example", "exa$mple.net"):
        with pytest.raises(tls.TLSError, match="neither a host name nor an IP"):
            tls.ensure_server_cert(tmp_path / "a", [bad])
    assert not (tmp_path / "a" / tls.CA_KEY).exists()  # refused before anything was written
    d = tmp_path / "b"
    tls.ensure_ca(d)
    (d / tls.CA_KEY).unlink()
    with pytest.raises(tls.TLSError, match="missing"):
        tls.ensure_ca(d)  # never silently a new CA: every unit trusts the old one
    other = tmp_path / "c"
    tls.ensure_ca(other)
    (d / tls.CA_KEY).write_bytes((other / tls.CA_KEY).read_bytes())
    with pytest.raises(tls.TLSError, match="not the key"):
        tls.ensure_ca(d)


# --- brokers with a TLS listener -------------------------------------------------------


@pytest.fixture(params=_broker_params())
def tls_broker(request: pytest.FixtureRequest, pki: tls.TLSFiles) -> Iterator[EmbeddedBroker | MosquittoBroker]:
    """An enforcing broker with its plain listener and a TLS one (`tls_port`)."""
    b = EmbeddedBroker(tls=pki) if request.param == "embedded" else MosquittoBroker(tls=pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def cloud(tls_broker: Any, tmp_path: Path) -> Iterator[Cloud]:
    """The cloud on the plain loopback listener (where it runs next to the broker)."""
    c = Cloud(tls_broker.service_url, f"sqlite:///{tmp_path / 'cloud.db'}", hb_interval=SCALED_HB_S,
              sweep_interval=0.2, reconnect_delay=(0.1, 0.5))
    c.start()
    try:
        yield c
    finally:
        c.close()


def _unit(tmp_path: Path, cloud: Cloud, device_id: str, port: int, config: dict[str, Any] | None = None,
          **kw: Any) -> VirtualUnit:
    user, password = cloud.issue_credentials(device_id)
    account = cloud.create_account(f"acct-{device_id}", balance_cents=1000)
    cloud.add_device(account.id, device_id)
    u = VirtualUnit(tmp_path / device_id, device_id, broker_port=port, config={**FAST, **(config or {})},
                    mqtt_user=user, mqtt_pass=password, **kw)
    u.start()
    return u


class TLSObserver:
    """paho over TLS with the service account, as the cloud would connect from another host."""

    def __init__(self, broker: Any, ca: Path, topic: str) -> None:
        self.got: list[bytes] = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"simsock-tls-obs-{time.monotonic_ns()}")
        self.c.username_pw_set(broker.service.username, broker.service.password)
        self.c.tls_set(ca_certs=str(ca))  # verifies the chain and the host name (127.0.0.1: an IP SAN)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = lambda c, u, m: self.got.append(bytes(m.payload))
        self.c.connect(broker.host, broker.tls_port)
        self.c.loop_start()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_firmware_over_tls_with_issued_credentials_next_to_plain(tls_broker: Any, cloud: Cloud, pki: tls.TLSFiles,
                                                                 tmp_path: Path) -> None:
    obs = TLSObserver(tls_broker, pki.ca_pem, "simsock/v1/+/hb")
    assert obs.subscribed.wait(5), "the service account could not subscribe over TLS"
    with NetProxy(tls_broker.host, tls_broker.tls_port) as proxy:
        secure = _unit(tmp_path, cloud, "tls-1", proxy.port, tls_ca=pki.ca_der)
        plain = _unit(tmp_path, cloud, "plain-1", tls_broker.port)
        try:
            for u in (secure, plain):
                assert cloud.wait_status(u.device_id, "online", 20), "\n".join(u.console_tail(20))
                assert cloud.wait_heartbeats(u.device_id, 2, 3 * SCALED_HB_S + 2), "\n".join(u.console_tail(20))
            assert re.search(rf"connecting to 127\.0\.0\.1:{proxy.port} \(TLS\)", secure.console())
            assert re.search(rf"connecting to 127\.0\.0\.1:{tls_broker.port}\n", plain.console())  # no "(TLS)"
            # the cloud-side client over TLS sees both units' heartbeats
            deadline = time.monotonic() + 5
            while len(obs.got) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(obs.got) >= 4
            # the TLS unit's one connection went through the proxy (the figures test measures it)
            st = proxy.stats()
            assert st.connections == 1 and st.bytes_up > 0 and st.bytes_down > 0
            assert "ERROR" not in secure.console()
        finally:
            secure.stop()
            plain.stop()
            obs.close()


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_name", "no_ca_file"])
def test_firmware_refuses_a_broker_it_cannot_verify(tls_broker: Any, cloud: Cloud, pki: tls.TLSFiles,
                                                    other_pki: tls.TLSFiles, tmp_path: Path, case: str) -> None:
    cases: dict[str, tuple[Path | None, dict[str, Any], str]] = {
        "wrong_ca": (other_pki.ca_der, {}, r"TLS handshake with 127\.0\.0\.1 failed: The certificate is not "
                                           r"correctly signed by the trusted CA"),
        "wrong_name": (pki.ca_der, {"tls_server_name": "broker.example.net"},
                       r"TLS handshake with broker\.example\.net failed: The certificate Common Name \(CN\) does "
                       r"not match"),
        "no_ca_file": (None, {"tls": True, "tls_ca": "missing.der"},
                       r"TLS setup with 127\.0\.0\.1 failed: cannot read the CA file missing\.der"),
    }
    ca, config, expect = cases[case]
    unit = _unit(tmp_path, cloud, f"tls-{case.replace('_', '-')}", tls_broker.tls_port, config, tls_ca=ca)
    try:
        t0 = time.monotonic()
        unit.wait_log(expect, 10)
        unit.wait_log(expect, 10, since=unit.last_offset)  # again after a backoff: it keeps trying, refusing
        unit.wait_log(r"reconnect in \d+ ms", 5, since=unit.last_offset)
        print(f"\n[{tls_broker.name}] {case}: refused twice in {time.monotonic() - t0:.2f} s: "
              f"{re.search(expect, unit.console()).group(0)}")  # type: ignore[union-attr]
        assert unit.is_running and unit.reboots == 0
        text = unit.console()
        assert "INFO unit: connected" not in text and "heartbeat seq" not in text
        assert (cloud.device(unit.device_id) or {}).get("status") != "online"
        assert cloud.heartbeat_count(unit.device_id) == 0
    finally:
        unit.stop()


def test_python_client_over_tls_verifies_the_broker(tls_broker: Any, pki: tls.TLSFiles,
                                                    other_pki: tls.TLSFiles) -> None:
    ok = TLSObserver(tls_broker, pki.ca_pem, "simsock/v1/x/hb")
    try:
        assert ok.subscribed.wait(5)
    finally:
        ok.close()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="simsock-tls-wrong")
    c.username_pw_set(tls_broker.service.username, tls_broker.service.password)
    c.tls_set(ca_certs=str(other_pki.ca_pem))
    with pytest.raises(ssl.SSLCertVerificationError):
        c.connect(tls_broker.host, tls_broker.tls_port)


def test_serve_with_tls_makes_and_reuses_the_ca(tmp_path: Path) -> None:
    from cloud_stub.run import serve

    d = tmp_path / "tls"
    db = f"sqlite:///{tmp_path / 'c.db'}"
    with serve("embedded", db, tls_dir=d, tls_names=["broker.example.net"]) as served:
        assert served.tls is not None and served.tls_url == f"mqtts://127.0.0.1:{served.broker.tls_port}"  # type: ignore[union-attr]
        first_ca = served.tls.ca_der.read_bytes()
        assert "broker.example.net" in served.tls.names
    with serve("embedded", db, tls_dir=d) as served:
        assert served.tls is not None and served.tls.ca_der.read_bytes() == first_ca


# --- figures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def malloc_shim(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """LD_PRELOAD library that reports libc's bytes in use (mbedTLS's heap on the unix port); None without gcc."""
    out = tmp_path_factory.mktemp("shim") / "malloc_inuse.so"
    try:
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(MP_DIR / "malloc_inuse.c"), "-ldl"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out


def _probe(mode: str, port: int, user: str, password: str, proxy: NetProxy, shim: Path | None,
           *tls_args: str) -> dict[str, int]:
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
    if shim is not None:  # tcache off: freed chunks it keeps would count as in use
        env.update(LD_PRELOAD=str(shim), GLIBC_TUNABLES="glibc.malloc.tcache_count=0")
    proxy.reset_counters()
    p = subprocess.Popen([micropython_exe(), str(MP_DIR / "tls_probe.py"), mode, "127.0.0.1", str(port), user,
                          password, *tls_args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    assert p.stdin is not None and p.stdout is not None
    figures: dict[str, int] = {}
    lines = []
    try:
        for line in p.stdout:
            lines.append(line.rstrip())
            if line.startswith("STEP "):
                time.sleep(0.1)  # the last bytes of the step through the proxy
                st = proxy.stats()
                what = line.split()[1]
                figures[f"{what}_up"], figures[f"{what}_down"] = st.bytes_up, st.bytes_down
                p.stdin.write("\n")
                p.stdin.flush()
            elif line.startswith("RESULT "):
                figures.update({k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])})
    finally:
        p.wait(20)
    assert "acked" in figures and figures["acked"] == 1, "\n".join(lines)
    return figures


def test_tls_cost_figures(tls_broker: Any, cloud: Cloud, pki: tls.TLSFiles, malloc_shim: Path | None) -> None:
    user, password = cloud.issue_credentials("tls-probe")
    runs: dict[str, dict[str, int]] = {}
    with NetProxy(tls_broker.host, tls_broker.port) as plain_proxy, \
         NetProxy(tls_broker.host, tls_broker.tls_port) as tls_proxy:
        runs["plain"] = _probe("plain", plain_proxy.port, user, password, plain_proxy, malloc_shim)
        runs["tls"] = _probe("tls", tls_proxy.port, user, password, tls_proxy, malloc_shim, str(pki.ca_der),
                             "127.0.0.1")
    p, t = runs["plain"], runs["tls"]
    hs_up, hs_down = t["connected_up"] - p["connected_up"], t["connected_down"] - p["connected_down"]
    pub_plain = p["published_up"] - p["connected_up"]
    pub_tls = t["published_up"] - t["connected_up"]
    print(f"\n[{tls_broker.name}] connect (TCP + [TLS handshake +] CONNECT/CONNACK):"
          f" plain {p['connect_us'] / 1000:.1f} ms, TLS {t['connect_us'] / 1000:.1f} ms"
          f"\n  on the wire up to CONNACK: plain {p['connected_up']}+{p['connected_down']} B,"
          f" TLS {t['connected_up']}+{t['connected_down']} B (handshake {hs_up}+{hs_down} B up+down)"
          f"\n  one 20-byte QoS 1 publish, up: plain {pub_plain} B, TLS {pub_tls} B"
          f"\n  MicroPython heap (gc.mem_alloc): context with the CA {t['ctx']} B; connected: plain {p['conn']} B,"
          f" TLS {t['conn']} B (+{t['conn'] - p['conn']} B)"
          + (f"\n  libc heap (mbedTLS on the unix port): context {t['c_ctx']} B, per connection {t['c_conn']} B,"
             f" after close {t['c_after_close']} B" if malloc_shim is not None else ""))
    assert 300 < hs_up + hs_down < 4000  # EC P-256: a ~1.6 KB handshake, not the ~4-5 KB of RSA-2048 chains
    assert t["conn"] - p["conn"] < 2048  # the TLS socket on MicroPython's own heap
    assert pub_tls - pub_plain <= 40  # one TLS record: 5-byte header + 8-byte nonce + 16-byte tag (AES-GCM)
    if malloc_shim is not None:
        assert t["c_conn"] < 40_000 and t["c_after_close"] <= 0  # all of it freed at close


def test_firmware_tls_config_keys() -> None:
    """app.config: tls (bool), tls_ca, tls_server_name; broker_port 8883 with tls unless given."""
    code = """
from app import config
class L:
    lines = []
    def warn(self, t): self.lines.append(t)
d = config.defaults()
assert d["tls"] is False and d["tls_ca"] == "ca.der" and d["tls_server_name"] is None and d["broker_port"] == 1883
c = config.merge({"tls": True})
assert c["tls"] is True and c["broker_port"] == 8883
c = config.merge({"tls": True, "broker_port": 18883, "tls_server_name": "broker.example.net", "tls_ca": "x.pem"})
assert c["broker_port"] == 18883 and c["tls_server_name"] == "broker.example.net" and c["tls_ca"] == "x.pem"
log = L()
c = config.merge({"tls": "yes", "tls_ca": "", "tls_server_name": 5}, log)
assert c["tls"] is False and c["tls_ca"] == "ca.der" and c["tls_server_name"] is None and len(log.lines) == 3
print("OK")
"""
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
    r = subprocess.run([micropython_exe(), "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "OK", r.stdout + r.stderr


def test_cloud_serve_tls_refusals(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from provisioning.cli import app

    db = f"sqlite:///{tmp_path / 'c.db'}"
    runner = CliRunner()
    r = runner.invoke(app, ["cloud", "serve", "--tls", "--broker", "mqtt://127.0.0.1:1", "--db", db])
    assert r.exit_code == 1 and "broker started here" in r.output
    r = runner.invoke(app, ["cloud", "serve", "--tls", "--tls-name", "bad name", "--tls-dir", str(tmp_path / "t"),
                            "--db", db])
    assert r.exit_code == 1 and "neither a host name nor an IP" in r.output
