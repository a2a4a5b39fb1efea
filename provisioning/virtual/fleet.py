"""A fleet of virtual units under one base directory, for tests and demos.

    with Fleet(tmp_path, 5, broker_host=b.host, broker_port=b.port, config={"hb_s": 2}) as fleet:
        fleet.start_all()
        fleet.wait_all_log(r"INFO unit: online", 20)

Leaving the `with` block kills every unit's process, whether the block raised or not.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from provisioning.virtual.unit import VirtualUnit


class Fleet:
    """N virtual units `<prefix>-0001` … under `base/<device_id>/`."""

    def __init__(
        self,
        base: str | Path,
        n: int = 0,
        *,
        prefix: str = "vu",
        broker_host: str = "127.0.0.1",
        broker_port: int = 1883,
        issue_credentials: Callable[[str], tuple[str, str]] | None = None,
        **unit_kwargs: Any,
    ) -> None:
        """`issue_credentials(device_id) -> (username, password)`, e.g. `Cloud.issue_credentials`: every
        unit added gets MQTT credentials from it (unless given mqtt_user/mqtt_pass); without it a unit
        carries made-up credentials, which only an open broker accepts."""
        self.issue_credentials = issue_credentials
        self.base = Path(base)
        self.prefix = prefix
        self.broker_host = broker_host
        self.broker_port = broker_port
        self.unit_kwargs = unit_kwargs  # passed on to every VirtualUnit (config, heapsize, main, env, …)
        self.units: list[VirtualUnit] = []
        for _ in range(n):
            self.add()

    def next_id(self) -> str:
        """The device_id `add()` gives the next unit when none is named."""
        return f"{self.prefix}-{len(self.units) + 1:04d}"

    def add(self, device_id: str | None = None, **overrides: Any) -> VirtualUnit:
        """One more unit; `overrides` replace this fleet's VirtualUnit keyword arguments for it."""
        device_id = device_id or self.next_id()
        if any(u.device_id == device_id for u in self.units):
            raise ValueError(f"device_id {device_id!r} already in the fleet")
        kwargs = {"broker_host": self.broker_host, "broker_port": self.broker_port, **self.unit_kwargs, **overrides}
        if self.issue_credentials is not None and "mqtt_pass" not in kwargs:
            kwargs["mqtt_user"], kwargs["mqtt_pass"] = self.issue_credentials(device_id)
        unit = VirtualUnit(self.base / device_id, device_id, **kwargs)
        self.units.append(unit)
        return unit

    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self) -> Iterator[VirtualUnit]:
        return iter(self.units)

    def __getitem__(self, key: int | str) -> VirtualUnit:
        if isinstance(key, int):
            return self.units[key]
        for u in self.units:
            if u.device_id == key:
                return u
        raise KeyError(key)

    def provision_all(self) -> None:
        for u in self.units:
            u.provision()

    def start_all(self) -> None:
        for u in self.units:
            u.start()

    def stop_all(self, timeout: float = 3.0) -> None:
        """SIGTERM to every unit first, then wait (SIGKILL whoever outlasts `timeout`)."""
        for u in self.units:
            u._signal(signal.SIGTERM)
        for u in self.units:
            u._reap(timeout)

    def kill_all(self) -> None:
        """Power-cut every unit at once."""
        for u in self.units:
            with contextlib.suppress(Exception):
                u._signal(signal.SIGKILL)
        for u in self.units:
            with contextlib.suppress(Exception):
                u._reap(5.0)

    def running(self) -> list[VirtualUnit]:
        return [u for u in self.units if u.is_running]

    def wait_all_log(self, pattern: str, timeout: float, since: dict[str, int] | None = None) -> None:
        """Every unit's console shows `pattern` within `timeout` seconds (one deadline for all)."""
        deadline = time.monotonic() + timeout
        for u in self.units:
            u.wait_log(pattern, max(0.0, deadline - time.monotonic()), since=(since or {}).get(u.device_id))

    def marks(self) -> dict[str, int]:
        return {u.device_id: u.mark() for u in self.units}

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
