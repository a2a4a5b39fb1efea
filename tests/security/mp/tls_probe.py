# MicroPython side of tests/security/test_tls.py: the firmware's MQTT client, one connect,
# one QoS 1 publish, a clean disconnect, with figures.
#   micropython tls_probe.py <plain|tls> <host> <port> <user> <password> [<ca.der> <server_name>]
# Prints "STEP connected" and "STEP published" and then waits for a line on stdin (the test
# reads the proxy's byte counters meanwhile), then "RESULT key=value ..." or "RESULT error=<type>".
# Heap: `gc.mem_alloc()` deltas (MicroPython's heap). The unix port's mbedTLS allocates
# with libc's calloc instead (bare-metal ports put it on the GC heap, the ESP32 in the
# IDF heap): run under LD_PRELOAD=malloc_inuse.so and the c_* figures are libc's bytes in use.
import asyncio
import gc
import os
import sys
import time

from mqtt.client import MQTTClient, tls_context

mode, host, port, user, password = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]


def log(level, msg):
    print(f"LOG {level} {msg}")


def alloc():
    gc.collect()
    return gc.mem_alloc()


def c_heap():
    v = os.getenv("SIMSOCK_MALLOC_INUSE")
    return int(v) if v else 0


def step(what):
    print("STEP " + what)
    sys.stdin.readline()  # blocks the loop on purpose: nothing moves while the test reads the counters


async def main():
    ctx = None
    a0, c0 = alloc(), c_heap()
    if mode == "tls":
        with open(sys.argv[6], "rb") as f:
            ctx = tls_context(f.read())
    a_ctx, c_ctx = alloc(), c_heap()
    c = MQTTClient(user, host, port, user=user, password=password, keepalive=30, clean_session=True,
                   connect_timeout=5, log=log, ssl=ctx, server_hostname=sys.argv[7] if mode == "tls" else None)
    a1 = alloc()
    t = time.ticks_us()
    try:
        await c.connect()
    except Exception as e:  # reported to the test
        print(f"RESULT error={type(e).__name__}")
        return
    dt = time.ticks_diff(time.ticks_us(), t)
    a2, c2 = alloc(), c_heap()
    step("connected")
    pid = await c.publish(f"simsock/v1/{user}/hb", b"x" * 20, qos=1)
    ok = await c.wait_acked(pid, 3000)
    step("published")
    await c.disconnect()
    a4, c4 = alloc(), c_heap()
    print(f"RESULT connect_us={dt} ctx={a_ctx - a0} conn={a2 - a1} after_close={a4 - a1} c_ctx={c_ctx - c0} "
          f"c_conn={c2 - c_ctx} c_after_close={c4 - c_ctx} acked={int(ok)}")


asyncio.run(main())
