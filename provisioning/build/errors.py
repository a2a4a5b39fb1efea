"""The one error a build raises: its message is what the user reads."""

from __future__ import annotations


class BuildError(RuntimeError):
    pass
