"""The comparison report: one self-contained HTML page that answers "does gating help, and at what cost?".

Reads the run folders of the workflow (``results/{dataset}/{variant}/seed{seed}/`` with ``eval/``, ``train/``
and ``samples.parquet``; peer baselines as ``results/{dataset}/peer_{method}/seed{seed}/`` without
``train/``), checks the expectations of the design note "Gated Attention for AlphaSTomics" (gated attention
of Qiu et al. 2025, arXiv 2505.06708, against the linear attention of LUNA, Yu et al. 2025) and writes one
HTML file with inline CSS and PNG figures as data URIs, so it opens without network. Statistics (intervals,
paired tests over seeds x sections) come from ``alphastomics.stats``.

``python -m alphastomics.report --screenshot PAGE.html OUT.png`` renders a page in headless Chromium
(the README screenshot, docs/report.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from alphastomics import AlphaSTomicsError, __version__


class ReportError(AlphaSTomicsError, ValueError):
    """A run folder or report input is unusable; the message names the file, the field and the fix."""


NOT_MEASURED = "not measured"

# The design note's expected change against linear attention: (label, metric, lo %, hi %, direction).
# lo/hi bound the expected relative change; None means "any change in the good direction".
EXPECTATIONS: list[tuple[str, str, float | None, float | None]] = [
    ("expression MSE", "expression_mse", -10.0, -5.0),
    ("position distance MSE", "distance_mse", -15.0, -10.0),
    ("masked reconstruction MSE", "masked_reconstruction_mse", -20.0, -15.0),
    ("kNN preservation", "knn_preservation", 5.0, 10.0),
    ("Moran's I agreement", "morans_i_corr", None, None),
]
# Headline metrics of the verdict, in this order, when measured.
HEADLINE = [
    "distance_mse",
    "knn_preservation",
    "procrustes_rmsd",
    "morans_i_corr",
    "neighborhood_ari",
    "expression_mse",
    "masked_reconstruction_mse",
]
# Plain-language names for the verdict (the metric key follows in brackets).
LABELS = {
    "distance_mse": "pairwise-distance error",
    "knn_preservation": "neighbour preservation",
    "procrustes_rmsd": "position error after alignment",
    "expression_mse": "expression error",
    "morans_i_corr": "spatial-pattern agreement (Moran's I)",
    "neighborhood_ari": "cell-type neighbourhood agreement",
    "masked_reconstruction_mse": "masked reconstruction error",
}
# An attention sink: one cell receives more than this share of all attention (uniform is 1/N). Qiu et al.
# report ~47 % on the first token without gating and ~5 % with it; 10 % separates those regimes.
SINK_THRESHOLD = 0.10

_HIGHER = (
    "pearson",
    "spearman",
    "corr",
    "knn",
    "ari",
    "nmi",
    "moran",
    "r2",
    "accuracy",
    "overlap",
    "preserv",
)
_LOWER = ("mse", "rmsd", "rssd", "error", "loss", "mae")

# Quoted, not measured here: ../shared/data/bdtnp/README.md (random 50/50 cell split, not the slab split).
BDTNP_REFERENCE = {
    "source": "shared/data/bdtnp/README.md: random 50/50 reference/query split of the 3,039 cells",
    "columns": ["mean error (data units)", "pairwise-distance Pearson", "kNN overlap (k=10)"],
    "rows": [
        ("random placement", 140, 0.01, 0.005),
        ("kNN regression (k=5)", 5.5, 0.997, 0.68),
        ("CeLEry", 5.2, 0.997, 0.68),
        ("Tangram", 9.2, 0.977, 0.50),
        ("novoSpaRc (alpha=0.5)", 9.9, 0.968, 0.53),
    ],
}

# --------------------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class Run:
    """One run folder: dataset/variant/seed and whatever of its outputs exist (None = not measured)."""

    path: Path
    dataset: str
    variant: str
    seed: int
    metrics: dict[str, Any] | None = None
    sections: pd.DataFrame | None = None  # one row per held-out section: section, n_cells, metric columns
    train_log: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @property
    def is_peer(self) -> bool:
        return self.variant.startswith("peer_")

    @property
    def overall(self) -> dict[str, float]:
        return {k: _num(v) for k, v in ((self.metrics or {}).get("overall") or {}).items() if _is_num(v)}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: Any) -> float:
    return float(v) if _is_num(v) else float("nan")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(
            f"{path}: not valid JSON (line {err.lineno}); rerun the stage that wrote it"
        ) from None


def parse_run_path(path: Path) -> tuple[str, str, int] | None:
    """``.../{dataset}/{variant}/seed{seed}`` -> (dataset, variant, seed); None if the path has another shape."""
    m = re.fullmatch(r"seed(\d+)", path.name)
    if m is None or len(path.parts) < 3:
        return None
    return path.parent.parent.name, path.parent.name, int(m.group(1))


def load_run(path: Path) -> Run:
    """Read one run folder; missing files stay None/empty so the page can say "not measured"."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(
            f"{path}: run folder not found; pass folders like results/{{dataset}}/{{variant}}/seed0"
        )
    mfile = path / "eval" / "metrics.json"
    metrics = _read_json(mfile) if mfile.is_file() else None
    ids = parse_run_path(path.resolve())
    if ids is None:
        m = metrics or {}
        if not all(k in m for k in ("dataset", "variant", "seed")):
            raise ReportError(
                f"{path}: cannot tell dataset/variant/seed; place the run at {{dataset}}/{{variant}}/seed{{seed}} "
                f"or add 'dataset', 'variant' and 'seed' to {mfile}"
            )
        ids = (str(m["dataset"]), str(m["variant"]), int(m["seed"]))
    run = Run(path, *ids, metrics=metrics)
    if metrics and metrics.get("per_section"):
        run.sections = pd.DataFrame(metrics["per_section"])
    elif (path / "eval" / "sections.csv").is_file():
        run.sections = pd.read_csv(path / "eval" / "sections.csv")
    log = path / "train" / "metrics.jsonl"
    if log.is_file():
        for i, line in enumerate(log.read_text().splitlines()):
            if line.strip():
                try:
                    run.train_log.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ReportError(
                        f"{log}: line {i + 1} is not JSON; rerun training for this run"
                    ) from None
    summ = path / "train" / "train_summary.json"
    if summ.is_file():
        run.summary = _read_json(summ)
    return run


