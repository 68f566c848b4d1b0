"""A training job's cost at git revision REV and in the working tree, run back to back on this machine.

    python benchmarks/train_before_after.py --data results/data/bdtnp/processed --before REV
        [--steps 100] [--repeats 2] [--variants linear gated_headwise] [--set KEY=VALUE ...]

Each run is the real job: a fresh ``python -m alphastomics train --threads 1`` process (command-line start,
imports, the loop, validation, checkpoints), with config/model.yaml of the working tree plus the variant's
attention settings, on the code of REV (``git archive REV alphastomics``, put first on PYTHONPATH) or of the
working tree. The two codes alternate, ``--repeats`` times per variant. Printed per variant: the medians of
cells per CPU-second (cells trained / the job's CPU time, user + system, data-loader workers included:
``getrusage(RUSAGE_CHILDREN)``), of the job's system CPU seconds, of its minor page faults and of its peak
resident memory, and the ratio after / before of cells per CPU-second. CPU time rather than wall time: on a
machine shared with other jobs the ratio then holds although wall times move by tens of per cent.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from alphastomics.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def unpack(rev: str, into: Path) -> Path:
    """The package of git revision ``rev``, unpacked under ``into``; returns the folder for PYTHONPATH."""
    git = ["git", "archive", rev, "alphastomics"]
    archive = subprocess.run(git, cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_job(
    code: Path, data: Path, out: Path, variant: str, steps: int, extra: list[str]
) -> dict[str, float]:
    """One training job on the package under ``code``: cells per CPU-second, system seconds, page faults and
    the job's peak resident memory (``train_summary.json``)."""
    settings = [f"TransformerLayer_setting.{k}={v}" for k, v in VARIANTS[variant].settings().items()]
    sets = [*settings, f"training.max_steps={steps}", *extra]
    cmd = [sys.executable, "-m", "alphastomics", "train", "--data_dir", str(data), "--out", str(out)]
    cmd += ["--threads", "1", "--config", str(ROOT / "config/model.yaml")]
    cmd += [arg for s in sets for arg in ("--set", s)]
    # cwd outside the repository: `python -m` puts the current folder first on sys.path, which would shadow
    # PYTHONPATH's package with the working tree's
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(cmd, cwd=out.parent, env=env, check=True, **quiet)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((out / "train_summary.json").read_text())
    cells = summary["cells_per_s"] * summary["wall_time_s"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "cells_per_cpu_s": cells / cpu,
        "sys_s": after.ru_stime - before.ru_stime,
        "minflt": float(after.ru_minflt - before.ru_minflt),
        "peak_mb": summary["peak_mem_mb"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="a processed data folder")
    p.add_argument("--before", required=True, help="git revision of the 'before' code")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=["linear", "gated_headwise"])
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    data = args.data.resolve()
    load = os.getloadavg()[0]
    print(f"# {os.uname().nodename}, load average {load:.1f}, data {args.data}, {args.steps} steps,")
    print(f"# medians of {args.repeats} jobs per code; before = {args.before}, after = working tree")
    print("| variant | cells per CPU-second, before | after | ratio | system CPU s, before | after "
          "| minor page faults, before | after | peak MB, before | after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"before": unpack(args.before, Path(tmp) / "before"), "after": ROOT}
        for variant in args.variants:
            runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for i in range(args.repeats):
                for name, code in codes.items():
                    out = Path(tmp) / "runs" / f"{variant}-{name}-{i}"
                    out.parent.mkdir(exist_ok=True)
                    runs[name].append(run_job(code, data, out, variant, args.steps, args.extra))

            def med(name: str, key: str) -> float:
                return statistics.median(r[key] for r in runs[name])

            b, a = med("before", "cells_per_cpu_s"), med("after", "cells_per_cpu_s")
            print(f"| {variant} | {b:,.0f} | {a:,.0f} | {a / b:.2f}x | {med('before', 'sys_s'):.1f} "
                  f"| {med('after', 'sys_s'):.1f} | {med('before', 'minflt'):,.0f} "
                  f"| {med('after', 'minflt'):,.0f} "
                  f"| {med('before', 'peak_mb'):.0f} | {med('after', 'peak_mb'):.0f} |")


if __name__ == "__main__":
    main()
