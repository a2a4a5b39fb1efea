"""The Unit: boot, the permanent (active) session, the check-in loop, mains watch.

    Unit(board, store, cfg, identity, mqtt_factory, log=None)
    await unit.run()          # runs until stop() (or forever)
    unit.stop()               # clean shutdown: status 'offline', DISCONNECT, run() returns
    main()                    # the entry point: board.load() ... asyncio.run(unit.run())

`identity` is the dict of identity.json (``device_id``, ``mqtt_user``, ``mqtt_pass``,
``serial``) or None; `cfg` is a dict from app.config; `mqtt_factory(**kw)` returns
an object with the API of mqtt.client.MQTTClient (it is normally that class) and is
called with keyword arguments ``client_id, host, port, user, password, keepalive,
clean_session, ack_timeout, backoff_min, backoff_max, log``, plus ``ssl,
server_hostname`` when ``cfg["tls"]`` is on (docs/security.md, "TLS"): then the unit
verifies the broker against the CA file ``cfg["tls_ca"]`` in its storage and never
falls back to plain MQTT (a missing CA or a broker that does not verify is a failed
connect, retried with backoff, logged as ``ERROR mqtt: TLS … failed: <reason>``).

Log lines (stdout, ``<uptime ms> <LEVEL> unit: <text>``) that tests may wait for:

    INFO unit: boot fw=0.1.0 board=unix device_id=<id>
    INFO unit: state v=<v> mode=<mode> relay=<on|off>
    INFO unit: unprovisioned: waiting for registration
    INFO unit: provisioned device_id=<id>
    INFO unit: connected                         (active session, every (re)connect)
    INFO unit: disconnected
    INFO unit: heartbeat seq=<n>
    INFO unit: applied desired v=<v> mode=<mode>
    WARN unit: refused desired v=<v>: <reason>
    INFO unit: cmd id=<id> op=<op> ok
    INFO unit: refused cmd id=<id>: <reason>
    WARN unit: dropped retained cmd
    WARN unit: dropped <desired|cmd>: <reason>
    INFO unit: mains on | INFO unit: mains off
    INFO unit: dormant mode=<mode>               (left the permanent connection)
    INFO unit: next checkin in <s>s
    INFO unit: checkin connected
    INFO unit: checkin done
    WARN unit: checkin failed: <error>
    INFO unit: resuming active
    INFO unit: rebooting
    INFO unit: stopped

Blocking: `store.save` writes a few hundred bytes synchronously, only when the state
changes (desired applied, relay switched); that short pause of the event loop is
accepted. Everything else awaits.
"""

import asyncio
import gc
import random
import time

from app import commands, desired
from app.config import checkin_range
from app.heartbeat import Heartbeat
from app.log import Log
from version import VERSION

INBOX_MAX = 16
STATE_FILE = "state.json"
IDENTITY_FILE = "identity.json"
IDLE_POLL_MS = 2000
BOOT_CHECKIN_MAX_S = 30  # first check-in after a boot: random delay up to this


def default_state():
    return {"v": 0, "mode": "active", "relay": False}


def valid_identity(identity):
    if type(identity) is not dict:
        return False
    d = identity.get("device_id")
    return type(d) is str and 0 < len(d) <= 64 and "/" not in d and "+" not in d and "#" not in d


def _onoff(x):
    return "on" if x else "off"


