"""Where the seed-to-seed spread comes from: training, the reverse-diffusion draw, the test sections.

``python -m alphastomics variance RESULTS_OR_RUN_FOLDERS... [--metrics M ...]`` prints the table of
docs/metrics.md ("Variance and resolution") from the runs' ``eval/metrics.json`` (``per_draw``: every held-out
section scored for every draw; ``evaluation.sampling_draws`` >= 2 is needed to separate the draw).

Model, per data set, variant and metric (sections pooled over cross-validation folds): the value of seed s on
held-out section j in draw k is

    y[s, j, k] = mu + a_s + b_j + (ab)_sj + e_sjk

with a training effect a (one model per seed and fold: seed, data order, initial weights), a section effect
b, a seed x section interaction ab (how much a model's quality depends on which section it places) and the
draw e. The variances come from the balanced two-way ANOVA with replication (method of moments, each
truncated at 0; sections unweighted): MS_draw = s2_e; MS_int = s2_ab + s2_e / K; MS_seed = MS_int + J s2_a;
MS_section = MS_int + S s2_b. A seed's value in a design with J test sections and K draws then varies from
seed to seed by

    Var(seed value) = s2_a + s2_ab / J + s2_e / (J K)

(the section effect b is shared by every seed of a fixed design: it moves all variants alike, not their
spread). The table gives each term's share of that variance for the design that ran, and the same for the
declared contrasts' paired differences (draw k of one variant paired with draw k of the other; draws are
independent, so the pairing only fixes the count). More draws shrink the last term, more test sections
(cross-validation folds) the last two, and only more seeds the first.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alphastomics import AlphaSTomicsError
from alphastomics.analysis.runs import DatasetView, Run, group_runs, load_run

DEFAULT_METRICS = ("knn_preservation", "distance_spearman", "procrustes_rmsd_scaled")
TERMS = ("training", "sections", "draw")


class VarianceError(AlphaSTomicsError, ValueError):
    pass


def observations(runs: list[Run], metric: str) -> tuple[np.ndarray, list[int], list[str]]:
    """(y of shape (seeds, sections, draws), seeds, sections) over the seeds that scored every section in
    every draw (the common draws only); an empty array when there is nothing to decompose."""
    cells: dict[int, dict[tuple[str, int], float]] = {}
    for r in runs:
        for row in (r.metrics or {}).get("per_draw") or []:
            v = row.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                cells.setdefault(r.seed, {})[(str(row["section"]), int(row.get("draw", 0)))] = float(v)
    if not cells:
        return np.empty((0, 0, 0)), [], []
    common = set.intersection(*(set(c) for c in cells.values()))
    sections = sorted({s for s, _ in common})
    draws = sorted({k for _, k in common})
    complete = [(s, k) for s in sections for k in draws]
    if not all(key in common for key in complete):  # keep the largest full grid: draws every section has
        draws = [k for k in draws if all((s, k) in common for s in sections)]
    seeds = sorted(cells)
    y = np.array([[[cells[seed][(s, k)] for k in draws] for s in sections] for seed in seeds])
    return y, seeds, sections


def decompose(y: np.ndarray) -> dict[str, float]:
    """Variance components of y (S seeds, J sections, K draws): training (a), section (b), interaction
    (ab), draw (e); NaN where the design cannot separate one (S < 2, J < 2 or K < 2)."""
    s_, j_, k_ = y.shape
    nan = math.nan
    cell = y.mean(axis=2)  # (S, J)
    grand = cell.mean()
    seed_m, sec_m = cell.mean(axis=1), cell.mean(axis=0)
    ms_draw = float(((y - cell[..., None]) ** 2).sum() / (s_ * j_ * (k_ - 1))) if k_ > 1 else nan
    draw_part = ms_draw / k_ if k_ > 1 else 0.0  # K = 1: the draw is inseparable from the interaction
    ms_int = nan
    if s_ > 1 and j_ > 1:
        resid = cell - seed_m[:, None] - sec_m[None, :] + grand
        ms_int = float((resid**2).sum() / ((s_ - 1) * (j_ - 1)))
    ms_seed = float(j_ * ((seed_m - grand) ** 2).sum() / (s_ - 1)) if s_ > 1 else nan
    ms_sec = float(s_ * ((sec_m - grand) ** 2).sum() / (j_ - 1)) if j_ > 1 else nan
    if j_ == 1:  # one section: the seed mean square holds training, interaction and draw together
        return {"training": max(0.0, ms_seed - draw_part) if s_ > 1 else nan, "section": nan,
                "interaction": nan, "draw": ms_draw}
    return {
        "training": max(0.0, (ms_seed - ms_int) / j_) if s_ > 1 else nan,
        "section": max(0.0, (ms_sec - ms_int) / s_) if s_ > 1 else nan,
        "interaction": max(0.0, ms_int - draw_part) if math.isfinite(ms_int) else nan,
        "draw": ms_draw,
    }


def shares(c: dict[str, float], j: int, k: int) -> dict[str, float]:
    """The terms of Var(seed value) with J test sections and K draws, and each term's share of it."""
    terms = {"training": c["training"], "sections": c["interaction"] / j, "draw": c["draw"] / (j * k)}
    # A term the design cannot separate (NaN) is inside another one (K = 1: the draw inside the sections).
    total = sum(v for v in terms.values() if math.isfinite(v))
    out = {"variance": total, "sd": math.sqrt(total) if total >= 0 else math.nan}
    for key, v in terms.items():
        out[f"{key}_share"] = v / total if total > 0 and math.isfinite(v) else math.nan
    return out


