"""The learning-curve study (docs/training.md, "How long to train"): quality against training steps.

``make learning-curve`` (= ``snakemake learning_curve``, workflow/rules/study.smk) runs the jobs: for every
(data set, variant, seed) one training run of ``max(budgets)`` steps keeps its checkpoint (EMA weights) at each
budget (``training.keep_checkpoints``) and stops early when the validation loss has not improved for
``DEFAULT_PATIENCE`` validations; every kept checkpoint is sampled on the test sections and scored by
``evaluate``, like a run of the main workflow, and the kNN-regression peer is scored once per data set. One
run per seed, not one per budget (a quarter of the compute): the learning rate at step s of a long run has not
decayed as it has at the end of a run with max_steps = s (cosine schedule), so a budget's point is the quality
of weights trained at a still-high learning rate, not that of a run of that length. A budget past the step
where a run stopped early is scored from the stopped run's final weights.

This module collects and plots: ``python -m alphastomics learning-curve --out results/study`` reads the scores
under ``--out``/runs/{dataset}/{variant}/seed{seed}/step{N}/eval/metrics.json and writes learning_curve.tsv (one
row per data set x variant x seed x budget), learning_curve_summary.md (means over seeds, where runs stopped,
the chosen budget) and learning_curve.png.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from alphastomics import AlphaSTomicsError
from alphastomics.layout import peer_variant, run_folder

DEFAULT_VARIANTS = ("linear", "softmax", "gated_headwise")
DEFAULT_SEEDS = (0, 1)
DEFAULT_BUDGETS = (250, 400, 1000, 2000)  # 400: the training.max_steps of config/model.yaml
DEFAULT_PATIENCE = 5  # validations (training.val_every steps apart) without improvement
METRICS = ("knn_preservation", "distance_spearman", "procrustes_rmsd_scaled", "distance_mse")
WITHIN = 0.02  # the chosen budget's kNN preservation is within 2 % of the top budget's
ALL_VARIANTS = "all variants"  # the summary's rows of means over variants and seeds


class StudyError(AlphaSTomicsError):
    pass


# ------------------------------------------------------------------------------------------------------
# Tables, the chosen budget, the figure


def _records(metrics_jsonl: Path) -> list[dict[str, Any]]:
    """The records of a training run's metrics.jsonl, in order; none for a missing file."""
    if not metrics_jsonl.is_file():
        return []
    return [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]


def _last_at(metrics_jsonl: Path, step: int, field: str) -> float:
    """``field`` of the last metrics.jsonl record at or before ``step`` that has it (val_loss: the last
    validation; elapsed_s: training time by then)."""
    last = math.nan
    for line in metrics_jsonl.read_text().splitlines():
        rec = json.loads(line)
        if field in rec and rec["step"] <= step:
            last = rec[field]
    return last


