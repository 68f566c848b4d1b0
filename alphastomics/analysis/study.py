"""The learning-curve study (docs/training.md, "How long to train"): quality against training steps.

``python -m alphastomics learning-curve --plan config/config.yaml --data-root results/data``
``--out results/study`` (= ``make learning-curve``)

For every (data set, variant, seed) one training run of ``max(budgets)`` steps keeps its checkpoint (EMA
weights) at each budget (``training.keep_checkpoints``) and stops early when the validation loss has not
improved for ``--patience`` validations; every kept checkpoint is sampled on the test sections and scored by
``evaluate``, like a run of the main workflow. One run per seed, not one per budget (a quarter of the
compute): the learning rate at step s of a long run has not decayed as it has at the end of a run with
max_steps = s (cosine schedule), so a budget's point is the quality of weights trained at a still-high
learning rate, not that of a run of that length; docs/training.md compares the two where measured. A
budget past the step where a run stopped early is scored from the stopped run's final weights. The
kNN-regression peer is scored once per data set for reference.
``--stop-after N`` cuts every run after step N (SIGTERM; train checkpoints and exits), keeping the schedule
of max(budgets): the budgets up to N are scored as if the run had gone on, for a study cut for time.
``--no-train`` trains nothing: it scores what the runs have kept so far and writes the tables. ``--set
key=value`` applies to every training run (after the plan's overrides; the study's own keys win).

Outputs under --out: runs/{dataset}/{variant}/seed{seed}/ (train folder, step{N}/metrics.json),
learning_curve.tsv (one row per data set x variant x seed x budget), learning_curve_summary.md (means over
seeds, where runs stopped, the chosen budget) and learning_curve.png. Finished pieces are not redone.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from alphastomics import AlphaSTomicsError
from alphastomics import plan as plan_module
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


def run_overrides(plan: dict[str, Any], dataset: str, variant: str | None, seed: int | None = None) -> list[str]:
    """``--set`` items of one study run: the workflow's own (``alphastomics.plan.run_blocks``: the named
    variant's attention settings included), so a study run trains what the workflow's run of that name
    trains; ``variant`` None: the peer's."""
    return plan_module.set_items(*plan_module.run_blocks(plan, dataset, variant, seed))


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _run(cmd: list[str], log: Path, stop_when: Path | None = None) -> None:
    """Run one stage, output to ``log``; with ``stop_when``, SIGTERM it once that file exists (train then
    saves checkpoints/latest.pt and exits 143, which counts as done here)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        while stop_when is not None and proc.poll() is None and not stop_when.exists():
            time.sleep(2)
        if stop_when is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
    if rc == 128 + signal.SIGTERM and stop_when is not None and stop_when.exists():
        return
    if rc != 0:
        raise StudyError(f"{log}: '{' '.join(cmd[:4])} ...' exited {rc}; see the log, fix, rerun "
                         "(finished parts are kept)")


def _score(model_config: str, sets: list[str], samples_cmd: list[str], samples: Path, data: Path,
           out: Path, log: Path) -> None:
    if (out / "metrics.json").exists():
        return
    if not samples.exists():
        _run(samples_cmd, log)
    _run([sys.executable, "-m", "alphastomics", "evaluate", "--config", model_config, *_sets(sets),
          "--samples", str(samples), "--data_dir", str(data), "--out", str(out)], log)


def one_run(plan: dict[str, Any], model_config: str, data: Path, out: Path, dataset: str, variant: str,
            seed: int, budgets: tuple[int, ...], patience: int, stop_after: int | None = None,
            train: bool = True, extra: tuple[str, ...] = ()) -> None:
    """Train one (data set, variant, seed) to max(budgets) (or cut after step ``stop_after``, the schedule
    unchanged), then score each kept checkpoint."""
    run = run_folder(out / "runs", dataset, variant, seed)
    top = max(budgets)
    sets = run_overrides(plan, dataset, variant, seed) + list(extra) + [
        f"training.max_steps={top}", f"training.early_stopping_patience={patience}",
        f"training.keep_checkpoints=[{','.join(str(b) for b in budgets)}]"]
    log = run / "study.log"
    cut = run / "train" / "checkpoints" / f"step{stop_after:06d}.pt" if stop_after else None
    finished = (run / "train" / "final.pt").exists() or (cut is not None and cut.exists())
    if not finished and train:
        _run([sys.executable, "-m", "alphastomics", "train", "--config", model_config, *_sets(sets),
              "--restart-if-config-changed", "--data_dir", str(data), "--out", str(run / "train")], log,
             stop_when=cut)
    for b in budgets:
        if stop_after and b > stop_after and not (run / "train" / "final.pt").exists():
            continue  # cut before this budget
        if not finished and not train and not (run / "train" / "checkpoints" / f"step{b:06d}.pt").exists():
            continue  # --no-train: only what an unfinished run has kept
        ckpt = run / "train" / "checkpoints" / f"step{b:06d}.pt"
        if not ckpt.exists():  # stopped early before b: the final weights stand for every later budget
            ckpt = run / "train" / "final.pt"
        samples = run / f"step{b}" / "samples.parquet"
        cmd = [sys.executable, "-m", "alphastomics", "sample", "--config", model_config, *_sets(sets),
               "--checkpoint", str(ckpt), "--data_dir", str(data), "--out", str(samples)]
        _score(model_config, sets, cmd, samples, data, run / f"step{b}" / "eval", log)


def peer_run(plan: dict[str, Any], model_config: str, data: Path, out: Path, dataset: str) -> None:
    run = run_folder(out / "runs", dataset, peer_variant("knn"), 0)
    sets = run_overrides(plan, dataset, None)
    samples = run / "samples.parquet"
    cmd = [sys.executable, "-m", "alphastomics", "baseline", "--config", model_config, *_sets(sets),
           "--method", "knn", "--seed", "0", "--data_dir", str(data), "--out", str(samples)]
    _score(model_config, sets, cmd, samples, data, run / "eval", run / "study.log")


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
    plan_path = Path(args.plan)
    try:
        plan = yaml.safe_load(plan_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"{plan_path}: not a readable workflow config ({type(err).__name__}); "
                         "pass config/config.yaml") from None
    model_config = str(args.config[0]) if args.config else plan.get("model_config", "config/model.yaml")
    datasets = args.datasets or list(plan["datasets"])
    variants = list(args.variants or DEFAULT_VARIANTS)
    seeds = list(DEFAULT_SEEDS if args.seeds is None else args.seeds)
    budgets = tuple(sorted(args.budgets or DEFAULT_BUDGETS))
    patience = DEFAULT_PATIENCE if args.patience is None else args.patience
    for name, known, field in ((datasets, plan["datasets"], "datasets"),
                               (variants, plan["variants"], "variants")):
        unknown = [n for n in name if n not in known]
        if unknown:
            raise StudyError(f"{plan_path}: {field} has no {unknown}; use some of {list(known)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {ds: Path(args.data_root) / ds / "processed" for ds in datasets}
    for ds, path in data.items():
        if not (path / "manifest.json").exists():
            raise StudyError(f"{path}: no processed data; run `snakemake {path}` (or make run) first")
    # seed-major order: if the study is cut short, every (data set, variant) has its first seed.
    jobs = [(ds, v, s) for s in seeds for v in variants for ds in datasets]
    only = getattr(args, "only", None)  # one piece for a workflow job (workflow/rules/study.smk), no tables
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [] if only == "runs" else [pool.submit(peer_run, plan, model_config, data[ds], out, ds)
                                             for ds in datasets]
        futures += [] if only == "peers" else [
            pool.submit(one_run, plan, model_config, data[ds], out, ds, v, s, budgets, patience,
                        args.stop_after, not args.no_train, tuple(args.overrides)) for ds, v, s in jobs]
        errors = [f.exception() for f in futures if f.exception() is not None]
    if only:
        if errors:
            raise StudyError("; ".join(str(e) for e in errors))
        return 0
    rows = collect(out, datasets, variants, seeds, budgets)
    peers = peer_scores(out, datasets)
    chosen = write_tables(out, rows, budgets, peers)
    if rows:
        plot(out, rows, budgets, peers)
    print((out / "learning_curve_summary.md").read_text(), file=sys.stderr)
    if errors:
        raise StudyError("; ".join(str(e) for e in errors))
    print(f"learning-curve: {len(rows)} scored checkpoints, chosen budget {chosen.get('all')} -> {out}",
          file=sys.stderr)
    return 0
