"""Asyncio MQTT 3.1.1 client fit for a cellular link (MicroPython).

Contract: docs/firmware.md, "The MQTT client". In short:

- one reader task and one watchdog task per connection; every write goes
  through one lock and is bounded by a drain timeout;
- the watchdog sends PINGREQ after `keepalive` s without sending, and drops the
  link when a PUBACK / SUBACK / PINGRESP is `ack_timeout` s late (half-open link);
- QoS 1 publishes stay in `_inflight` until PUBACK and are resent (DUP when they
  had been sent before) on every (re)connect; at most `max_inflight` of them;
- inbound packets longer than `max_packet` (remaining length) are read off the
  socket in small chunks and dropped (QoS 1 ones still PUBACKed);
- `run()` reconnects with exponential backoff and full jitter;
- with `ssl` (an `ssl.SSLContext` that verifies: CERT_REQUIRED and the CA loaded) the
  connection is TLS: the TCP connect as for plain MQTT, then the socket is wrapped
  (`server_hostname` for SNI and the name check, default `host`) and the handshake
  runs non-blocking inside the CONNECT write/CONNACK read, bounded by `connect_timeout`.
  A broker whose certificate does not verify raises TLSError (an OSError: run() backs
  off and retries like after any link failure). Without `ssl`, nothing changes.

No module-level mutable state: several clients can share one interpreter.
"""

import asyncio
import time
from random import getrandbits

from . import packet as pk

_RC_TEXT = (
    "accepted",
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)
_STABLE_MS = 60_000  # a connection that stayed up this long resets the backoff
_OBUF = 256  # outgoing PUBLISH assembly buffer (heartbeats and acks fit; bigger ones go in parts)
_ENOTCONN = 107
_ETIMEDOUT = 110


class MQTTError(Exception):
    """A refusal by the broker: `code` is the CONNACK return code (or 0x80 for a SUBACK failure)."""

    def __init__(self, code, msg=None):
        if msg is None:
            msg = _RC_TEXT[code] if 0 <= code < len(_RC_TEXT) else "refused"
        super().__init__(code, msg)
        self.code = code


class TLSError(OSError):
    """The TLS handshake failed: the broker's certificate does not chain to the unit's CA,
    does not name the broker, or the TLS layer gave up. args: (message,)."""


