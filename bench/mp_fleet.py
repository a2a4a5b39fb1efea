"""MicroPython: many firmware Units in one interpreter (bench/fleet_converge.py starts it).

    micropython -X heapsize=24M bench/mp_fleet.py <base_dir> <host> <port> <config.json> <id> [<id> …]

Each Unit is built as firmware/app/unit.py main() builds one, with its own unix board
root `<base_dir>/<id>/` (sim/hw.json, state.json): Board(log, root), Store(root),
config.merge(config.json), identity {device_id}, the firmware's MQTTClient. The firmware
keeps no module-level mutable state, so the Units share the modules and one event loop.
Starts are spread over a few seconds. Only warnings and errors are printed (plus one
"started <n>" line), with the device id in front; INFO lines would flood the pipe.
"""

import asyncio
import json
import sys

from app import config
from app.log import Log, Uptime
from app.store import Store
from app.unit import Unit
from board.unix import Board
from mqtt.client import MQTTClient


class QuietLog(Log):
    def _emit(self, level, text):
        if level in ("WARN", "ERROR"):
            print(str(self.uptime.ms()) + " " + level + " " + self.name + ": " + str(text))

    def child(self, name):
        return QuietLog(self.name + "." + name, self.uptime)


async def start(units, spread_ms):
    tasks = []
    for u in units:
        tasks.append(asyncio.create_task(u.run()))
        await asyncio.sleep_ms(spread_ms)
    print("started " + str(len(units)))
    for t in tasks:
        await t


def main():
    base, host, port, cfg_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ids = sys.argv[5:]
    with open(cfg_path) as f:
        overrides = json.load(f)
    overrides["broker_host"] = host
    overrides["broker_port"] = port
    spread_ms = overrides.pop("bench_spread_ms", 20)
    uptime = Uptime()
    units = []
    for device_id in ids:
        log = QuietLog(device_id, uptime)
        root = base + "/" + device_id
        b = Board(log.child("board"), root)
        store = Store(root, log.child("store"))
        cfg = config.merge(overrides, log.child("config"))
        units.append(Unit(b, store, cfg, {"device_id": device_id}, MQTTClient, log))
    asyncio.run(start(units, spread_ms))


main()
