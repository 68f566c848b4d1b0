"""Both analysis stages in one call, as the workflow runs them: the verdict stage, then the report stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alphastomics.analysis.decide import write_verdict
from alphastomics.analysis.report import render_page


def build_report(run_dirs: list[Path], out: Path, *, verdict_out: Path | None = None, config_snapshot: Path | None = None,
                 cfg: Any = None, stability: Path | None = None, **decide: Any) -> Path:
    """verdict.json (``verdict_out``, default next to ``out``) from the runs, then the page rendered from it."""
    verdict_out = Path(verdict_out) if verdict_out else Path(out).with_name("verdict.json")
    write_verdict(run_dirs, verdict_out, stability=stability, **decide)
    return render_page(verdict_out, run_dirs, out, config_snapshot=config_snapshot, cfg=cfg, stability=stability)
