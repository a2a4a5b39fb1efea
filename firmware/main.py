"""simsock firmware entry point: the board is picked by platform, then the Unit runs.

Virtual unit: SIMSOCK_ROOT=<unit dir> MICROPYPATH=<repo>/firmware micropython main.py
(setting MICROPYPATH drops the frozen modules — asyncio — from the path; put them back).
"""

import sys

if ".frozen" not in sys.path:
    sys.path.append(".frozen")

from app.unit import main  # noqa: E402

main()
