"""Bytes on the wire: per heartbeat, per check-in, per day — simsock vs Tasmota defaults.

One virtual unit (the real firmware under MicroPython, with MQTT credentials the cloud
issued, as every unit has) connects to the broker THROUGH `NetProxy`; the proxy counts
the MQTT bytes (TCP payload) and the chunks (one recv() ≈ one TCP segment) in each
direction. When the process may open an AF_PACKET socket (root), the real TCP segments
of the unit↔proxy leg on loopback are counted too, as a check of the header model.

Time is scaled down (heartbeat every 1 s, check-in every 2–3 s): the bytes of a message
do not depend on the interval. The per-day figures then use the default intervals
(hb_s=300, keepalive_s=600, suspended check-in uniform 10–60 min).

    python bench/wire_bytes.py [--heartbeats 30] [--checkins 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import Segments, Sniffer, footer

from cloud_stub.broker import MosquittoBroker
from cloud_stub.run import serve
from provisioning.virtual.netproxy import NetProxy, Stats
from provisioning.virtual.unit import VirtualUnit

DEVICE_ID = "ws-00001"  # 8 characters; every byte of the id is one byte of every heartbeat's topic
HDR = 40  # IPv4 (20) + TCP (20) without options: the minimal header of one segment
TCP_OPEN, TCP_CLOSE = 3, 4  # SYN, SYN/ACK, ACK; FIN, ACK, FIN, ACK
DAY = 86400
MONTH_DAYS = 30

# defaults of docs/firmware.md
HB_S = 300
KEEPALIVE_S = 600
CHECKIN_SUSPENDED_S = (600, 3600)

# Tasmota defaults (TelePeriod 300 s, MqttKeepAlive 30 s, QoS 0)
TASMOTA_TOPIC_STATE = "tele/tasmota_XXXXXX/STATE"
TASMOTA_TOPIC_SENSOR = "tele/tasmota_XXXXXX/SENSOR"
TASMOTA_STATE_B = 303  # a typical STATE payload (uptime, heap, wifi block, POWER …)
TASMOTA_SENSOR_B = 150  # assumed: a small SENSOR JSON (the ENERGY block of a power plug is often larger)
TASMOTA_TELE_S = 300
TASMOTA_KEEPALIVE_S = 30

SCALED = {
    "hb_s": 1,
    "keepalive_s": 600,
    "ack_timeout_s": 5,
    "backoff_min_s": 0.5,
    "backoff_max_s": 2,
    "checkin_suspended_s": [2, 3],
    "checkin_wait_s": 2,
    "mains_poll_ms": 500,
}


@dataclass
class Measured:
    what: str
    n: int  # how many events the counters cover
    stats: Stats
    seg: Segments | None

    def per(self, attr: str) -> float:
        return getattr(self.stats, attr) / self.n

    @property
    def mqtt(self) -> float:
        return (self.stats.bytes_up + self.stats.bytes_down) / self.n

    @property
    def chunks(self) -> float:
        return (self.stats.chunks_up + self.stats.chunks_down) / self.n


def remaining_len_size(n: int) -> int:
    size = 1
    while n > 127:
        n //= 128
        size += 1
    return size


def publish_size(topic: str, payload: int, qos: int) -> int:
    rem = 2 + len(topic) + (2 if qos else 0) + payload
    return 1 + remaining_len_size(rem) + rem


def short_json_heartbeat(free_heap: int) -> bytes:
    """The heartbeat's fields as short-key compact JSON, with values of a unit up 30 days."""
    up = 30 * DAY
    obj = {"f": 1, "seq": up // HB_S, "fw": "0.1.0", "up": up, "m": 0, "dv": 12, "fl": 7,
           "t": 24.5, "sig": -71, "heap": free_heap}
    return json.dumps(obj, separators=(",", ":")).encode()


