"""The board layer: the only code that knows which hardware it runs on.

Every board provides (docs/firmware.md): ``name``, ``storage_root()``,
``unique_id()``, ``modem_ids()``, ``signal_dbm()``, ``relay_get()``,
``relay_set(on)``, ``mains_present()``, ``temperature_c()``, ``clock_valid()``,
``time()``, ``async link_up()``, ``async link_down()``, ``reset()``; and
``configure(opts)`` taking the ``board`` object of config.json (may ignore it).
"""

import sys


def load(log=None):
    """The board for this platform: 'linux' -> unix (simulated), 'esp32' -> esp32."""
    if sys.platform == "esp32":
        from board.esp32 import Board
    elif sys.platform == "linux":
        from board.unix import Board
    else:
        raise OSError("no board for platform %r" % sys.platform)
    return Board(log)