# --------------------------------------------------------------------------------------------------------
# Numbers


def direction(metric: str) -> Literal[1, -1] | None:
    """+1 if higher is better, -1 if lower is better, None if the name does not say."""
    name = metric.lower()
    if any(t in name for t in _HIGHER):
        return 1
    if any(t in name for t in _LOWER):
        return -1
    return None


@dataclass
class Comparison:
    """A metric of one variant over seeds, and its comparison with a reference variant (if any)."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    rel_change: float = float("nan")  # percent vs the reference mean
    p_value: float = float("nan")
    significant: bool | None = None  # None = no test could be run
    n_pairs: int = 0
    method: str = "none"


def _per_section(runs: list[Run], metric: str) -> pd.DataFrame:
    rows = [
        r.sections.assign(seed=r.seed)[["seed", "section", metric]]
        for r in runs
        if r.sections is not None and {"section", metric} <= set(r.sections.columns)
    ]
    return pd.concat(rows) if rows else pd.DataFrame(columns=["seed", "section", metric])


def paired_values(a: list[Run], b: list[Run], metric: str) -> tuple[dict, dict]:
    """Per-section values of two variants keyed by (seed, section); keyed by section alone (means over
    seeds) when the seeds do not overlap (a deterministic peer run once against a model run with seeds)."""
    ta, tb = _per_section(a, metric), _per_section(b, metric)
    da = {(int(s), str(c)): float(v) for s, c, v in ta.itertuples(index=False)}
    db = {(int(s), str(c)): float(v) for s, c, v in tb.itertuples(index=False)}
    if not set(da) & set(db):
        da = {str(k): float(v) for k, v in ta.groupby("section")[metric].mean().items()}
        db = {str(k): float(v) for k, v in tb.groupby("section")[metric].mean().items()}
    return da, db


def summarize(runs: list[Run], metric: str, reference: list[Run] | None = None) -> Comparison | None:
    """Mean and 95 % interval over seeds; with a reference: relative change and a paired test over seeds x
    sections (both from alphastomics.stats)."""
    from alphastomics import stats

    s = stats.summarize(r.overall.get(metric, float("nan")) for r in runs)
    if s.n == 0:
        return None
    c = Comparison(s.mean, s.low, s.high, s.n)
    if reference:
        ref = stats.summarize(r.overall.get(metric, float("nan")) for r in reference)
        c.rel_change = 100.0 * stats.relative_change(s.mean, ref.mean)
        t = stats.paired_test(*paired_values(runs, reference, metric))
        c.n_pairs, c.p_value, c.method = t.n, t.p_value, t.method
        c.significant = None if t.method == "none" else t.significant
    return c


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return NOT_MEASURED
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def fmt_pct(x: float) -> str:
    if not math.isfinite(x):
        return NOT_MEASURED
    return f"{0.0 if abs(x) < 0.05 else x:+.1f} %"  # no "-0.0 %"


def fmt_ci(s: Comparison | None) -> str:
    if s is None:
        return NOT_MEASURED
    if s.n_seeds < 2 or not math.isfinite(s.lo):
        return f"{fmt(s.mean)} (1 seed)"
    return f"{fmt(s.mean)} [{fmt(s.lo)}, {fmt(s.hi)}]"


def fmt_test(s: Comparison) -> str:
    if s.significant is None:
        return f"not significant (no test possible on {s.n_pairs} paired seed x section value(s))"
    word = "significant" if s.significant else "not significant"
    test = {"wilcoxon": "Wilcoxon ", "paired-t": "paired t-"}.get(s.method, s.method + " ")
    return f"{word} ({test}test over {s.n_pairs} seed x section pairs, p = {s.p_value:.2g})"


# --------------------------------------------------------------------------------------------------------
# The data set: variants, verdict, expectations, tables


@dataclass
class DatasetView:
    name: str
    baseline: str
    variants: dict[str, list[Run]]  # AlphaSTomics variants, baseline first
    peers: dict[str, list[Run]]

    @property
    def all_runs(self) -> list[Run]:
        return [r for rs in (*self.variants.values(), *self.peers.values()) for r in rs]

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for r in self.all_runs:
            names += [k for k in r.overall if k not in names]
        return names


def group_runs(runs: list[Run], baseline: str) -> list[DatasetView]:
    views = []
    for ds in sorted({r.dataset for r in runs}):
        mine = sorted((r for r in runs if r.dataset == ds), key=lambda r: (r.variant, r.seed))
        variants: dict[str, list[Run]] = {}
        peers: dict[str, list[Run]] = {}
        for r in mine:
            (peers if r.is_peer else variants).setdefault(r.variant, []).append(r)
        if baseline in variants:
            variants = {baseline: variants.pop(baseline), **variants}
        views.append(DatasetView(ds, baseline, variants, peers))
    return views


def _best(view: DatasetView, metric: str, groups: dict[str, list[Run]]) -> tuple[str, float] | None:
    sign = direction(metric)
    scores = {}
    for name, runs in groups.items():
        vals = [r.overall.get(metric, float("nan")) for r in runs]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            scores[name] = float(np.mean(vals))
    if not scores or sign is None:
        return None
    name = max(scores, key=lambda k: sign * scores[k])
    return name, scores[name]


def verdict(view: DatasetView) -> list[str]:
    """Sentences generated from the numbers: best variant per headline metric vs the baseline, and vs peers."""
    base = view.variants.get(view.baseline)
    n_seeds = max((len(rs) for rs in view.variants.values()), default=0)
    out = [
        f"{view.name}: {len(view.variants)} AlphaSTomics variant(s), up to {n_seeds} seed(s)"
        + (f", {len(view.peers)} peer method(s)." if view.peers else ".")
    ]
    if not base:
        out.append(
            f"The baseline variant '{view.baseline}' has no runs here, so no change against it is measured."
        )
    metrics = [m for m in HEADLINE if m in view.metric_names()]
    if not metrics:
        out.append("No headline metric was measured (no eval/metrics.json with them).")
    for m in metrics:
        best = _best(view, m, view.variants)
        if best is None:
            continue
        name, _ = best
        s = summarize(view.variants[name], m, base if base and name != view.baseline else None)
        if s is None:
            continue
        word = "higher" if direction(m) == 1 else "lower"
        what = f"{LABELS.get(m, m)} ({m}, {word} is better)"
        if name == view.baseline or not base:
            others = {k: v for k, v in view.variants.items() if k != view.baseline}
            runner = _best(view, m, others)
            text = f"On {what} the baseline {name} is best with {fmt_ci(s)}"
            if runner:
                r = summarize(view.variants[runner[0]], m, base)
                if r:
                    text += (
                        f"; the best other variant, {runner[0]}, is {fmt_pct(r.rel_change)}, {fmt_test(r)}"
                    )
            out.append(text + ".")
        else:
            out.append(
                f"On {what} {name} is best with {fmt_ci(s)}, {fmt_pct(s.rel_change)} against "
                f"{view.baseline}, {fmt_test(s)}."
            )
        peer = _best(view, m, view.peers) if view.peers else None
        if peer:
            p = summarize(view.variants[name], m, view.peers[peer[0]])
            if p:
                side = "better" if direction(m) * (p.rel_change or 0) > 0 else "worse"
                out.append(
                    f"Against the best peer on {LABELS.get(m, m)}, {peer[0].removeprefix('peer_')} ({fmt(peer[1])}), "
                    f"{name} is {fmt_pct(p.rel_change)} ({side}), {fmt_test(p)}."
                )
    return out


def _sink_share(run: Run) -> list[float]:
    """Per layer: attention-sink share (mean over heads and sections) from eval diagnostics."""
    entries = ((run.metrics or {}).get("diagnostics") or {}).get("attention_sink") or []
    out = []
    for e in entries:
        v = e.get("share", e.get("share_mean")) if isinstance(e, dict) else e
        v = np.asarray(v, dtype=float) if v is not None else np.array([np.nan])
        out.append(float(np.nanmean(v)) if v.size else float("nan"))
    return out


def expectations(view: DatasetView) -> list[dict[str, str]]:
    """One row per (expectation, non-baseline variant): expected vs measured change and a mark."""
    base = view.variants.get(view.baseline)
    rows = []
    for name, runs in view.variants.items():
        if name == view.baseline:
            continue
        for label, metric, lo, hi in EXPECTATIONS:
            expected = f"{lo:+.0f} .. {hi:+.0f} %" if lo is not None else "up"
            s = summarize(runs, metric, base) if base else None
            if s is None or not math.isfinite(s.rel_change):
                mark = NOT_MEASURED
            elif not s.significant:  # False, or None: no per-section values to test, so not established
                mark = "not significant"
            else:
                good = s.rel_change * (direction(metric) or 1) > 0
                reach = lo is None or abs(s.rel_change) >= min(abs(lo), abs(hi))
                mark = "met" if good and reach else "not met"
            measured = NOT_MEASURED if s is None else f"{fmt_pct(s.rel_change)} ({fmt_ci(s)})"
            rows.append(dict(variant=name, label=label, expected=expected, measured=measured, mark=mark))
        shares = [max(sh) for sh in (_sink_share(r) for r in runs) if sh and np.isfinite(sh).any()]
        if shares:
            worst = float(np.nanmean(shares))
            mark = "met" if worst < SINK_THRESHOLD else "not met"
            measured = f"largest per-layer sink share {worst:.1%}"
        else:
            mark, measured = NOT_MEASURED, NOT_MEASURED
        rows.append(
            dict(
                variant=name,
                label="no attention sink",
                expected=f"< {SINK_THRESHOLD:.0%} to one cell",
                measured=measured,
                mark=mark,
            )
        )
    return rows


def metrics_table(view: DatasetView) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns = every metric measured; rows = variants, peers, then the random-placement reference."""
    names = view.metric_names()
    base = view.variants.get(view.baseline)
    rows = []
    for kind, groups in (("variant", view.variants), ("peer", view.peers)):
        for name, runs in groups.items():
            cells = []
            for m in names:
                s = summarize(runs, m, base if base and name != view.baseline else None)
                extra = "" if s is None or not math.isfinite(s.rel_change) else f" ({fmt_pct(s.rel_change)})"
                cells.append(fmt_ci(s) + extra)
            wall = [_wall_time(r) for r in runs]
            wall = [w for w in wall if math.isfinite(w)]
            rows.append(
                dict(
                    name=name,
                    kind=kind,
                    cells=cells,
                    wall=fmt(float(np.mean(wall))) if wall else NOT_MEASURED,
                )
            )
    refs = [r for r in view.all_runs if r.metrics and r.metrics.get("random_reference")]
    if refs:
        cells = []
        for m in names:
            vals = [_num(r.metrics["random_reference"].get(m)) for r in refs]
            vals = [v for v in vals if math.isfinite(v)]
            cells.append(fmt(float(np.mean(vals))) if vals else NOT_MEASURED)
        rows.append(dict(name="random placement", kind="reference", cells=cells, wall=""))
    return names, rows


