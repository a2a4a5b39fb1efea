# MicroPython side of tests/firmware/test_mqtt_client.py.
#   micropython mqtt_driver.py <scenario> <host> <port> <client_id> [key=value ...]
# Prints "<ms> EV <what> ..." for events and "<ms> LOG <level> <msg>" for client log
# lines; the host test reads them line by line and drives brokers/proxies around it.
import asyncio
import gc
import sys
import time

import micropython
from mqtt.client import MQTTClient, MQTTError


def ev(*a):
    print(f"{time.ticks_ms()} EV " + " ".join(str(x) for x in a))


def log(level, msg):
    print(f"{time.ticks_ms()} LOG {level} {msg}")


def make(host, port, cid, o):
    return MQTTClient(
        cid,
        host,
        port,
        user=o.get("user"),
        password=o.get("password"),
        keepalive=float(o.get("keepalive", 5)),
        clean_session=o.get("clean", "1") == "1",
        ack_timeout=float(o.get("ack", 2)),
        max_packet=int(o.get("maxp", 1024)),
        max_inflight=int(o.get("inflight", 8)),
        backoff_min=float(o.get("bmin", 0.2)),
        backoff_max=float(o.get("bmax", 2)),
        connect_timeout=float(o.get("cto", 3)),
        log=log,
    )


def hooks(c, inbox=None):
    n = [0]

    def up(sp):
        n[0] += 1
        ev("UP", n[0], int(sp))

    def msg(t, p, r):
        ev("MSG", t, int(r), len(p), p.decode() if len(p) < 64 else "-")
        if inbox is not None:
            inbox.append(p)

    c.on_connect = up
    c.on_disconnect = lambda: ev("DOWN")
    c.on_message = msg


async def until(inbox, payload, timeout_ms=30000):
    t0 = time.ticks_ms()
    while payload not in inbox:
        if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
            ev("TIMEOUT", payload.decode())
            return False
        await asyncio.sleep_ms(20)
    return True


async def roundtrip(c, cid, o):
    inbox = []
    hooks(c, inbox)
    c.set_will(f"t/{cid}/will", b"offline", qos=1, retain=False)
    runner = asyncio.create_task(c.run())
    await c.wait_connected(5000)
    await c.subscribe(f"t/{cid}/in", qos=1)
    ev("READY")
    done = 0
    while True:
        while len(inbox) <= done:
            await asyncio.sleep_ms(10)
        p = inbox[done]
        done += 1
        if p == b"stop":
            break
        qos = 1 if p.startswith(b"q1") else 0
        pid = await c.publish(f"t/{cid}/out", b"echo:" + p, qos=qos)
        if qos:
            ev("ACKED", pid, int(await c.wait_acked(pid, 5000)))
    await asyncio.sleep_ms(int(float(o.get("idle", 0)) * 1000))  # let keepalive pings happen
    await c.disconnect()
    await runner


async def will(c, cid, o):
    hooks(c)
    c.set_will(f"w/{cid}/status", b"offline", qos=1, retain=True)
    runner = asyncio.create_task(c.run())
    await c.wait_connected(5000)
    ev("READY")
    if o.get("mode") == "close":
        await asyncio.sleep_ms(300)
        c.close()
        ev("CLOSED")
        await runner
        return
    await asyncio.sleep(float(o.get("hold", 10)))
    await c.disconnect()
    await runner


async def persist(c, cid, o):
    inbox = []
    hooks(c, inbox)
    await c.connect()
    if o.get("phase") == "1":
        await c.subscribe(f"p/{cid}", qos=1)
        ev("SUBSCRIBED")
        await c.disconnect()
        return
    n = int(o.get("n", 3))
    t0 = time.ticks_ms()
    while len(inbox) < n and time.ticks_diff(time.ticks_ms(), t0) < 5000:
        await asyncio.sleep_ms(20)
    ev("GOT", len(inbox))
    await c.disconnect()


