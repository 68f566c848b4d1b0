"""Result folders -> runs and the values the verdict compares (DESIGN section 6, "Statistics").

A run folder (``alphastomics.layout``: ``results/{dataset}/{variant}/seed{seed}/``, peers
``results/{dataset}/peer_{method}/seed{seed}/``) holds ``eval/metrics.json`` (and ``eval/sections.csv``),
``train/`` (not peers) and ``samples.parquet`` (docs/architecture.md). A run is what its metrics.json says
it is (``dataset``, ``variant``, ``seed``: evaluate ``--run-id``); a metrics.json without them is placed by
its folder's path.

The unit of replication is one trained model: ``seed_values`` gives one number per seed, the cell-weighted
mean of a metric over the run's held-out sections, so two sections of one seed never become two
observations. ``section_values`` gives one number per held-out section, the mean over seeds: what a peer
(which has no seeds of its own to pair) is compared with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from alphastomics import AlphaSTomicsError
from alphastomics.artifacts import read_json
from alphastomics.evaluation import metrics as M
from alphastomics.layout import is_peer, parse_run_path


class RunError(AlphaSTomicsError, ValueError):
    """A run folder is unusable; the message names the file, the field and the fix."""


def direction(metric: str) -> Literal[1, -1] | None:
    """+1 if higher is better, -1 if lower is better, None for a description that no side is better on: as
    declared in ``metrics.DIRECTIONS``, never guessed from the name; an undeclared metric raises
    ``metrics.UndeclaredMetricError`` (one line: declare it in alphastomics/evaluation/metrics.py)."""
    return M.direction(metric)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite(v: Any) -> bool:
    """A real, finite number (not a bool, not NaN or inf)."""
    return _is_num(v) and math.isfinite(v)


def _num(v: Any) -> float:
    return float(v) if _is_num(v) else float("nan")


def _read_json(path: Path) -> Any:
    """A result file's JSON (``artifacts.read_json``); not JSON: a one-line ``RunError``."""
    return read_json(path, "rerun the stage that wrote it", RunError)


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
        return is_peer(self.variant)

    @property
    def overall(self) -> dict[str, float]:
        return {k: _num(v) for k, v in ((self.metrics or {}).get("overall") or {}).items() if _is_num(v)}

    def value(self, metric: str) -> float:
        """This run's one number for ``metric``: sum_s n_s v_s / sum_s n_s over its held-out sections s
        (n_s cells), from the per-section table; ``overall`` (evaluate's own weighted mean) only when the run
        has no per-section value of the metric."""
        t = self.sections
        if t is not None and {"n_cells", metric} <= set(t.columns):
            v = pd.to_numeric(t[metric], errors="coerce").to_numpy(float)
            w = pd.to_numeric(t["n_cells"], errors="coerce").to_numpy(float)
            ok = np.isfinite(v) & np.isfinite(w) & (w > 0)
            if ok.any():
                return float((v[ok] * w[ok]).sum() / w[ok].sum())
        return self.overall.get(metric, math.nan)

    def section_value(self, metric: str) -> dict[str, float]:
        t = self.sections
        if t is None or not {"section", metric} <= set(t.columns):
            return {}
        return {str(s): _num(v) for s, v in zip(t["section"], pd.to_numeric(t[metric], errors="coerce"))}


