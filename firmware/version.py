"""Firmware version, reported in the heartbeat (major, minor, patch; uint8 each)."""

VERSION = (0, 1, 0)
