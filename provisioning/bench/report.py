"""The bench report: what a bench session did, from one outcome per unit.

    outcomes = [UnitOutcome(port="/dev/ttyUSB0", serial="SK260000429", ok=True, started=t0, finished=t1,
                            steps={"flash": 41.2, "register": 1.1, "verify": 6.3}), ...]
    report = build_report(outcomes)
    write_report(report, Path("out"))    # out/report.json, out/units.csv, out/summary.csv

`UnitOutcome` is what the orchestration (`simsock bench run`) fills per unit: the port, the
serial and device id once known, PASS or not, the step that failed and why, wall-clock start
and end (Unix seconds), and the seconds each step took. The report:

- counts: units, passed, failed;
- failure reasons grouped: by failed step and the reason with what differs per unit
  (port paths, serials, device ids, numbers) masked, so "no heartbeat from sd-… within 60s"
  on twelve units is one line with 12 and their serials;
- units per hour: passed units ÷ the session's wall-clock span (first start to last end —
  with parallel ports this is the bench's throughput, not one port's), and attempted units
  per hour the same way;
- per-step durations: count, total, mean, median, p95 (nearest rank), max, and the step's
  share of all step time.

`report.json` is the whole report (summary + every unit), `units.csv` one row per unit,
`summary.csv` the summary as `section,key,value` rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class UnitOutcome:
    port: str
    ok: bool
    started: float  # Unix seconds
    finished: float
    serial: str | None = None
    device_id: str | None = None
    failed_step: str | None = None  # flash | register | verify | label | ... (None on PASS)
    reason: str | None = None
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; what `load_outcomes` / `simsock bench report --in` read back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitOutcome:
        known = {k: d[k] for k in ("port", "ok", "started", "finished", "serial", "device_id", "failed_step",
                                   "reason", "steps") if k in d}
        missing = {"port", "ok", "started", "finished"} - set(known)
        if missing:
            raise ValueError(f"a unit outcome without {', '.join(sorted(missing))}: {d!r}")
        out = cls(**known)
        out.ok = bool(out.ok)
        out.started, out.finished = float(out.started), float(out.finished)
        out.steps = {str(k): float(v) for k, v in (out.steps or {}).items()}
        return out


_MASKS = [
    (re.compile(r"\bSK\d{9}\b", re.IGNORECASE), "<serial>"),
    (re.compile(r"\bsd-[0-9a-z]{8}\b"), "<device>"),
    (re.compile(r"(?:/dev/|COM)\S+?(?=[:\s]|$)"), "<port>"),
    (re.compile(r"(?<![\w<])\d+(?:\.\d+)?"), "N"),
]


def reason_key(step: str | None, reason: str | None) -> str:
    """A failure's group: its step and its reason with the per-unit parts masked."""
    text = (reason or "no reason given").strip()
    for rx, sub in _MASKS:
        text = rx.sub(sub, text)
    text = re.sub(r"^<port>:\s*", "", text)
    text = re.sub(r"^unit <serial>:\s*", "", text)
    return f"{step or 'unknown'}: {text}"


def _pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    k = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def build_report(outcomes: Iterable[UnitOutcome]) -> dict[str, Any]:
    units = list(outcomes)
    passed = [u for u in units if u.ok]
    failed = [u for u in units if not u.ok]
    span = (max(u.finished for u in units) - min(u.started for u in units)) if units else 0.0
    hours = span / 3600

    groups: dict[str, dict[str, Any]] = {}
    for u in failed:
        g = groups.setdefault(reason_key(u.failed_step, u.reason),
                              {"step": u.failed_step or "unknown", "count": 0, "units": [], "example": u.reason})
        g["count"] += 1
        g["units"].append(u.serial or u.port)
    reasons = sorted(({"reason": k, **v} for k, v in groups.items()), key=lambda g: (-g["count"], g["reason"]))

    per_step: dict[str, list[float]] = {}
    for u in units:
        for step, secs in u.steps.items():
            per_step.setdefault(step, []).append(secs)
    all_step_time = sum(sum(v) for v in per_step.values())
    steps = {}
    for step, values in per_step.items():
        vs = sorted(values)
        steps[step] = {"count": len(vs), "total_s": round(sum(vs), 3), "mean_s": round(sum(vs) / len(vs), 3),
                       "median_s": round((vs[(len(vs) - 1) // 2] + vs[len(vs) // 2]) / 2, 3),
                       "p95_s": round(_pct(vs, 95), 3), "max_s": round(vs[-1], 3),
                       "share": round(sum(vs) / all_step_time, 4) if all_step_time else 0.0}

    return {
        "summary": {
            "units": len(units), "passed": len(passed), "failed": len(failed),
            "pass_rate": round(len(passed) / len(units), 4) if units else 0.0,
            "span_s": round(span, 3),
            "units_per_hour": round(len(passed) / hours, 2) if hours > 0 else 0.0,
            "attempted_per_hour": round(len(units) / hours, 2) if hours > 0 else 0.0,
        },
        "failure_reasons": reasons,
        "steps": steps,
        "units": [asdict(u) for u in units],
    }


UNIT_COLUMNS = ["port", "serial", "device_id", "result", "failed_step", "reason", "started", "finished", "seconds"]


def units_csv(report: dict[str, Any]) -> str:
    steps = sorted(report["steps"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(UNIT_COLUMNS + [f"{s}_s" for s in steps])
    for u in report["units"]:
        w.writerow([u["port"], u["serial"] or "", u["device_id"] or "", "PASS" if u["ok"] else "FAIL",
                    u["failed_step"] or "", u["reason"] or "", u["started"], u["finished"],
                    round(u["finished"] - u["started"], 3)] + [u["steps"].get(s, "") for s in steps])
    return buf.getvalue()


def summary_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "key", "value"])
    for k, v in report["summary"].items():
        w.writerow(["summary", k, v])
    for g in report["failure_reasons"]:
        w.writerow(["failure", g["reason"], g["count"]])
    for step, st in report["steps"].items():
        for k, v in st.items():
            w.writerow([f"step:{step}", k, v])
    return buf.getvalue()


def load_outcomes(path: Path) -> list[UnitOutcome]:
    """A JSON list of unit outcomes, or an object with one under `units` (e.g. an earlier report.json)."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("units")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of unit outcomes (or an object with `units`)")
    return [UnitOutcome.from_dict(d) for d in data]


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report.json": json.dumps(report, indent=2) + "\n", "units.csv": units_csv(report),
             "summary.csv": summary_csv(report)}
    paths = []
    for name, text in files.items():
        p = out_dir / name
        p.write_text(text)
        paths.append(p)
    return paths


__all__ = ["UnitOutcome", "build_report", "load_outcomes", "reason_key", "summary_csv", "units_csv",
           "write_report"]