def collect(out: Path, datasets: list[str], variants: list[str], seeds: list[int],
            budgets: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for ds in datasets:
        for v in variants:
            for s in seeds:
                run = run_folder(out / "runs", ds, v, s)
                summ = run / "train" / "train_summary.json"
                if summ.exists():
                    summary = json.loads(summ.read_text())
                    stopped = summary["steps"] if summary["stopped_early"] else ""
                elif (run / "train" / "checkpoints" / "latest.pt").exists():  # cut (--stop-after)
                    # read from the metric lines, not the checkpoint: the analysis loads no torch
                    records = _records(run / "train" / "metrics.jsonl")
                    validated = [r for r in records if "val_loss" in r]
                    best = min(validated, key=lambda r: r["val_loss"])["step"] if validated else ""
                    summary = {"best_val_step": best}
                    stopped = f"cut {records[-1]['step']}" if records else "cut"
                else:
                    continue
                for b in budgets:
                    mpath = run / f"step{b}" / "eval" / "metrics.json"
                    if not mpath.exists():
                        continue
                    overall = json.loads(mpath.read_text())["overall"]
                    rows.append({
                        "dataset": ds, "variant": v, "seed": s, "budget": b,
                        "val_loss": _last_at(run / "train" / "metrics.jsonl", b, "val_loss"),
                        "train_s": _last_at(run / "train" / "metrics.jsonl", b, "elapsed_s"),
                        **{m: overall.get(m, math.nan) for m in METRICS},
                        "stopped_at": stopped,
                        "best_val_step": summary.get("best_val_step", ""),
                    })
    return rows


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


def choose_budget(rows: list[dict[str, Any]], budgets: tuple[int, ...]) -> dict[str, int]:
    """Per data set: the smallest budget whose kNN preservation (mean over variants and seeds) is within
    WITHIN of the top budget's, the top being the largest budget that every variant of the data set
    reached (a study cut with --stop-after has the longer budgets for some runs only); 'all' is the
    largest of those."""
    chosen: dict[str, int] = {}
    for ds in sorted({r["dataset"] for r in rows}):
        variants = {r["variant"] for r in rows if r["dataset"] == ds}
        common = [b for b in budgets
                  if {r["variant"] for r in rows if r["dataset"] == ds and r["budget"] == b} == variants]
        if not common:
            continue
        mean = {b: _mean([r["knn_preservation"] for r in rows if r["dataset"] == ds and r["budget"] == b])
                for b in common}
        top = mean[max(common)]
        ok = [b for b in sorted(common) if not math.isnan(mean[b]) and mean[b] >= (1 - WITHIN) * top]
        if ok:
            chosen[ds] = ok[0]
    if chosen:
        chosen["all"] = max(chosen.values())
    return chosen


def peer_scores(out: Path, datasets: list[str]) -> dict[str, dict[str, float]]:
    res = {}
    for ds in datasets:
        p = run_folder(out / "runs", ds, peer_variant("knn"), 0) / "eval" / "metrics.json"
        if p.exists():
            o = json.loads(p.read_text())["overall"]
            res[ds] = {m: o.get(m, math.nan) for m in METRICS}
    return res


def write_tables(out: Path, rows: list[dict[str, Any]], budgets: tuple[int, ...],
                 peers: dict[str, dict[str, float]]) -> dict[str, int]:
    cols = ["dataset", "variant", "seed", "budget", "val_loss", *METRICS, "train_s", "stopped_at",
            "best_val_step"]
    tsv = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
    (out / "learning_curve.tsv").write_text("\n".join(tsv) + "\n")
    chosen = choose_budget(rows, budgets)
    lines = ["| data set | variant | steps | seeds | val loss | kNN pres. | dist. Spearman | scaled "
             "Procrustes RMSD | dist. MSE | train s | stopped at (per seed) |", "|" + "---|" * 11]
    for ds in sorted({r["dataset"] for r in rows}):
        # Per variant, then "all variants": the mean over every run of a budget, which choose_budget reads.
        for v in [*dict.fromkeys(r["variant"] for r in rows if r["dataset"] == ds), ALL_VARIANTS]:
            for b in budgets:
                sel = [r for r in rows if r["dataset"] == ds and v in (r["variant"], ALL_VARIANTS)
                       and r["budget"] == b]
                if not sel:
                    continue
                stops = "-" if v == ALL_VARIANTS else ", ".join(str(r["stopped_at"] or "-") for r in sel)
                lines.append(
                    f"| {ds} | {v} | {b} | {len(sel)} | {_mean([r['val_loss'] for r in sel]):.3f} | "
                    + " | ".join(f"{_mean([r[m] for r in sel]):.3f}" for m in METRICS)
                    + f" | {_mean([r['train_s'] for r in sel]):.0f} | {stops} |")
        if ds in peers:
            lines.append(f"| {ds} | kNN-regression peer | - | 1 | - | "
                         + " | ".join(f"{peers[ds][m]:.3f}" for m in METRICS) + " | - | - |")
    lines.append("")
    for ds, b in chosen.items():
        lines.append(f"- chosen budget ({ds}): {b} steps (smallest with mean kNN preservation over variants "
                     f"and seeds >= {1 - WITHIN:.2f} x that of the longest budget all variants reached)")
    (out / "learning_curve_summary.md").write_text("\n".join(lines) + "\n")
    return chosen


def plot(out: Path, rows: list[dict[str, Any]], budgets: tuple[int, ...],
         peers: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    panels = ["val_loss", *METRICS]
    fig, axes = plt.subplots(len(datasets), len(panels), figsize=(3.2 * len(panels), 2.8 * len(datasets)),
                             squeeze=False)
    for i, ds in enumerate(datasets):
        for j, m in enumerate(panels):
            ax = axes[i][j]
            for v in dict.fromkeys(r["variant"] for r in rows if r["dataset"] == ds):
                xs, ys = [], []
                for b in budgets:
                    sel = [r[m] for r in rows
                           if r["dataset"] == ds and r["variant"] == v and r["budget"] == b]
                    if sel:
                        xs.append(b)
                        ys.append(_mean(sel))
                ax.plot(xs, ys, marker="o", label=v)
                for r in rows:  # each seed as a dot
                    if r["dataset"] == ds and r["variant"] == v:
                        ax.scatter(r["budget"], r[m], s=6, color=ax.lines[-1].get_color(), alpha=0.5)
            if ds in peers and m in peers[ds]:
                ax.axhline(peers[ds][m], color="k", ls="--", lw=1, label="kNN peer")
            ax.set_xscale("log")
            ax.set_xticks(list(budgets), [f"{b:,}" for b in budgets])
            ax.minorticks_off()
            ax.set_title(f"{ds}: {m}", fontsize=9)
            ax.set_xlabel("training steps", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    tmp = out / ".learning_curve.png.tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out / "learning_curve.png")


def main(args: Any, cfg: Any) -> int:
    """Collect what the workflow's study jobs scored under ``--out`` and write the tables and the figure."""
    out = Path(args.out)
    datasets = list(args.datasets or [])
    if not datasets:
        datasets = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) if (out / "runs").is_dir() else []
    if not datasets:
        raise StudyError(f"{out / 'runs'}: no study runs; run make learning-curve (snakemake learning_curve)")
    variants = list(args.variants or DEFAULT_VARIANTS)
    seeds = list(DEFAULT_SEEDS if args.seeds is None else args.seeds)
    budgets = tuple(sorted(args.budgets or DEFAULT_BUDGETS))
    rows = collect(out, datasets, variants, seeds, budgets)
    peers = peer_scores(out, datasets)
    chosen = write_tables(out, rows, budgets, peers)
    if rows:
        plot(out, rows, budgets, peers)
    print((out / "learning_curve_summary.md").read_text(), file=sys.stderr)
    print(f"learning-curve: {len(rows)} scored checkpoints, chosen budget {chosen.get('all')} -> {out}",
          file=sys.stderr)
    return 0