class Bench:
    def __init__(self, console: Console, heartbeats: int, checkins: int) -> None:
        self.console = console
        self.heartbeats = heartbeats
        self.checkins = checkins
        self.by_broker: dict[str, dict[str, Measured]] = {}
        self.results: dict[str, Measured] = {}
        self.free_heap = 0
        self.workdirs: list[Path] = []
        self.sniffer: Sniffer | None = None
        self.proxy: NetProxy | None = None
        self._seg0: Segments | None = None

    # counters of both the proxy and the sniffer, reset / read together
    def reset(self) -> None:
        assert self.proxy is not None
        self.proxy.reset_counters()
        self._seg0 = self.sniffer.snapshot() if self.sniffer else None

    def read(self, what: str, n: int) -> Measured:
        assert self.proxy is not None
        seg = self.sniffer.snapshot() - self._seg0 if self.sniffer and self._seg0 else None
        m = Measured(what, n, self.proxy.stats(), seg)
        self.results[what] = m
        return m

    def run(self, broker: str) -> None:
        self.results = self.by_broker[broker] = {}
        work = Path(tempfile.mkdtemp(prefix=f"simsock-bench-wire-{broker}-"))
        self.workdirs.append(work)
        with serve(broker, f"sqlite:///{work / 'cloud.db'}", hb_interval=1.0, sweep_interval=0.5) as served:
            cloud = served.cloud
            acct = cloud.create_account("bench", balance_cents=1000)
            # the unit's own MQTT account, issued by the cloud (username = client id = device id): the broker
            # refuses anyone else, and the credentials travel in every CONNECT (session setup, check-in)
            user, password = cloud.issue_credentials(DEVICE_ID)
            cloud.add_device(acct.id, DEVICE_ID)  # the cloud publishes desired {v:1, mode:active}, retained
            last_hb: dict[str, int] = {}
            cloud.add_listener(lambda ev: last_hb.update(ev.data) if ev.kind == "hb" else None)
            with NetProxy(cloud.host, cloud.port) as proxy:
                self.proxy = proxy
                self.sniffer = Sniffer.try_start(proxy.port)
                try:
                    with VirtualUnit(work / DEVICE_ID, DEVICE_ID, broker_host=proxy.host, broker_port=proxy.port,
                                     config=SCALED, mqtt_user=user, mqtt_pass=password) as unit:
                        self._measure(cloud, acct.id, unit)
                finally:
                    if self.sniffer:
                        self.sniffer.stop()
            self.free_heap = int(last_hb.get("free_heap") or 0)

    def _measure(self, cloud, account_id: int, unit: VirtualUnit) -> None:  # type: ignore[no-untyped-def]
        assert self.proxy is not None
        # (a0) first boot: connect, subscribe, retained desired v1 applied and acked, online, 1st heartbeat
        self.reset()
        unit.start()
        unit.wait_log(r"INFO unit: heartbeat seq=1$", 20)
        unit.wait_log(r"applied desired v=1 mode=active", 5)
        time.sleep(0.3)  # the last PUBACK / TCP ACK
        self.read("first boot (incl. 1 hb, desired v1 applied+acked)", 1)

        # (a) a reconnect: the link drops (proxy cut), the unit connects again; includes 1 heartbeat
        since = unit.mark()
        self.reset()
        self.proxy.cut()
        unit.wait_log(r"INFO unit: connected$", 20, since=since)
        unit.wait_log(r"INFO unit: heartbeat seq=\d+$", 10, since=unit.last_offset)
        time.sleep(0.3)
        self.read("reconnect (incl. 1 hb)", 1)

        # (b) steady state: exactly N heartbeats between two reads
        m = unit.wait_log(r"INFO unit: heartbeat seq=(\d+)$", 10, since=unit.last_offset)
        seq0 = int(m.group(1))
        time.sleep(0.2)  # its PUBACK is back; the next heartbeat is 0.8 s away
        self.reset()
        unit.wait_log(rf"INFO unit: heartbeat seq={seq0 + self.heartbeats}$", self.heartbeats * 2 + 10)
        time.sleep(0.2)
        self.read("heartbeat", self.heartbeats)

        # suspend: desired suspended in, ack out, dormant, DISCONNECT
        since = unit.mark()
        self.reset()
        bal = cloud.account(account_id)["balance_cents"]
        cloud.charge(account_id, bal, reason="bench")
        unit.wait_log(r"INFO unit: dormant mode=suspended", 20, since=since)
        time.sleep(0.3)
        self.read("active → suspended transition", 1)

        # (c) check-ins: connect, subscribe, retained desired, heartbeat, DISCONNECT
        since = unit.mark()
        self.reset()
        off = since
        for _ in range(self.checkins):
            unit.wait_log(r"INFO unit: checkin done", 15, since=off)
            off = unit.last_offset
        time.sleep(0.3)  # the teardown; the next check-in is ≥ 2 s away
        m = self.read("check-in", self.checkins)
        if m.stats.connections != self.checkins:
            self.console.print(f"[yellow]note: {m.stats.connections} connections for {self.checkins} check-ins")

    # --- report ------------------------------------------------------------------------------

    def report(self) -> None:
        c = self.console
        have_seg = all(m.seg is not None for r in self.by_broker.values() for m in r.values())
        t = Table(title=f"measured through the proxy (device_id {DEVICE_ID!r}; per event = counter / n)")
        for col in ("broker", "what", "n", "up B", "down B", "MQTT B", "chunks up+down"):
            t.add_column(col, justify="left" if col in ("broker", "what") else "right")
        if have_seg:
            t.add_column("lo segments (data+bare+SYN/FIN)", justify="right")
            t.add_column("lo IP B", justify="right")
        for broker, results in self.by_broker.items():
            for m in results.values():
                row = [broker, m.what, str(m.n), f"{m.per('bytes_up'):.1f}", f"{m.per('bytes_down'):.1f}",
                       f"{m.mqtt:.1f}", f"{m.per('chunks_up'):.1f}+{m.per('chunks_down'):.1f}"]
                if have_seg and m.seg is not None:
                    sg = m.seg
                    row += [f"{sg.total / m.n:.1f} ({sg.data / m.n:.1f}+{sg.bare / m.n:.1f}+{sg.ctl / m.n:.1f})",
                            f"{sg.ip_bytes / m.n:.0f}"]
                t.add_row(*row)
        c.print(t)
        if not have_seg:
            c.print("(no AF_PACKET capture: not root — segment counts below are the model only)")

        # TCP/IP model: 40 B per segment; data segments = proxy chunks; one bare ACK closes each
        # request/response exchange (the reply carries the ACK of the request, the last segment
        # is ACKed alone after the delayed-ACK timer); 3+4 segments per connection open/close.
        hb_per_day = DAY / HB_S
        pings_per_day = 0 if KEEPALIVE_S > HB_S else DAY / KEEPALIVE_S
        mean_checkin = sum(CHECKIN_SUSPENDED_S) / 2
        checkins_per_day = DAY / mean_checkin

        t2 = Table(title="per message: MQTT bytes (= TCP payload) and wire bytes (model: + 40 B per segment)")
        for col in ("message", "MQTT B", "segments (model)", "wire B (model)", "lo capture: segments / IP B"):
            t2.add_column(col, justify="left" if col == "message" else "right")
        t3 = Table(title="per day at the default intervals (steady state, no reconnects); MB = 10^6 B")
        for col in ("", "messages / day", "MQTT B / day", "wire B / day (model)", "MB / month (30 d)",
                    "lo capture B / day"):
            t3.add_column(col, justify="right" if col else "left")

        def mb_month(per_day: float) -> str:
            return f"{per_day * MONTH_DAYS / 1e6:.2f}"

        def lo(m: Measured, extra: str = "") -> str:
            return f"{m.seg.total / m.n:.1f} / {m.seg.ip_bytes / m.n:.0f}{extra}" if m.seg else "-"

        a_wire = 0.0
        for broker, r in self.by_broker.items():
            hb, ci, rc = r["heartbeat"], r["check-in"], r["reconnect (incl. 1 hb)"]
            setup_mqtt = rc.mqtt - hb.mqtt
            setup_segs = rc.chunks - hb.chunks + 1 + TCP_OPEN
            hb_segs = hb.chunks + 1
            ci_segs = ci.chunks + 1 + TCP_OPEN + TCP_CLOSE
            hb_wire = hb.mqtt + HDR * hb_segs
            ci_wire = ci.mqtt + HDR * ci_segs
            setup_wire = setup_mqtt + HDR * setup_segs
            t2.add_row(f"{broker}: heartbeat: PUBLISH QoS1 + PUBACK", f"{hb.mqtt:.0f}", f"{hb_segs:.0f}",
                       f"{hb_wire:.0f}", lo(hb))
            t2.add_row(f"{broker}: session setup after a reconnect", f"{setup_mqtt:.0f}", f"{setup_segs:.0f}",
                       f"{setup_wire:.0f}", lo(rc, " (incl. 1 hb + old conn.)"))
            t2.add_row(f"{broker}: suspended check-in (whole TCP connection)", f"{ci.mqtt:.0f}", f"{ci_segs:.0f}",
                       f"{ci_wire:.0f}", lo(ci))
            a_wire = hb_per_day * hb_wire
            s_wire = checkins_per_day * ci_wire
            t3.add_row(f"simsock ACTIVE, {broker} (hb {HB_S} s, keepalive {KEEPALIVE_S} s: {pings_per_day:.0f} pings)",
                       f"{hb_per_day:.0f} hb", f"{hb_per_day * hb.mqtt:,.0f}", f"{a_wire:,.0f}", mb_month(a_wire),
                       f"{hb_per_day * hb.seg.ip_bytes / hb.n:,.0f}" if hb.seg else "-")
            t3.add_row(f"simsock SUSPENDED, {broker} (check-in 10–60 min, mean {mean_checkin / 60:.0f} min)",
                       f"{checkins_per_day:.1f} check-ins", f"{checkins_per_day * ci.mqtt:,.0f}", f"{s_wire:,.0f}",
                       mb_month(s_wire), f"{checkins_per_day * ci.seg.ip_bytes / ci.n:,.0f}" if ci.seg else "-")

        # Tasmota, same model: QoS 0 publishes are ACKed by one bare TCP ACK (the pair goes out back
        # to back); PINGREQ -> PINGRESP -> bare ACK every keepalive (PubSubClient pings when nothing
        # came IN for keepalive seconds, and QoS 0 telemetry brings nothing in).
        t_tele_mqtt = publish_size(TASMOTA_TOPIC_STATE, TASMOTA_STATE_B, 0) + publish_size(
            TASMOTA_TOPIC_SENSOR, TASMOTA_SENSOR_B, 0)
        t_tele_wire = t_tele_mqtt + HDR * (2 + 1)
        t_ping_mqtt = 2 + 2
        t_ping_wire = t_ping_mqtt + HDR * 3
        t_tele_per_day = DAY / TASMOTA_TELE_S
        t_pings_per_day = DAY / TASMOTA_KEEPALIVE_S
        tz_wire = t_tele_per_day * t_tele_wire + t_pings_per_day * t_ping_wire
        t2.add_row(f"Tasmota STATE ({TASMOTA_STATE_B} B) + SENSOR ({TASMOTA_SENSOR_B} B, assumed), QoS 0",
                   f"{t_tele_mqtt}", "3", f"{t_tele_wire}", "-")
        t2.add_row("Tasmota PINGREQ + PINGRESP", f"{t_ping_mqtt}", "3", f"{t_ping_wire}", "-")
        t3.add_row(f"Tasmota defaults (TelePeriod {TASMOTA_TELE_S} s, keepalive {TASMOTA_KEEPALIVE_S} s)",
                   f"{t_tele_per_day:.0f} tele + {t_pings_per_day:.0f} pings",
                   f"{t_tele_per_day * t_tele_mqtt + t_pings_per_day * t_ping_mqtt:,.0f}", f"{tz_wire:,.0f}",
                   mb_month(tz_wire), "-")
        t3.add_row("  of which Tasmota pings", f"{t_pings_per_day:.0f}", f"{t_pings_per_day * t_ping_mqtt:,.0f}",
                   f"{t_pings_per_day * t_ping_wire:,.0f}", mb_month(t_pings_per_day * t_ping_wire), "-")
        c.print(t2)
        c.print(t3)
        c.print(f"Tasmota / simsock ACTIVE, wire bytes per day (model): {tz_wire / a_wire:.1f}×")

        js = short_json_heartbeat(self.free_heap or 2_000_000)
        topic = f"simsock/v1/{DEVICE_ID}/hb"
        t4 = Table(title="heartbeat payload: binary vs short-key JSON (same fields)")
        for col in ("encoding", "payload B", "PUBLISH QoS1 B", "MQTT B / day (+PUBACK)"):
            t4.add_column(col, justify="left" if col == "encoding" else "right")
        for name, n in (("binary >BIBBBIBIBhbI (protocol v1)", 25), ("short-key JSON, compact", len(js))):
            size = publish_size(topic, n, 1)
            t4.add_row(name, str(n), str(size), f"{hb_per_day * (size + 4):,.0f}")
        c.print(t4)
        c.print(f"JSON used ({len(js)} B, values of a unit up 30 days): {js.decode()}")
        for w in self.workdirs:
            c.print(f"unit files and console.log in {w}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heartbeats", type=int, default=30)
    ap.add_argument("--checkins", type=int, default=10)
    ap.add_argument("--broker", choices=("embedded", "mosquitto", "both"), default="both",
                    help="both = embedded and Mosquitto (Mosquitto skipped if not installed)")
    args = ap.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=150)
    brokers = ["embedded", "mosquitto"] if args.broker == "both" else [args.broker]
    if args.broker == "both" and not MosquittoBroker.available():
        console.print("[yellow]mosquitto not installed: embedded broker only")
        brokers = ["embedded"]
    b = Bench(console, args.heartbeats, args.checkins)
    for broker in brokers:
        b.run(broker)
    b.report()
    footer(console)


if __name__ == "__main__":
    main()