async def restart(c, cid, o):
    inbox = []
    hooks(c, inbox)

    async def outage_publish():
        pid = await c.publish(f"r/{cid}/out", b"during-outage", qos=1, retain=True)
        ev("PUB", pid, int(c.is_connected))
        ev("ACKED", pid, int(await c.wait_acked(pid, 30000)))

    def down():
        ev("DOWN")
        tasks.append(asyncio.create_task(outage_publish()))

    tasks = []
    c.on_disconnect = down
    runner = asyncio.create_task(c.run())
    await c.wait_connected(5000)
    await c.subscribe(f"r/{cid}/in", qos=1)
    ev("READY")
    await until(inbox, b"stop", 40000)
    await c.disconnect()
    await runner


async def halfopen(c, cid, o):
    inbox = []
    hooks(c, inbox)
    runner = asyncio.create_task(c.run())
    await c.wait_connected(5000)
    await c.subscribe(f"h/{cid}/in", qos=1)
    ev("READY")
    n = int(o.get("n", 0))
    pids = []
    for i in range(n):
        pid = await c.publish(f"h/{cid}/out", f"m{i}", qos=1)
        pids.append(pid)
        ev("PUB", i, pid, len(c._inflight))
        if len(c._inflight) > c.max_inflight:
            ev("OVERFLOW", len(c._inflight))
        await asyncio.sleep_ms(int(o.get("every_ms", 200)))
    if n:
        ok = True
        for pid in pids:
            ok = ok and await c.wait_acked(pid, 20000)
        ev("ALLACKED", int(ok))
    await until(inbox, b"stop", 40000)
    await c.disconnect()
    await runner


async def oversize(c, cid, o):
    inbox = []
    hooks(c, inbox)
    runner = asyncio.create_task(c.run())
    await c.wait_connected(5000)
    await c.subscribe(f"o/{cid}/in", qos=1)
    gc.collect()
    ev("READY", gc.mem_free())
    await until(inbox, b"after", 20000)
    pid = await c.publish(f"o/{cid}/out", b"alive", qos=1)
    ev("ACKED", pid, int(await c.wait_acked(pid, 5000)))
    ev("PEAK", micropython.mem_peak())
    await c.disconnect()
    await runner


async def backoff(c, cid, o):
    hooks(c)
    try:
        await c.connect()
        ev("CONNECTED")
    except MQTTError as e:
        ev("REFUSED", e.code)
    except OSError as e:
        ev("OSERROR", e)
    t = asyncio.create_task(c.run())
    await asyncio.sleep(float(o.get("secs", 2)))
    c.close()
    await t
    ev("ATTEMPTS", c.attempt)


async def bench(c, cid, o):
    # heartbeat-like publish loop: 25-byte payload from one buffer, QoS 1, each acked
    hooks(c)
    c.on_message = None
    await c.connect()
    topic = f"simsock/v1/{cid}/hb"
    buf = bytearray(25)
    n = int(o.get("n", 200))
    for _ in range(20):  # warm up
        await c.wait_acked(await c.publish(topic, buf, qos=1), 5000)
    k = 5  # allocation per publish (+ PUBACK received + wait_acked), GC off for the count
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    for i in range(k):
        buf[1] = i & 0xFF
        await c.wait_acked(await c.publish(topic, buf, qos=1), 5000)
    a1 = gc.mem_alloc()
    gc.enable()
    ev("ALLOC_PER_PUBLISH", (a1 - a0) // k)
    gc.collect()
    live0 = gc.mem_alloc()
    for i in range(n):  # a long loop with the GC on: live heap must stay flat
        buf[1] = i & 0xFF
        await c.wait_acked(await c.publish(topic, buf, qos=1), 5000)
    gc.collect()
    ev("LIVE", live0, gc.mem_alloc(), gc.mem_free())
    ev("PEAK", micropython.mem_peak())
    await c.disconnect()


def main():
    scenario, host, port, cid = sys.argv[1:5]
    o = {}
    for kv in sys.argv[5:]:
        k, v = kv.split("=", 1)
        o[k] = v
    c = make(host, int(port), cid, o)
    asyncio.run(globals()[scenario](c, cid, o))
    ev("DONE")


main()
