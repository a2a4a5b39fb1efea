"""The simsock application: everything above the board layer."""