def load_run(path: Path) -> Run:
    """Read one run folder; missing files stay None/empty so the page can say "not measured"."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(
            f"{path}: run folder not found; pass folders like results/{{dataset}}/{{variant}}/seed0"
        )
    mfile = path / "eval" / "metrics.json"
    metrics = _read_json(mfile) if mfile.is_file() else None
    m = metrics if isinstance(metrics, dict) else {}
    if all(k in m for k in ("dataset", "variant", "seed")):  # what evaluate says the run is (--run-id)
        ids: tuple[str, str, int] | None = (str(m["dataset"]), str(m["variant"]), int(m["seed"]))
    else:  # metrics.json written without --run-id: the folder's place in the layout
        ids = parse_run_path(path.resolve())
    if ids is None:
        raise RunError(
            f"{path}: cannot tell dataset/variant/seed; rerun evaluate with --run-id DATASET VARIANT SEED, "
            f"add 'dataset', 'variant' and 'seed' to {mfile}, or place the run at {{dataset}}/{{variant}}/seed{{seed}}"
        )
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
                    raise RunError(f"{log}: line {i + 1} is not JSON; rerun training for this run") from None
    summ = path / "train" / "train_summary.json"
    if summ.is_file():
        run.summary = _read_json(summ)
    return run


@dataclass
class DatasetView:
    """The runs of one data set: model variants (baseline first) and peers, each a list of seeds."""

    name: str
    baseline: str
    variants: dict[str, list[Run]]
    peers: dict[str, list[Run]]

    @property
    def all_runs(self) -> list[Run]:
        return [r for rs in (*self.variants.values(), *self.peers.values()) for r in rs]

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for r in self.all_runs:
            names += [k for k in r.overall if k not in names]
        return names


def _weighted(rows: list[dict[str, Any]], key: str) -> float:
    v = np.array([_num(r.get(key)) for r in rows])
    w = np.array([_num(r.get("n_cells")) for r in rows])
    ok = np.isfinite(v) & np.isfinite(w) & (w > 0)
    return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan


def pool_folds(runs: list[Run]) -> list[Run]:
    """Runs of cross-validation folds (metrics.json ``fold``) pooled into one run per (data set, variant,
    seed): its sections are every fold's test sections (each section once), so its value is the
    cell-weighted mean over all of them; cost is the sum over folds. The seed stays the unit of
    replication: folds are never observations of their own. Other runs pass through."""
    out: list[Run] = []
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for r in runs:
        fold = (r.metrics or {}).get("fold")
        if not fold:
            out.append(r)
        else:
            groups.setdefault((str(fold["dataset"]), r.variant, r.seed), []).append(r)
    for (dataset, variant, seed), rs in sorted(groups.items()):
        rs.sort(key=lambda r: int(r.metrics["fold"]["index"]))
        k = int(rs[0].metrics["fold"]["of"])
        have = [int(r.metrics["fold"]["index"]) for r in rs]
        if have != list(range(1, k + 1)):
            missing = sorted(set(range(1, k + 1)) - set(have)) or "a fold twice"
            raise RunError(
                f"{rs[0].path}: {dataset}/{variant} seed {seed} has folds {have} of {k} (missing {missing}); "
                "run every fold of a seed, or pass none of them"
            )
        rows = [row for r in rs for row in (r.metrics.get("per_section") or [])]
        names = [row.get("section") for row in rows]
        if len(set(names)) != len(names):
            raise RunError(f"{rs[0].path}: {dataset}'s folds test a section twice; rerun preprocess of its folds")
        metrics = dict(rs[0].metrics)
        keys = list(dict.fromkeys(key for r in rs for key in (r.metrics.get("overall") or {})))
        metrics["overall"] = {key: _weighted(rows, key) for key in keys}
        refs = [{"n_cells": row.get("n_cells"), **{key[len("random_"):]: v for key, v in row.items()
                                                 if key.startswith("random_")}} for row in rows]
        metrics["random_reference"] = {key: _weighted(refs, key) for key in keys}
        metrics["per_section"] = rows
        metrics["per_draw"] = [d for r in rs for d in (r.metrics.get("per_draw") or [])]
        metrics["n_sections"], metrics["n_cells"] = len(rows), int(sum(_num(row.get("n_cells")) for row in rows))
        metrics["folds"] = [str(r.path) for r in rs]
        cost = dict(metrics.get("cost") or {})
        if all("wall_time_s" in (r.metrics.get("cost") or {}) for r in rs):
            cost["wall_time_s"] = sum(float(r.metrics["cost"]["wall_time_s"]) for r in rs)
        metrics["cost"] = cost
        summary = dict(rs[0].summary) if rs[0].summary else None
        if summary is not None and all(r.summary and "wall_time_s" in r.summary for r in rs):
            summary["wall_time_s"] = sum(float(r.summary["wall_time_s"]) for r in rs)
        out.append(Run(rs[0].path, dataset, variant, seed, metrics=metrics, sections=pd.DataFrame(rows),
                       train_log=rs[0].train_log, summary=summary))
    return out


def group_runs(runs: list[Run], baseline: str) -> list[DatasetView]:
    """One view per data set (the folds of a data set pooled: ``pool_folds``), baseline variant first."""
    runs = pool_folds(runs)
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


def seed_values(runs: list[Run], metric: str) -> dict[int, float]:
    """seed -> the run's cell-weighted mean of ``metric`` over its held-out sections (finite values only)."""
    out = {}
    for r in runs:
        v = r.value(metric)
        if math.isfinite(v):
            if r.seed in out:
                raise RunError(
                    f"{r.path}: a second run of {r.dataset}/{r.variant} with seed {r.seed}; pass each once"
                )
            out[r.seed] = v
    return out


def section_values(runs: list[Run], metric: str) -> dict[str, float]:
    """held-out section -> mean over the runs (seeds) of the section's value of ``metric``."""
    per: dict[str, list[float]] = {}
    for r in runs:
        for s, v in r.section_value(metric).items():
            if math.isfinite(v):
                per.setdefault(s, []).append(v)
    return {s: float(np.mean(v)) for s, v in per.items()}
