"""`python -m cloud_stub.api [PATH]`: write the OpenAPI spec (default docs/openapi.json; `-` for stdout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cloud_stub.api.app import openapi_spec

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def spec_text() -> str:
    return json.dumps(openapi_spec(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    target = argv[0] if argv else str(DEFAULT_PATH)
    if target == "-":
        sys.stdout.write(spec_text())
    else:
        Path(target).write_text(spec_text(), encoding="utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