class MQTTClient:
    def __init__(
        self,
        client_id,
        host,
        port=1883,
        user=None,
        password=None,
        keepalive=600,
        clean_session=False,
        ack_timeout=20,
        max_packet=1024,
        max_inflight=8,
        backoff_min=2,
        backoff_max=600,
        connect_timeout=20,
        log=None,
        ssl=None,
        server_hostname=None,
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.max_packet = max_packet
        self.max_inflight = max(1, max_inflight)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._ka_ms = int(keepalive * 1000)
        self._ack_ms = max(1, int(ack_timeout * 1000))
        self._cto_ms = max(1, int(connect_timeout * 1000))
        self._log = log
        self._ssl = ssl
        self.server_hostname = server_hostname or host
        self.on_message = None
        self.on_connect = None
        self.on_disconnect = None
        self._will = None
        self._r = None
        self._w = None
        self._gen = 0  # connection generation: stale tasks notice they are stale
        self._connected = False
        self._stop = False
        self._wlock = asyncio.Lock()  # held only while a drain is in progress
        self._up = asyncio.Event()  # set while connected (after re-subscribe)
        self._down = asyncio.Event()  # set when a connection drops or on stop
        self._pulse = asyncio.Event()  # pulsed on every ack and on drop
        self._inflight = []  # [pid, topic bytes, payload bytes, retain, sent before]
        self._subs = []  # [topic, qos], renewed on every connect
        self._subacks = {}  # pid -> return codes, until the subscriber picks them up
        self._pid = 0
        # one PUBLISH is assembled here and written at once: one TCP segment, no allocation
        self._obuf = bytearray(_OBUF)
        self._obuf_mv = memoryview(self._obuf)
        self._chunk = bytearray(128)  # for discarding oversize packets
        self._tasks = []
        self._last_tx = 0
        self._wait_t = 0  # start of the current wait for a reply
        self._await_n = 0  # replies owed by the broker on this connection
        self._ping_out = False
        self.attempt = 0  # consecutive failed connects (drives the backoff)

    # -- public API ----------------------------------------------------------------

    def set_will(self, topic, payload, qos=1, retain=True):
        self._will = (topic, payload, qos, retain)

    @property
    def is_connected(self):
        return self._connected

    async def connect(self):
        """One attempt. Raises OSError (incl. timeouts) or MQTTError (refused).

        Resends the in-flight QoS 1 publishes and renews the subscriptions before
        it returns; returns the broker's session_present flag."""
        if self._connected:
            return True
        self._drop_socket()
        self._gen += 1
        gen = self._gen
        tls = self._ssl is not None
        self._lg("info", "connecting to %s:%d%s" % (self.host, self.port, " (TLS)" if tls else ""))
        try:
            r, w = await asyncio.wait_for_ms(asyncio.open_connection(self.host, self.port), self._cto_ms)
        except asyncio.TimeoutError:
            raise OSError(_ETIMEDOUT, "connect timeout")
        _no_delay(w)  # on the TCP socket: an SSLSocket has no setsockopt
        if self._ssl is not None:
            self._wrap_tls(w, self._ssl)
        self._r, self._w = r, w
        try:
            w.write(
                pk.connect(
                    self.client_id, -(-self._ka_ms // 1000), self.clean_session, self._will, self.user, self.password
                )
            )
            await asyncio.wait_for_ms(w.drain(), self._cto_ms)
            ack = await asyncio.wait_for_ms(r.readexactly(4), self._cto_ms)
        except asyncio.TimeoutError:
            self._drop_socket()
            raise OSError(_ETIMEDOUT, "no CONNACK")
        except EOFError:
            self._drop_socket()
            raise OSError(_ENOTCONN, "closed by broker")
        except (ValueError, OSError) as e:
            self._drop_socket()
            if tls and (isinstance(e, ValueError) or _mbedtls_code(e)):
                raise self._tls_error(e)
            raise
        except BaseException:
            self._drop_socket()
            raise
        if gen != self._gen:  # close() while connecting
            raise OSError(_ENOTCONN, "closed")
        if ack[0] != pk.CONNACK or ack[1] != 2:
            self._drop_socket()
            raise OSError(_ENOTCONN, "not a CONNACK")
        session_present, code = pk.parse_connack(ack[2:])
        if code:
            self._drop_socket()
            err = MQTTError(code)
            self._lg("error", "connection refused: %d %s" % (code, err.args[1]))
            raise err
        now = time.ticks_ms()
        self._connected = True
        self._down.clear()
        self._last_tx = now
        self._wait_t = now
        self._await_n = 0
        self._ping_out = False
        self._subacks = {}
        self._tasks = [asyncio.create_task(self._rx_loop(gen)), asyncio.create_task(self._watchdog(gen))]
        self._lg("info", "connected (session_present=%d)" % session_present)
        for e in list(self._inflight):  # resend before anything new
            if gen != self._gen or e not in self._inflight:
                continue
            try:
                await self._send_entry(e)
            except OSError:
                break
        if self._subs and gen == self._gen:
            try:
                await self._subscribe(self._subs)
            except MQTTError:
                pass  # logged; a refused filter is forgotten
        if gen != self._gen or not self._connected:
            raise OSError(_ENOTCONN, "lost during session setup")
        self._up.set()
        if self.on_connect:
            try:
                self.on_connect(session_present)
            except Exception as e:
                self._lg("error", "on_connect: %r" % (e,))
        return session_present

    async def run(self):
        """Stay connected until close()/disconnect(): reconnect with backoff + full jitter."""
        self._stop = False
        while not self._stop:
            if not self._connected:
                try:
                    await self.connect()
                except Exception as e:  # OSError, MQTTError; anything else must not end run() either
                    if self._stop:
                        break
                    self._lg("warning" if isinstance(e, (OSError, MQTTError)) else "error", "connect failed: %r" % (e,))
                    await self._backoff()
                    continue
            up = time.ticks_ms()
            await self._down.wait()
            if self._stop:
                break
            if time.ticks_diff(time.ticks_ms(), up) >= _STABLE_MS:
                self.attempt = 0
            await self._backoff()
        self._lg("info", "run() ends")

    async def wait_connected(self, timeout_ms=None):
        if self._connected:
            return True
        if timeout_ms is None:
            await self._up.wait()
            return True
        try:
            await asyncio.wait_for_ms(self._up.wait(), timeout_ms)
        except asyncio.TimeoutError:
            pass
        return self._connected

    async def subscribe(self, topic, qos=1):
        """Remember `topic` (renewed on every reconnect); when connected, wait for
        its SUBACK. Returns the granted QoS, or None when not (or no longer)
        connected — the subscription is then made on the next connect.
        Raises MQTTError(0x80) when the broker refuses the filter."""
        for s in self._subs:
            if s[0] == topic:
                s[1] = qos
                break
        else:
            self._subs.append([topic, qos])
        if not self._connected:
            return None
        try:
            codes = await self._subscribe(((topic, qos),))
        except OSError:
            return None
        return codes[0] if codes else None

    async def publish(self, topic, payload, qos=0, retain=False):
        """QoS 0: sent now if connected, else dropped; returns 0.
        QoS 1: waits for room (max_inflight), returns the packet id; the message
        is held until PUBACK and resent after every reconnect. A bytearray or
        memoryview payload is copied (the caller may reuse its buffer)."""
        if isinstance(topic, str):
            topic = topic.encode()
        if isinstance(payload, str):
            payload = payload.encode()
        if qos == 0:
            if self._connected:
                try:
                    if self._wlock.locked():
                        await self._send_pub(topic, payload, 0, retain, False, 0)
                    elif self._emit_pub(topic, payload, 0, retain, False, 0):
                        async with self._wlock:
                            await self._drain_locked()
                except OSError:
                    pass
            return 0
        if qos != 1:
            raise ValueError("QoS 0 or 1")
        while len(self._inflight) >= self.max_inflight:
            await self._pulse.wait()
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        pid = self._next_pid()
        e = [pid, topic, payload, retain, False]
        self._inflight.append(e)
        if self._connected:
            try:
                if self._wlock.locked():
                    await self._send_entry(e)
                else:  # fast path, no coroutine below this one
                    e[4] = True
                    self._expect()
                    if self._emit_pub(topic, payload, 1, retain, False, pid):
                        async with self._wlock:
                            await self._drain_locked()
            except OSError:
                pass  # resent after reconnect
        return pid

    async def wait_acked(self, pid, timeout_ms):
        """True once the QoS 1 publish `pid` has been PUBACKed (True at once for 0)."""
        t0 = time.ticks_ms()
        while self._is_inflight(pid):
            left = timeout_ms - time.ticks_diff(time.ticks_ms(), t0)
            if left <= 0:
                return False
            try:
                await asyncio.wait_for_ms(self._pulse.wait(), left)
            except asyncio.TimeoutError:
                pass
        return True

    async def unsubscribe(self, topic):
        """Forget `topic`; when connected, send UNSUBSCRIBE (does not wait for UNSUBACK)."""
        self._subs = [s for s in self._subs if s[0] != topic]
        if self._connected:
            try:
                await self._send(pk.unsubscribe(self._next_pid(), (topic,)))
            except OSError:
                pass

    async def disconnect(self):
        """Clean end: DISCONNECT (the broker drops the will), close; run() returns."""
        self._stop = True
        if self._connected:
            try:
                await self._send(pk.DISCONNECT_PKT)
            except OSError:
                pass
        self._drop("disconnect")
        self._down.set()
        self._pulse.set()
        self._pulse.clear()

    def close(self):
        """Drop the socket without DISCONNECT (the broker publishes the will); run() returns."""
        self._stop = True
        self._drop("close")
        self._down.set()
        self._pulse.set()
        self._pulse.clear()

    # -- internals -----------------------------------------------------------------

    def _lg(self, level, msg):
        if self._log:
            try:
                self._log(level, msg)
            except Exception:
                pass

    def _wrap_tls(self, w, ctx):
        """Put TLS under the stream `w` (MicroPython: one Stream object is reader and writer,
        over `w.s`); the handshake runs at the first write and the reads after it."""
        sock = w.s
        try:
            ss = ctx.wrap_socket(sock, server_hostname=self.server_hostname, do_handshake_on_connect=False)
            ss.setblocking(False)
        except Exception as e:
            try:
                sock.close()
            except Exception:
                pass
            raise self._tls_error(e, "setup")
        w.s = ss

    def _tls_error(self, e, what="handshake"):
        # mbedTLS: certificate problems come as ValueError("\n<text>\n"), the rest as
        # OSError(-code[, text])
        a = e.args
        if isinstance(e, OSError) and a and type(a[0]) is int:
            msg = "%s (-0x%04x)" % (a[1] if len(a) > 1 else "error", -a[0])
        else:
            msg = " ".join(str(x).strip() for x in a) or type(e).__name__
        self._lg("error", "TLS %s with %s failed: %s" % (what, self.server_hostname, msg))
        return TLSError(msg)

    def _next_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            if not self._is_inflight(self._pid) and self._pid not in self._subacks:
                return self._pid

    def _is_inflight(self, pid):
        for e in self._inflight:
            if e[0] == pid:
                return True
        return False

    async def _backoff(self):
        cap = min(self.backoff_max, self.backoff_min * (1 << min(self.attempt, 24)))
        delay = int(cap * 1000 * getrandbits(16) / 65536)
        self._lg("info", "reconnect in %d ms (attempt %d, cap %d ms)" % (delay, self.attempt, int(cap * 1000)))
        self.attempt += 1
        if self._stop:
            return
        self._down.clear()
        try:  # close() / disconnect() set _down: stop waiting at once
            await asyncio.wait_for_ms(self._down.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def _drop_socket(self):
        w = self._w
        self._r = self._w = None
        if w is not None:
            try:
                w.close()
            except Exception:
                pass
            try:  # MicroPython's Stream.close() leaves the socket to wait_closed(): close it now
                sock = getattr(w, "s", None)
                if sock is not None:
                    sock.close()
            except Exception:
                pass

    def _drop(self, why):
        """Tear the current connection down (idempotent). In-flight QoS 1 stays."""
        was = self._connected
        self._connected = False
        self._gen += 1
        try:
            me = asyncio.current_task()
        except Exception:  # called outside the event loop
            me = None
        for t in self._tasks:
            if t is not me:
                t.cancel()
        self._tasks = []
        self._drop_socket()
        self._up.clear()
        if was:
            self._lg("info" if why in ("disconnect", "close") else "warning", "connection lost: %s" % why)
            self._down.set()
            self._pulse.set()
            self._pulse.clear()
            if self.on_disconnect:
                try:
                    self.on_disconnect()
                except Exception as e:
                    self._lg("error", "on_disconnect: %r" % (e,))

    def _expect(self):
        if self._await_n == 0:
            self._wait_t = time.ticks_ms()
        self._await_n += 1

    def _replied(self):
        if self._await_n > 0:
            self._await_n -= 1
        self._wait_t = time.ticks_ms()

    # Writes. MicroPython's Stream.write() sends at once what the socket takes and keeps
    # the rest in `out_buf` for drain(). So a packet is written synchronously (no await
    # between filling the shared buffer and writing it); only when bytes are left over do
    # we drain, bounded by ack_timeout and under `_wlock`. Nobody writes while a drain is
    # in progress (drain() would lose bytes appended meanwhile): they queue on the lock.

    def _writer(self):
        w = self._w
        if not self._connected or w is None:
            raise OSError(_ENOTCONN, "not connected")
        return w

    def _left_over(self, w):
        if getattr(w, "out_buf", b"?"):  # unknown stream type: always drain
            return True
        self._last_tx = time.ticks_ms()
        return False

    def _emit(self, buf):
        """Write one packet now; True when drain() is needed. OSError drops the link."""
        w = self._writer()
        try:
            w.write(buf)
        except OSError as e:
            self._drop("write: %r" % (e,))
            raise
        return self._left_over(w)

    def _emit_pub(self, topic, payload, qos, retain, dup, pid):
        w = self._writer()
        try:
            self._put_pub(w, topic, payload, qos, retain, dup, pid)
        except OSError as e:
            self._drop("write: %r" % (e,))
            raise
        return self._left_over(w)

    async def _drain_locked(self):
        w = self._writer()
        try:
            await asyncio.wait_for_ms(w.drain(), self._ack_ms)
        except asyncio.TimeoutError:
            self._drop("write timeout")
            raise OSError(_ETIMEDOUT, "write timeout")
        except OSError as e:
            self._drop("write: %r" % (e,))
            raise
        self._last_tx = time.ticks_ms()

    async def _send(self, buf):
        if self._wlock.locked():  # a drain is in progress: queue behind it
            async with self._wlock:
                if self._emit(buf):
                    await self._drain_locked()
        elif self._emit(buf):
            async with self._wlock:
                await self._drain_locked()

    async def _send_pub(self, topic, payload, qos, retain, dup, pid):
        if self._wlock.locked():
            async with self._wlock:
                if self._emit_pub(topic, payload, qos, retain, dup, pid):
                    await self._drain_locked()
        elif self._emit_pub(topic, payload, qos, retain, dup, pid):
            async with self._wlock:
                await self._drain_locked()

    def _put_pub(self, w, topic, payload, qos, retain, dup, pid):
        """Assemble a PUBLISH in the preallocated buffer and write it (synchronous)."""
        ob = self._obuf
        tl = len(topic)
        pl = len(payload)
        n = pk.publish_header(ob, tl, pl, qos, retain, dup)
        if n + tl + 2 + pl > _OBUF:  # too big for one buffer: header (+topic) then the rest
            if n + tl + 2 > _OBUF:
                w.write(self._obuf_mv[:n])
                w.write(topic)
                n = 0
            else:
                ob[n : n + tl] = topic
                n += tl
            if qos:
                ob[n] = pid >> 8
                ob[n + 1] = pid & 0xFF
                n += 2
            w.write(self._obuf_mv[:n])
            w.write(payload)
            return
        ob[n : n + tl] = topic
        n += tl
        if qos:
            ob[n] = pid >> 8
            ob[n + 1] = pid & 0xFF
            n += 2
        ob[n : n + pl] = payload
        w.write(self._obuf_mv[: n + pl])

    async def _send_entry(self, e):
        dup = e[4]
        e[4] = True
        if dup:
            self._lg("debug", "resend pid %d (dup)" % e[0])
        self._expect()
        await self._send_pub(e[1], e[2], 1, e[3], dup, e[0])

    async def _subscribe(self, subs):
        pid = self._next_pid()
        self._subacks[pid] = None
        try:
            self._expect()
            await self._send(pk.subscribe(pid, subs))
            gen = self._gen
            while self._subacks.get(pid) is None:
                if gen != self._gen or not self._connected:
                    raise OSError(_ENOTCONN, "lost before SUBACK")
                await self._pulse.wait()
            codes = self._subacks[pid]
        finally:
            self._subacks.pop(pid, None)
        for i, c in enumerate(codes):
            if c == 0x80 and i < len(subs):
                t = subs[i][0]
                self._lg("error", "subscribe refused: %s" % t)
                self._subs = [s for s in self._subs if s[0] != t]
                if len(subs) == 1:
                    raise MQTTError(0x80, "subscribe refused")
        self._lg("info", "subscribed %s" % ",".join(s[0] for s in subs))
        return codes

    async def _watchdog(self, gen):
        tick = min(1000, max(20, self._ack_ms // 4))
        if self._ka_ms:
            tick = min(tick, max(20, self._ka_ms // 4))
        while gen == self._gen:
            now = time.ticks_ms()
            if self._await_n and time.ticks_diff(now, self._wait_t) >= self._ack_ms:
                self._drop("no reply within %d ms (half-open link)" % self._ack_ms)
                return
            if self._ka_ms and not self._ping_out and time.ticks_diff(now, self._last_tx) >= self._ka_ms:
                self._ping_out = True
                self._expect()
                self._lg("debug", "ping")
                try:
                    await self._send(pk.PINGREQ_PKT)
                except OSError:
                    return
            await asyncio.sleep_ms(tick)

    async def _rx_loop(self, gen):
        try:
            while gen == self._gen:
                await self._rx_one()
        except Exception as e:  # EOFError, OSError, ValueError (malformed)
            if gen == self._gen:
                self._drop("read: %r" % (e,) if not isinstance(e, EOFError) else "closed by broker")

    async def _rx_one(self):
        r = self._r
        if r is None:
            raise OSError(_ENOTCONN, "not connected")
        b = await r.readexactly(2)
        first = b[0]
        n = b[1] & 0x7F
        if b[1] & 0x80:
            shift = 7
            while True:
                d = (await r.readexactly(1))[0]
                n |= (d & 0x7F) << shift
                if not d & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ValueError("bad remaining length")
        kind = first & 0xF0
        if n > self.max_packet:
            await self._rx_oversize(r, first, n)
            return
        body = await r.readexactly(n) if n else b""
        if kind == pk.PUBLISH:
            topic, payload, qos, retain, dup, pid = pk.parse_publish(first, body)
            if self.on_message:
                try:
                    self.on_message(topic, payload, retain)
                except Exception as e:
                    self._lg("error", "on_message: %r" % (e,))
            if qos == 1:
                await self._send(pk.puback(pid))
            elif qos == 2:
                self._lg("warning", "QoS 2 publish not supported; dropped")
        elif kind == pk.PUBACK:
            pid = pk.parse_pid(body)
            for i, e in enumerate(self._inflight):
                if e[0] == pid:
                    self._inflight.pop(i)
                    self._replied()
                    break
            self._pulse.set()
            self._pulse.clear()
        elif kind == pk.SUBACK:
            pid, codes = pk.parse_suback(body)
            if pid in self._subacks:
                self._subacks[pid] = codes
            self._replied()
            self._pulse.set()
            self._pulse.clear()
        elif kind == pk.PINGRESP:
            if self._ping_out:
                self._ping_out = False
                self._replied()
            self._lg("debug", "pong")
        elif kind == pk.UNSUBACK:
            pass
        else:
            self._lg("warning", "unexpected packet 0x%02x" % first)

    async def _rx_oversize(self, r, first, n):
        """Read an oversize packet off the socket in small chunks and drop it."""
        left = n
        topic = "?"
        pid = 0
        qos = first >> 1 & 3
        if first & 0xF0 == pk.PUBLISH and n >= 2:
            b = await r.readexactly(2)
            tl = b[0] << 8 | b[1]
            left -= 2
            if tl > left:
                raise ValueError("malformed PUBLISH")
            if tl <= len(self._chunk):
                topic = (await r.readexactly(tl)).decode()
            else:
                await self._discard(r, tl)
            left -= tl
            if qos and left >= 2:
                b = await r.readexactly(2)
                pid = b[0] << 8 | b[1]
                left -= 2
        await self._discard(r, left)
        self._lg("warning", "dropped %d-byte packet 0x%02x on %s (max_packet %d)" % (n, first, topic, self.max_packet))
        if qos == 1 and pid:
            await self._send(pk.puback(pid))

    async def _discard(self, r, left):
        mv = memoryview(self._chunk)
        size = len(self._chunk)
        while left > 0:
            got = await r.readinto(mv if left >= size else mv[:left])
            if not got:
                raise EOFError
            left -= got


def tls_context(cadata):
    """A client SSLContext that verifies the broker: its certificate must chain to the CA
    `cadata` (DER or PEM bytes) and name the host asked for (server_hostname)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython's PROTOCOL_TLS_CLIENT default is CERT_NONE
    ctx.load_verify_locations(cadata=cadata)
    return ctx


def _mbedtls_code(e):
    """True for an OSError carrying an mbedTLS error (negative) rather than an errno."""
    a = e.args
    return bool(a) and type(a[0]) is int and a[0] < 0


def _no_delay(stream):
    """TCP_NODELAY: without it Nagle holds an ack behind the PUBACK before it (~40 ms per exchange,
    bench/desired_latency.py). Every packet is written whole, so small segments are not a cost."""
    sock = getattr(stream, "s", None)
    if sock is None:
        return
    try:
        sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    except (AttributeError, OSError):
        pass  # a port or link (e.g. some PPP stacks) without the option: keep Nagle