def _row(y: np.ndarray, **ids: Any) -> dict[str, Any]:
    s_, j_, k_ = y.shape
    c = decompose(y)
    return {**ids, "seeds": s_, "sections": j_, "draws": k_, "components": c, **shares(c, j_, k_),
            "mean": float(y.mean())}


def dataset_rows(view: DatasetView, metrics: Sequence[str],
                 contrasts: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """One row per (variant or contrast) x metric with its decomposition (``_row``)."""
    rows = []
    for m in metrics:
        for variant, runs in view.variants.items():
            y, _, _ = observations(runs, m)
            if y.size and y.shape[0] >= 2:
                rows.append(_row(y, dataset=view.name, metric=m, what=variant))
        for a, b in contrasts:
            if a not in view.variants or b not in view.variants:
                continue
            ya, sa, ja = observations(view.variants[a], m)
            yb, sb, jb = observations(view.variants[b], m)
            seeds = sorted(set(sa) & set(sb))
            if ja != jb or len(seeds) < 2 or not ya.size:
                continue
            k = min(ya.shape[2], yb.shape[2])
            d = ya[[sa.index(s) for s in seeds], :, :k] - yb[[sb.index(s) for s in seeds], :, :k]
            rows.append(_row(d, dataset=view.name, metric=m, what=f"{a} - {b}"))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| data set | metric | variant or contrast | seeds x sections x draws | sd of a seed's value | "
            "training | test sections | sampling draw |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        pct = [f"{100 * r[f'{t}_share']:.0f} %" if math.isfinite(r[f"{t}_share"]) else "n/a" for t in TERMS]
        lines.append(f"| {r['dataset']} | {r['metric']} | {r['what']} | {r['seeds']} x {r['sections']} x "
                     f"{r['draws']} | {r['sd']:.4g} | {' | '.join(pct)} |")
    return "\n".join(lines)


def run_folders(paths: Sequence[Path]) -> list[Path]:
    """Run folders given, or every evaluated run below a data set folder (results/bdtnp) or a results
    folder given. One campaign at a time: a results folder holding two campaigns' runs of one data set
    name (make run's bdtnp and make powered's folds of bdtnp) is passed as its data set folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "eval" / "metrics.json").is_file():
            out.append(p)
            continue
        found = sorted(q.parent.parent for pattern in ("*/seed*/eval/metrics.json", "*/*/seed*/eval/metrics.json")
                       for q in p.glob(pattern))
        if not found:
            raise VarianceError(f"{p}: no evaluated run below it ({{variant}}/seed*/eval/metrics.json); pass "
                                "results/, data set folders such as results/bdtnp, or run folders")
        out += found
    return out


def main(args: Any, cfg: Any) -> int:
    runs = [load_run(p) for p in run_folders(args.runs)]
    contrasts = [tuple(c.split(":", 1)) for c in args.contrasts or []]
    rows = []
    for view in group_runs(runs, "linear"):
        if args.datasets and view.name not in args.datasets:
            continue
        rows += dataset_rows(view, args.metrics or DEFAULT_METRICS, contrasts)
    if not rows:
        raise VarianceError("no data set has 2 or more seeds with per-draw scores; rerun evaluate of this "
                            "version (metrics.json 'per_draw')")
    print(markdown(rows))
    print(f"variance: {len(rows)} rows from {len(runs)} runs", file=sys.stderr)
    return 0
