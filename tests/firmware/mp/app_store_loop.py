"""Writes state in a loop with the firmware store until killed (test_store.py).

    micropython app_store_loop.py <root>

Prints ``start <i>`` with the state it found (0 when none), then ``saved <i>`` after
each save returns. The host kills it with SIGKILL at a random moment.
"""

import sys

from app.store import Store

store = Store(sys.argv[1])
st = store.load("state.json")
i = st["i"] if st else 0
print("start", i)
while True:
    i += 1
    store.save("state.json", {"i": i, "mode": "suspended" if i % 2 else "active", "pad": "x" * (i * 37 % 700)})
    print("saved", i)
