"""The verdict stage: ``python -m alphastomics verdict --runs ... --out results/verdict.json``.

Reads every run folder, builds the verdict (``alphastomics.analysis.verdict``: the declared contrasts tested
over seeds) with its claims table (``alphastomics.analysis.claims``) and writes verdict.json; the report stage
only renders it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alphastomics.analysis import claims
from alphastomics.analysis.report_provenance import _manifests
from alphastomics.analysis.runs import load_run
from alphastomics.analysis.verdict import BASELINE, Family, VerdictError, build, read_others, write
from alphastomics.artifacts import json_safe


def write_verdict(
    run_dirs: Sequence[Path],
    out: Path,
    *,
    baseline: str = BASELINE,
    family: Family | None = None,
    compare_with: Sequence[Path] | None = None,
    stability: Path | None = None,
) -> dict[str, Any]:
    """The verdict stage: read every run folder, build the verdict with its claims table and write it to
    ``out`` atomically. ``compare_with``: other campaigns' verdict files, whose data sets join the comparison
    across tissues (a missing one is a row saying so; this campaign's own file is skipped); ``stability``: the
    learning-rate sweep's stability.json for the claims rows it measures."""
    if not run_dirs:
        raise VerdictError("verdict: no run folders given; pass --runs results/{dataset}/{variant}/seed{seed} ...")
    runs = [load_run(Path(p)) for p in run_dirs]
    out = Path(out)
    others = read_others([p for p in compare_with or [] if Path(p).resolve() != out.resolve()])
    verdict = build(runs, family, baseline=baseline, manifests=_manifests(runs), others=others)
    verdict["claims"] = json_safe(claims.table(verdict["datasets"], runs, verdict["family"],
                                            claims.read_stability(stability), claims.note_parameters(), baseline))
    write(verdict, out)
    return verdict


def main(args: Any, cfg: Any) -> int:
    """``verdict --runs RUN ... --out results/verdict.json`` (the declared family from --contrasts /
    --primary-metrics, other campaigns from --with-verdict, the sweep from --stability)."""
    family = Family.parse(getattr(args, "contrasts", None), getattr(args, "primary_metrics", None))
    v = write_verdict(args.runs, args.out, baseline=getattr(args, "baseline", BASELINE), family=family,
               compare_with=getattr(args, "with_verdict", None), stability=getattr(args, "stability", None))
    warning = (v.get("code") or {}).get("message")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"verdict: wrote {args.out}")
    return 0
