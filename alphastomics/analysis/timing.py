"""How long a Makefile target took, set-up included (stage ``timing``; the Makefile calls it after Snakemake).

make passes the time it started; the record, ``make_time.json`` beside the verdict the target wrote, is tied
to that verdict by its sha256, so docs/results.md (``alphastomics.analysis.markdown``) shows a wall time only
beside the verdict it belongs to, and a rerun that had nothing to do leaves the earlier record as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

from alphastomics.artifacts import atomic_write_text, sha256_file
from alphastomics.provenance import _cpu_name, code

TIMING_SCHEMA = "alphastomics.make_time/1"
TIMING_FILE = "make_time.json"  # beside the verdict.json it times


def snakemake_jobs(log_dir: Path, since: float) -> int | None:
    """How many jobs the newest Snakemake log written since ``since`` (unix time) planned: the y of its last
    "x of y steps" line; None without such a log."""
    logs = [p for p in Path(log_dir).glob("*.snakemake.log") if p.stat().st_mtime >= since]
    if not logs:
        return None
    steps = re.findall(r"(\d+) of (\d+) steps", max(logs, key=lambda p: p.stat().st_mtime).read_text())
    return int(steps[-1][1]) if steps else None


def record_time(verdict: Path, target: str, started: float, set_up: bool, cores: int,
                log_dir: Path = Path(".snakemake/log"), now: float | None = None) -> dict[str, Any] | None:
    """Write ``make_time.json`` beside ``verdict``: the target, its wall time since ``started`` (set-up
    included when ``set_up``), the Snakemake jobs it ran, the cores, CPU and code, and the verdict's sha256.
    A verdict older than ``started`` was not written by this invocation (Snakemake had nothing to do): no
    record, and an earlier one is left as it is. Returns the record, or None."""
    verdict = Path(verdict)
    if not verdict.is_file() or verdict.stat().st_mtime < started:
        return None
    now = time.time() if now is None else now
    record = {
        "schema": TIMING_SCHEMA,
        "target": target,
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "seconds": round(now - started),
        "set_up_included": bool(set_up),
        "snakemake_jobs": snakemake_jobs(log_dir, started),
        "cores": int(cores),
        "cpu": _cpu_name(),
        "code": code(),
        "verdict_sha256": sha256_file(verdict),
    }
    atomic_write_text(verdict.with_name(TIMING_FILE), json.dumps(record, indent=2) + "\n")
    return record


def read_time(verdict: Path) -> dict[str, Any] | None:
    """The ``make_time.json`` beside ``verdict`` when it times this very verdict (same sha256), else None."""
    verdict, path = Path(verdict), Path(verdict).with_name(TIMING_FILE)
    try:
        record = json.loads(path.read_text())
        same = record.get("verdict_sha256") == sha256_file(verdict)
    except (OSError, ValueError, AttributeError):
        return None
    return record if same and record.get("schema") == TIMING_SCHEMA else None


def main(args: Any, cfg: Any = None) -> int:
    """Stage ``timing``: the Makefile's record of how long a target took (see ``record_time``)."""
    r = record_time(args.verdict, args.target, args.started, args.set_up == "true", args.cores)
    print(f"{args.target}: {r['seconds']} s, recorded in {Path(args.verdict).with_name(TIMING_FILE)}" if r else
          f"{args.target}: {args.verdict} was not written by this run; no wall time recorded")
    return 0