class Unit:
    def __init__(self, board, store, cfg, identity, mqtt_factory, log=None):
        self.board = board
        self.store = store
        self.cfg = cfg
        self.factory = mqtt_factory
        self.log = log if log is not None else Log("unit")
        self.uptime = self.log.uptime
        self.hb = Heartbeat(VERSION)
        self.heap_low = gc.mem_free()  # low-water mark of free heap, sampled by the mains loop
        self.state = default_state()
        self.identity = None
        self.client = None
        self._inbox = []
        self._inbox_ev = asyncio.Event()
        self._conn_ev = asyncio.Event()
        self._hb_ev = asyncio.Event()
        self._wake = asyncio.Event()
        self._switch = False  # active <-> check-in transition requested
        self._stopping = False
        self._mains = None
        self._alert = None
        self._refused_v = 0
        self._desired_seen = False
        self._first_checkin = True
        self._topics = None
        self._tls = _TLS(store, cfg["tls_ca"]) if cfg.get("tls") else None
        if valid_identity(identity):
            self._set_identity(identity)
        self.load_state()

    # --- boot ----------------------------------------------------------------

    def _set_identity(self, identity):
        self.identity = identity
        root = "simsock/v1/%s/" % identity["device_id"]
        self._t_hb = root + "hb"
        self._t_status = root + "status"
        self._t_alert = root + "alert"
        self._t_desired = root + "desired"
        self._t_cmd = root + "cmd"
        self._t_ack = root + "ack"

    def load_state(self):
        st = self.store.load(STATE_FILE)
        state = default_state()
        if st is not None:
            if type(st) is not dict:
                self.log.warn("state.json is not an object, using defaults")
            else:
                v = st.get("v")
                if type(v) is int and 0 <= v <= 0xFFFFFFFF:
                    state["v"] = v
                else:
                    self.log.warn("state.json: bad v %r" % (v,))
                m = st.get("mode")
                if m in desired.MODES:
                    state["mode"] = m
                else:
                    self.log.warn("state.json: bad mode %r" % (m,))
                if type(st.get("relay")) is bool:
                    state["relay"] = st["relay"]
                if type(st.get("prev_relay")) is bool:
                    state["prev_relay"] = st["prev_relay"]
        self.state = state
        self.board.relay_set(state["relay"])

    def _save_state(self, state):
        # Synchronous flash write (a few hundred bytes, once per state change).
        self.store.save(STATE_FILE, state)
        self.state = state

    # --- main loop -------------------------------------------------------------

    async def run(self):
        ident = self.identity
        self.log.info(
            "boot fw=%d.%d.%d board=%s device_id=%s"
            % (VERSION[0], VERSION[1], VERSION[2], self.board.name, ident["device_id"] if ident else "-")
        )
        s = self.state
        self.log.info("state v=%d mode=%s relay=%s" % (s["v"], s["mode"], _onoff(s["relay"])))
        mains_t = asyncio.create_task(self._mains_loop())
        try:
            if self.identity is None:
                await self._wait_provisioned()
            after_boot = True
            while not self._stopping:
                if self.state["mode"] == "active":
                    await self._active()
                else:
                    await self._checkin_loop(after_boot)
                after_boot = False
        finally:
            mains_t.cancel()
        self.log.info("stopped")

    def stop(self):
        self._stopping = True
        self._wake.set()

    async def _wait_provisioned(self):
        self.log.info("unprovisioned: waiting for registration")
        while not self._stopping:
            await asyncio.sleep_ms(IDLE_POLL_MS)
            if self.store.exists(IDENTITY_FILE):
                ident = self.store.load(IDENTITY_FILE, recover=False)
                if valid_identity(ident):
                    self._set_identity(ident)
                    self.log.info("provisioned device_id=%s" % ident["device_id"])
                    return

    def _new_client(self, will):
        cfg = self.cfg
        ident = self.identity
        if ident is None:
            raise OSError("unprovisioned")
        c = self.factory(
            client_id=ident["device_id"],
            host=cfg["broker_host"],
            port=cfg["broker_port"],
            user=ident.get("mqtt_user"),
            password=ident.get("mqtt_pass"),
            keepalive=cfg["keepalive_s"],
            clean_session=False,
            ack_timeout=cfg["ack_timeout_s"],
            backoff_min=cfg["backoff_min_s"],
            backoff_max=cfg["backoff_max_s"],
            log=self.log.child("mqtt"),
            **self._tls_options(),
        )
        c.set_will(self._t_status, will, 1, True)
        c.on_message = self._on_message
        return c

    def _tls_options(self):
        if self._tls is None:
            return {}
        return {"ssl": self._tls, "server_hostname": self.cfg["tls_server_name"] or self.cfg["broker_host"]}

    def _ack_ms(self):
        return int(self.cfg["ack_timeout_s"] * 1000)

    async def _publish(self, c, topic, payload, retain=False, wait=False):
        """QoS 1 publish; True when sent (and PUBACKed if `wait`). Never raises."""
        try:
            pid = await c.publish(topic, payload, qos=1, retain=retain)
            if wait:
                return await c.wait_acked(pid, self._ack_ms())
            return True
        except Exception as e:  # noqa: BLE001 - link errors: the client reconnects
            self.log.warn("publish %s failed: %s %s" % (topic[topic.rfind("/") + 1:], type(e).__name__, e))
            return False

    # --- incoming messages -----------------------------------------------------

    def _on_message(self, topic, payload, retained):
        # Called by the client (sync, must not block): queue for the message task.
        if len(self._inbox) >= INBOX_MAX:
            self.log.warn("inbox full, dropped message on %s" % topic)
            return
        self._inbox.append((topic, payload, retained))
        self._inbox_ev.set()

    async def _drain(self, c):
        while self._inbox:
            topic, payload, retained = self._inbox.pop(0)
            try:
                if topic == self._t_desired:
                    await self._on_desired(c, payload)
                elif topic == self._t_cmd:
                    await self._on_cmd(c, payload, retained)
                else:
                    self.log.warn("message on unexpected topic %s" % topic)
            except Exception as e:  # noqa: BLE001 - a bad message never stops the unit
                self.log.exc("message on %s failed" % topic, e)

    async def _on_desired(self, c, payload):
        self._desired_seen = True
        v, mode, err = desired.parse(payload)
        if v is None:
            self.log.warn("dropped desired: %s" % err)
            return
        if not desired.is_newer(v, self.state["v"]):
            return
        if err is not None:
            if v != self._refused_v:
                self._refused_v = v
                self.log.warn("refused desired v=%d: %s" % (v, err))
                await self._publish(c, self._t_ack, commands.desired_ack_err(v, err))
            return
        old = self.state
        new = {"v": v, "mode": mode, "relay": old["relay"]}
        if "prev_relay" in old:
            new["prev_relay"] = old["prev_relay"]
        was_checkin = desired.is_checkin(old["mode"])
        now_checkin = desired.is_checkin(mode)
        if now_checkin and not was_checkin and self.cfg["relay_on_suspend"] == "off":
            new["prev_relay"] = old["relay"]
            new["relay"] = False
        elif was_checkin and not now_checkin and "prev_relay" in new:
            new["relay"] = new.pop("prev_relay")
        try:
            self._save_state(new)  # persisted BEFORE the ack: a reboot never undoes it
        except OSError as e:
            self.log.error("desired v=%d not applied: cannot persist (%s)" % (v, e))
            return
        self.board.relay_set(new["relay"])
        self.log.info("applied desired v=%d mode=%s" % (v, mode))
        await self._publish(c, self._t_ack, commands.desired_ack_ok(v, mode), wait=True)
        if was_checkin != now_checkin:
            self._switch = True
            self._wake.set()

    async def _on_cmd(self, c, payload, retained):
        if retained:
            self.log.warn("dropped retained cmd")
            return
        cmd, cid, err = commands.parse(payload)
        if cmd is not None:
            err = commands.check(cmd, self.state["mode"], self.board.clock_valid(), self.board.time())
        if err is not None:
            if cid is None:
                self.log.warn("dropped cmd: %s" % err)
                return
            self.log.info("refused cmd id=%s: %s" % (cid, err))
            await self._publish(c, self._t_ack, commands.ack_err(cid, err))
            return
        if cmd is None:
            return
        if cmd.op == "reboot":
            self.log.info("cmd id=%s op=reboot ok" % cid)
            await self._publish(c, self._t_ack, commands.ack_ok(cid, {"reboot": True}), wait=True)
            await self._shutdown(c)
            self.log.info("rebooting")
            self.board.reset()
            return
        res = commands.execute(cmd, self.board, self.status)
        if cmd.op == "relay":
            on = self.board.relay_get()
            if on != self.state["relay"]:
                new = dict(self.state)
                new["relay"] = on
                try:
                    self._save_state(new)
                except OSError as e:
                    self.log.error("relay state not persisted: %s" % e)
                    self.state = new
        self.log.info("cmd id=%s op=%s ok" % (cid, cmd.op))
        await self._publish(c, self._t_ack, commands.ack_ok(cid, res))
        if cmd.op == "relay":
            self._hb_ev.set()  # report the new relay state now, not at the next period

    def status(self):
        b = self.board
        return {
            "relay": b.relay_get(), "mains": b.mains_present(), "mode": self.state["mode"],
            "dv": self.state["v"], "up": self.uptime.s(), "temp": b.temperature_c(),
            "signal": b.signal_dbm(), "fw": "%d.%d.%d" % VERSION,
            "heap_free": gc.mem_free(), "heap_low": self.heap_low, "heap_live": live_heap(),
        }

    # --- heartbeat and mains ---------------------------------------------------

    async def _send_hb(self, c, wait=False):
        b = self.board
        buf = self.hb.pack(
            self.uptime.s(), self.state["mode"], self.state["v"], b.relay_get(),
            b.mains_present(), b.clock_valid(), b.temperature_c(), b.signal_dbm(), gc.mem_free(),
        )
        ok = await self._publish(c, self._t_hb, buf, wait=wait)
        if ok:
            self.log.info("heartbeat seq=%d" % self.hb.seq)
        return ok

    async def _hb_loop(self, c):
        period = int(self.cfg["hb_s"] * 1000)
        while True:
            try:
                await asyncio.wait_for_ms(self._hb_ev.wait(), period)
            except asyncio.TimeoutError:
                pass
            self._hb_ev.clear()
            if c.is_connected:
                await self._send_hb(c)

    async def _mains_loop(self):
        period = self.cfg["mains_poll_ms"]
        while True:
            self.uptime.ms()  # keeps the uptime clock ahead of ticks wrap-around
            free = gc.mem_free()
            if free < self.heap_low:
                self.heap_low = free
            try:
                m = self.board.mains_present()
            except Exception as e:  # noqa: BLE001 - a sensor glitch is not fatal
                self.log.exc("mains sense", e)
                m = self._mains
            if self._mains is None:
                self._mains = m
            elif m != self._mains:
                self._mains = m
                self.log.info("mains %s" % _onoff(m))
                if self.state["mode"] == "active" and self.identity is not None:
                    self._alert = b'{"t":"mains","on":%s,"up":%d}' % (
                        b"true" if m else b"false", self.uptime.s())
                    c = self.client
                    if c is not None and c.is_connected:
                        await self._send_alert(c)
            await asyncio.sleep_ms(period)

    async def _send_alert(self, c):
        a = self._alert
        if a is not None and await self._publish(c, self._t_alert, a):
            if self._alert is a:
                self._alert = None

    # --- active mode -------------------------------------------------------------

    def _on_connect(self, session_present):
        self._conn_ev.set()

    def _on_disconnect(self):
        self.log.info("disconnected")

    async def _session(self, c):
        subscribed = False
        while True:
            await self._conn_ev.wait()
            self._conn_ev.clear()
            self.log.info("connected")
            if not subscribed:
                try:
                    await c.subscribe(self._t_desired, 1)
                    await c.subscribe(self._t_cmd, 1)
                    subscribed = True
                except Exception as e:  # noqa: BLE001 - retried on the next connect
                    self.log.warn("subscribe failed: %s %s" % (type(e).__name__, e))
                    continue
            # Only now "online": the cloud may send commands the moment it sees it.
            await self._publish(c, self._t_status, b"online", retain=True)
            self._hb_ev.set()
            if self._alert is not None:
                await self._send_alert(c)

    async def _msg_loop(self, c):
        while True:
            await self._inbox_ev.wait()
            self._inbox_ev.clear()
            await self._drain(c)

    async def _runner(self, c):
        try:
            await c.run()
        except Exception as e:  # noqa: BLE001
            self.log.exc("mqtt client stopped", e)
        self._wake.set()

    async def _link_up(self):
        delay = self.cfg["backoff_min_s"]
        while True:
            try:
                await self.board.link_up()
                return
            except Exception as e:  # noqa: BLE001
                self.log.warn("link up failed: %s %s" % (type(e).__name__, e))
            await asyncio.sleep_ms(int(random.uniform(0, delay) * 1000) + 100)
            delay = min(self.cfg["backoff_max_s"], delay * 2)

    async def _active(self):
        await self._link_up()
        c = self._new_client(b"offline")
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self.client = c
        self._switch = False
        self._wake.clear()
        self._conn_ev.clear()
        self._inbox = []
        self._inbox_ev.clear()
        tasks = [
            asyncio.create_task(self._runner(c)),
            asyncio.create_task(self._session(c)),
            asyncio.create_task(self._hb_loop(c)),
            asyncio.create_task(self._msg_loop(c)),
        ]
        try:
            await self._wake.wait()
            if self._switch:
                # Left active for a check-in mode: answer what already arrived (those
                # commands are refused now), tell the cloud, then hang up.
                await self._drain(c)
                await self._publish(c, self._t_status, b"dormant", retain=True, wait=True)
                await self._disconnect(c)
                self._first_checkin = False
                self.log.info("dormant mode=%s" % self.state["mode"])
            elif self._stopping:
                await self._shutdown(c)
            else:
                c.close()  # run() died: start a fresh session
                await asyncio.sleep_ms(1000)
        finally:
            self.client = None
            for t in tasks:
                t.cancel()
            try:
                await self.board.link_down()
            except Exception as e:  # noqa: BLE001
                self.log.warn("link down failed: %s" % e)

    async def _disconnect(self, c):
        try:
            await asyncio.wait_for_ms(c.disconnect(), self._ack_ms())
        except Exception:  # noqa: BLE001 - gone anyway
            c.close()

    async def _shutdown(self, c):
        """Clean shutdown of an active connection: status 'offline', DISCONNECT."""
        if c.is_connected:
            await self._publish(c, self._t_status, b"offline", retain=True, wait=True)
        await self._disconnect(c)

    # --- check-in modes ------------------------------------------------------------

    def _interval(self):
        lo, hi = checkin_range(self.cfg, self.state["mode"])
        return random.uniform(lo, hi)

    async def _sleep_s(self, s):
        # In chunks: stop() can end it, and the uptime clock is read at least hourly.
        ms = int(s * 1000)
        while ms > 0 and not self._stopping:
            chunk = min(ms, 3600000)
            self._wake.clear()
            try:
                await asyncio.wait_for_ms(self._wake.wait(), chunk)
            except asyncio.TimeoutError:
                pass
            ms -= chunk
            self.uptime.ms()

    async def _checkin_loop(self, after_boot):
        if after_boot:
            lo = checkin_range(self.cfg, self.state["mode"])[0]
            delay = random.uniform(0, min(lo, BOOT_CHECKIN_MAX_S))
        else:
            delay = self._interval()
        while not self._stopping:
            self.log.info("next checkin in %ds" % int(delay))
            await self._sleep_s(delay)
            if self._stopping:
                return
            ok = await self._checkin()
            if self.state["mode"] == "active":
                self.log.info("resuming active")
                return
            delay = self._interval()
            if not ok:
                cfg = self.cfg
                delay = min(delay, random.uniform(cfg["backoff_min_s"], cfg["backoff_max_s"]))

    async def _checkin(self):
        cfg = self.cfg
        limit = int((cfg["checkin_wait_s"] + 4 * cfg["ack_timeout_s"] + 60) * 1000)
        c = None
        try:
            await self.board.link_up()
            c = self._new_client(b"dormant")
            return await asyncio.wait_for_ms(self._checkin_session(c), limit)
        except Exception as e:  # noqa: BLE001 - any failure: try again later
            self.log.warn("checkin failed: %s %s" % (type(e).__name__, e))
            if c is not None:
                c.close()
            return False
        finally:
            self.client = None
            try:
                await self.board.link_down()
            except Exception as e:  # noqa: BLE001
                self.log.warn("link down failed: %s" % e)

    async def _checkin_session(self, c):
        self._inbox = []
        self._inbox_ev.clear()
        self._desired_seen = False
        await c.connect()
        self.client = c
        self.log.info("checkin connected")
        if self._first_checkin:
            # After a boot the retained status may be anything (e.g. a will that
            # fired during a check-in): say 'dormant' once.
            await self._publish(c, self._t_status, b"dormant", retain=True)
        await c.subscribe(self._t_desired, 1)
        await c.subscribe(self._t_cmd, 1)
        deadline = time.ticks_add(time.ticks_ms(), int(self.cfg["checkin_wait_s"] * 1000))
        while not self._desired_seen:
            await self._drain(c)
            if self.state["mode"] == "active" or self._desired_seen:
                break
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                break
            try:
                await asyncio.wait_for_ms(self._inbox_ev.wait(), left)
            except asyncio.TimeoutError:
                pass
            self._inbox_ev.clear()
        await self._drain(c)
        self._first_checkin = False
        if self.state["mode"] == "active":
            await self._disconnect(c)
            return True
        await self._send_hb(c, wait=True)
        await self._drain(c)  # commands that arrived meanwhile get their refusal
        await self._disconnect(c)
        self.log.info("checkin done")
        return True