def _wall_time(run: Run) -> float:
    for src in (run.summary or {}, (run.metrics or {}).get("cost") or {}):
        if _is_num(src.get("wall_time_s")):
            return float(src["wall_time_s"])
    return float("nan")


def cost_table(view: DatasetView) -> list[dict[str, str]]:
    keys = [
        ("params_total", "{:,.0f}"),
        ("params_attention", "{:,.0f}"),
        ("wall_time_s", "{:.1f}"),
        ("cells_per_s", "{:,.0f}"),
        ("peak_mem_mb", "{:,.0f}"),
    ]
    rows = []
    for name, runs in view.variants.items():
        devices = {
            str((r.summary or {}).get("device_name", (r.summary or {}).get("device", "?"))) for r in runs
        }
        row = {"name": name, "device": ", ".join(sorted(devices))}
        for k, f in keys:
            vals = []
            for r in runs:
                for src in (
                    r.summary or {},
                    (r.metrics or {}).get("params") or {},
                    (r.metrics or {}).get("cost") or {},
                ):
                    if _is_num(src.get(k)):
                        vals.append(float(src[k]))
                        break
            row[k] = f.format(np.mean(vals)) if vals else NOT_MEASURED
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------
# Provenance


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if sha.returncode == 0:
            return sha.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown (not a git checkout)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str:
    if shutil.which("nvidia-smi"):
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if r.returncode == 0 and r.stdout.strip():
            return ", ".join(sorted(set(r.stdout.split("\n")) - {""}))
    return "none"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _manifests(runs: list[Run], data_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """dataset -> manifest.json: from --data-dirs, else any manifest.json under the runs' results folder."""
    paths = [Path(d) / "manifest.json" for d in data_dirs]
    for d, p in zip(data_dirs, paths):
        if not p.is_file():
            raise ReportError(f"{d}: no manifest.json; pass the folder written by preprocess to --data-dirs")
    if not data_dirs:
        roots = {r.path.resolve().parents[2] for r in runs if parse_run_path(r.path.resolve())}
        paths = [p for root in roots for p in sorted(root.glob("**/manifest.json"))[:50]]
    out = {}
    for p in paths:
        m = _read_json(p)
        if isinstance(m, dict):
            out.setdefault(str(m.get("dataset", p.parent.name)), m | {"_path": str(p)})
    return out


def _datasets_as_run(manifests: dict[str, dict[str, Any]], config_text: str) -> str:
    """YAML of each data set as preprocess really ran it (its manifest), plus the workflow's overrides for it."""
    import yaml

    if not manifests:
        return ""
    try:
        workflow_cfg = yaml.safe_load(config_text)
    except yaml.YAMLError:
        workflow_cfg = None
    entries = workflow_cfg.get("datasets") if isinstance(workflow_cfg, dict) else None
    out = {}
    for ds, m in sorted(manifests.items()):
        entry = entries.get(ds) if isinstance(entries, dict) else None
        out[ds] = {
            "dataset": m.get("parameters"),
            "overrides": (entry or {}).get("overrides") or {},
            "gene_selection": m.get("gene_selection"),
            "cells": m.get("n_cells"),
            "genes": m.get("n_genes"),
            "dims": m.get("dims"),
            "splits": m.get("splits"),
            "normalization": {k: v for k, v in (m.get("normalization") or {}).items() if k in ("input", "applied", "target_sum")},
            "source_files": m.get("source_files") or {},
            "source_sha256": m.get("source_checksums") or {},
        }
    return "\n# Data sets as preprocessed (from each manifest.json)\n" + yaml.safe_dump({"datasets_as_run": out}, sort_keys=False)


def provenance(
    runs: list[Run], cfg: Any, data_dirs: list[Path], config_snapshot: Path | None
) -> dict[str, Any]:
    import yaml

    from alphastomics.config import to_dict

    if config_snapshot is not None:
        if not Path(config_snapshot).is_file():
            raise ReportError(
                f"{config_snapshot}: config snapshot not found; pass the config file the run used"
            )
        config_text = Path(config_snapshot).read_text()
        config_src = str(config_snapshot)
    else:
        config_text = yaml.safe_dump(to_dict(cfg), sort_keys=False) if cfg is not None else NOT_MEASURED
        config_src = "configuration given to the report stage"
    manifests = _manifests(runs, data_dirs)
    # Source files by the user's own path (fetch-data records it), each with its sha256.
    checksums = {
        ds: {(m.get("source_files") or {}).get(f, f): h for f, h in (m.get("source_checksums") or {}).items()}
        for ds, m in manifests.items()
    }
    config_text += _datasets_as_run(manifests, config_text)
    return {
        "config_text": config_text,
        "config_src": config_src,
        "version": __version__,
        "commit": _git_commit(),
        "checksums": checksums,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "gpu": _gpu_name(),
        "train_devices": ", ".join(
            sorted({str(r.summary["device"]) for r in runs if r.summary and "device" in r.summary})
        )
        or NOT_MEASURED,
        "snakemake": _version("snakemake"),
        "python": platform.python_version(),
        "torch": _version("torch"),
    }


# --------------------------------------------------------------------------------------------------------
# The page


def build_report(
    run_dirs: list[Path],
    out: Path,
    *,
    baseline: str = "linear",
    data_dirs: list[Path] | None = None,
    config_snapshot: Path | None = None,
    cfg: Any = None,
) -> Path:
    """Read every run folder and write the HTML page atomically to ``out``."""
    import jinja2

    from alphastomics.report_figures import fig_attention, fig_gates, fig_loss, fig_positions, fig_sinks

    if not run_dirs:
        raise ReportError(
            "report: no run folders given; pass --runs results/{dataset}/{variant}/seed{seed} ..."
        )
    runs = [load_run(Path(p)) for p in run_dirs]
    views = []
    for view in group_runs(runs, baseline):
        names = view.metric_names()
        primary = next((m for m in HEADLINE if m in names), names[0] if names else "distance_mse")
        cols, rows = metrics_table(view)
        pos_png, pos_caption = fig_positions(view, primary)
        views.append(
            dict(
                name=view.name,
                baseline=baseline,
                verdict=verdict(view),
                expectations=expectations(view),
                metric_cols=cols,
                metric_rows=rows,
                cost=cost_table(view),
                bdtnp=BDTNP_REFERENCE if view.name == "bdtnp" else None,
                figures=[
                    (
                        "Training and validation loss per variant: mean over seeds, band = min..max over seeds (moving average "
                        "over 1/40 of the logged points)",
                        fig_loss(view),
                    ),
                    (f"Predicted vs true coordinates after Procrustes alignment: {pos_caption}", pos_png),
                    (
                        "Gate score histograms per layer (healthy: mean about 0.5, std about 0.2)",
                        fig_gates(view),
                    ),
                    (
                        "Attention-sink share per layer: attention mass received by the most-attended cell",
                        fig_sinks(view),
                    ),
                    ("Attention map of one head on one held-out section", fig_attention(view, primary)),
                ],
            )
        )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alphastomics", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html.j2").render(
        views=views,
        prov=provenance(runs, cfg, list(data_dirs or []), config_snapshot),
        not_measured=NOT_MEASURED,
        sink_threshold=f"{SINK_THRESHOLD:.0%}",
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def main(args: argparse.Namespace, cfg: Any) -> int:
    out = build_report(
        args.runs,
        args.out,
        baseline=getattr(args, "baseline", "linear"),
        data_dirs=getattr(args, "data_dirs", None),
        config_snapshot=getattr(args, "config_snapshot", None),
        cfg=cfg,
    )
    print(f"report: wrote {out}")
    return 0


# --------------------------------------------------------------------------------------------------------
# Headless Chromium (README screenshot, rendering test)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    raise ReportError("chromium: not on PATH; install it (Debian: apt-get install -y chromium)")


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 4000, timeout: float = 120) -> str:
    """Render ``html`` in headless Chromium to ``png``; returns Chromium's log (console messages included)."""
    html = Path(html).resolve()
    if not html.is_file():
        raise ReportError(f"{html}: page not found; build it first with python -m alphastomics report")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            html.as_uri(),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not png.is_file():
        raise ReportError(f"{html}: chromium failed (exit {r.returncode}); see its log: {r.stderr[-300:]!r}")
    return r.stderr


