"""The factory bench: register (and, later, flash and verify) units over their serial ports. docs/bench.md."""