class _TLS:
    """The unit's TLS context, as the MQTT client uses it (wrap_socket). Made from the CA
    file at the first connect and kept (a few KB); after a failure to load it, tried again
    at the next connect (a CA written later is picked up without a reboot)."""

    def __init__(self, store, name):
        self.store = store
        self.name = name
        self.ctx = None

    def wrap_socket(self, sock, server_hostname=None, do_handshake_on_connect=True):
        if self.ctx is None:
            try:
                with open(self.store.path(self.name), "rb") as f:
                    cadata = f.read()
            except OSError as e:
                raise OSError("cannot read the CA file %s: %s" % (self.name, e))
            from mqtt.client import tls_context

            try:
                self.ctx = tls_context(cadata)
            except ValueError as e:
                raise ValueError("%s is not a CA certificate: %s" % (self.name, str(e).strip()))
        return self.ctx.wrap_socket(sock, server_hostname=server_hostname,
                                    do_handshake_on_connect=do_handshake_on_connect)


def main():
    """Entry point: board -> store -> config -> identity -> Unit.run()."""
    import board as boards
    from app import config
    from app.log import Uptime
    from app.store import Store

    log = Log("unit", Uptime())
    b = boards.load(log.child("board"))
    store = Store(b.storage_root(), log.child("store"))
    cfg = config.load(store, log.child("config"))
    b.configure(cfg["board"])
    identity = store.load(IDENTITY_FILE)
    if identity is not None and not valid_identity(identity):
        log.warn("identity.json has no valid device_id")
        identity = None
    from mqtt.client import MQTTClient

    unit = Unit(b, store, cfg, identity, MQTTClient, log)
    try:
        asyncio.run(unit.run())
    except KeyboardInterrupt:
        log.info("interrupted")
    except Exception as e:  # noqa: BLE001 - last resort: reboot rather than hang
        log.exc("crashed", e)
        b.reset()



def live_heap():
    """Bytes of heap still referenced: allocated after a full collection (a status request is rare)."""
    gc.collect()
    return gc.mem_alloc()