def console_errors(log: str) -> list[str]:
    """Lines of a Chromium log that report a page error (console messages and uncaught exceptions)."""
    return [l for l in log.splitlines() if "CONSOLE" in l and re.search(r"Uncaught|Error|Failed", l)]


MARKDOWN_METRICS = (
    "knn_preservation",
    "distance_pearson",
    "distance_mse",
    "procrustes_rmsd",
    "morans_i_corr",
    "masked_reconstruction_mse",
)


def markdown_summary(results: Path, baseline: str = "linear") -> str:
    """Markdown tables (one per data set) of the headline position metrics of every run under ``results``:
    mean over seeds [95 % interval] (change vs the baseline), peers and the random reference as rows."""
    run_dirs = sorted(p.parent.parent for p in Path(results).glob("*/*/seed*/eval/metrics.json"))
    if not run_dirs:
        raise ReportError(f"{results}: no */*/seed*/eval/metrics.json below it; run the workflow first")
    out = []
    for view in group_runs([load_run(p) for p in run_dirs], baseline):
        names, rows = metrics_table(view)
        keep = [i for i, m in enumerate(names) if m in MARKDOWN_METRICS]
        seeds = max(len(rs) for rs in view.variants.values()) if view.variants else 0
        out.append(f"**{view.name}** (held-out sections; mean over {seeds} seeds [95 % interval], change vs "
                   f"{baseline}; wall time in s)\n")
        out.append("| method | " + " | ".join(names[i] for i in keep) + " | wall time |")
        out.append("|---" * (len(keep) + 2) + "|")
        for row in rows:
            label = row["name"] if row["kind"] != "peer" else f"{row['name']} (peer)"
            out.append(f"| {label} | " + " | ".join(row["cells"][i] for i in keep) + f" | {row['wall']} |")
        out.append("")
    return "\n".join(out)


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m alphastomics.report",
        description="render a report page to PNG, or print the headline metrics as Markdown",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--screenshot", nargs=2, metavar=("PAGE_HTML", "OUT_PNG"))
    what.add_argument("--markdown", type=Path, metavar="RESULTS_DIR", help="e.g. results/")
    p.add_argument("--baseline", default="linear")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--scale", type=float, default=0.5, help="shrink the PNG by this factor (README size)")
    a = p.parse_args(argv)
    if a.markdown is not None:
        try:
            print(markdown_summary(a.markdown, a.baseline))
        except AlphaSTomicsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        out = Path(a.screenshot[1])
        with tempfile.TemporaryDirectory() as tmp:
            full = Path(tmp) / "full.png"
            errors = console_errors(screenshot(Path(a.screenshot[0]), full, width=a.width, height=a.height))
            from PIL import Image

            img = Image.open(full).convert("RGB")
            img = img.resize((round(img.width * a.scale), round(img.height * a.scale)), Image.LANCZOS)
            img = img.quantize(colors=256)  # a page of text and flat plots: a palette PNG is ~3x smaller
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = out.with_name(f".{out.name}.tmp.png")
            img.save(tmp_out, optimize=True)
            os.replace(tmp_out, out)
    except AlphaSTomicsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for e in errors:
        print(f"warning: page console: {e}", file=sys.stderr)
    print(f"screenshot: wrote {out} ({img.width} x {img.height})")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
