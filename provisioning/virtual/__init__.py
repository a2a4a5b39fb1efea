"""Virtual units: the real firmware on the MicroPython unix port, and the fixtures around it."""
