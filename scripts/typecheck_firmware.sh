#!/usr/bin/env bash
# Type-check firmware/ against the MicroPython esp32 stubs with pyright.
#
# The stubs go into .typings/ (gitignored), not into site-packages: the package puts
# binascii.pyi, socket.pyi, time.pyi ... at the top level, which would shadow CPython's
# stdlib when the host code is type-checked. firmware/pyrightconfig.json points pyright
# at .typings/ (typeshedPath for the MicroPython stdlib, stubPath for the port modules).
#
# Usage: scripts/typecheck_firmware.sh [pyright args...]   e.g. --outputjson, a file path
set -euo pipefail
cd "$(dirname "$0")/.."

STUBS_SPEC="${MICROPYTHON_STUBS_SPEC:-micropython-esp32-stubs==1.29.*}"
TYPINGS=.typings

if [ "$(cat "$TYPINGS/.spec" 2>/dev/null || true)" != "$STUBS_SPEC" ] || [ ! -f "$TYPINGS/machine.pyi" ]; then
    echo "typecheck_firmware: installing $STUBS_SPEC into $TYPINGS/" >&2
    rm -rf "$TYPINGS"
    python -m pip install --quiet --disable-pip-version-check --no-user --no-compile \
        --target "$TYPINGS" "$STUBS_SPEC"
    echo "$STUBS_SPEC" > "$TYPINGS/.spec"
fi
# an empty "virtual environment" for pyrightconfig's venv: no host site-packages in the search
mkdir -p "$TYPINGS/no-env/lib/python3.11/site-packages"

if ! python -c 'import pyright' 2>/dev/null; then
    echo "typecheck_firmware: pyright is missing: pip install -e '.[dev]'" >&2
    exit 2
fi

exec python -m pyright --project firmware/pyrightconfig.json "$@"
