"""Stability at larger learning rates and speed of convergence: the gated-attention paper's training claims
(Qiu et al., NeurIPS 2025: gating "supports larger learning rates" and converges faster), measured on a
learning-rate sweep (``make stability``; config/stability.yaml; docs/training.md, "Stability and
convergence"). Analysis only: it reads run folders (``train/metrics.jsonl``, ``eval/metrics.json``) and
never imports torch.

``python -m alphastomics stability --plan config/stability.yaml --root results --out results/stability``
writes ``stability.json`` (shape: ``analyse``), ``stability.md`` (``markdown``) and ``stability.png``
(``plot``); ``--markdown results/stability`` prints the tables of a written JSON.

The sweep's runs are the workflow's own: variant V at rate r is the variant ``V_lr{r}``
(``alphastomics.plan.expand_variants``), logged every step. Per run:

- **diverged**: a step whose loss or gradient norm was non-finite (train skipped it and logged a
  ``nonfinite`` line), or a loss that never falls below its value at the end of warm-up: the median of
  every later window of SPIKE_WINDOW consecutive steps (all after warm-up) stays at or above the median of
  the last SPIKE_WINDOW steps of warm-up (which ends at the first step at the peak learning rate). Medians of
  windows, not single steps: one step's loss varies with its batch and diffusion times, so one lucky step
  would otherwise count as progress;
- **spikes**: steps whose loss exceeds SPIKE_FACTOR x the median of the finite losses of the previous
  SPIKE_WINDOW steps, tested once MIN_HISTORY of those exist (earlier, a median of two or three values is
  not a baseline). Why 2 and 20: docs/training.md;
- the largest gradient norm before clipping (``grad_norm`` of metrics.jsonl is what ``clip_grad_norm_``
  returns: the norm before it clips);
- placement: each metric's cell-weighted mean over the held-out sections (``runs.Run.value``, as the
  verdict);
- convergence, on the validation loss of the EMA weights (the same seeded noise at every validation, so
  the values compare across steps; the weights sampling uses): the first validation step at which the curve
  has made PLATEAU_SHARE of its fall from its first validation to its plateau (the mean of its last
  PLATEAU_POINTS validations), and to the common target of its rate and seed (the highest plateau among the
  runs of that rate and seed that did not diverge: a loss every one of them reaches).

Per variant: the largest rate at which every seed trains without diverging. At each rate: paired
differences over seeds (gated variants vs linear and vs softmax) of placement and of steps to converge,
each a ``verdict.compare`` record (95 % t interval over seeds; descriptive, no Holm: not a declared family).

Long because the sweep's whole analysis is one stage: the divergence and spike rules, the largest stable
rate, convergence, the paired tests per rate, and its tables and figure.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alphastomics import AlphaSTomicsError
from alphastomics import plan as plan_module
from alphastomics.analysis.runs import finite as _finite
from alphastomics.analysis.runs import load_run
from alphastomics.analysis.verdict import compare
from alphastomics.artifacts import atomic_write_text, json_safe, read_json
from alphastomics.layout import run_folder
from alphastomics.variants import VARIANTS

SCHEMA = "alphastomics.stability/1"
SPIKE_FACTOR = 2.0
SPIKE_WINDOW = 20  # steps; also the window of the divergence rule's medians
MIN_HISTORY = 5  # earlier finite losses a step needs before it is tested for a spike
PLATEAU_SHARE = 0.95
PLATEAU_POINTS = 3  # last validations averaged into the plateau (steps 360-400 at val_every 20)
PLACEMENT = ("knn_preservation", "distance_spearman", "procrustes_rmsd_scaled")
REFERENCES = ("linear", "softmax")
CONVERGENCE = ("steps_to_plateau", "steps_to_common")


class StabilityError(AlphaSTomicsError):
    pass


def _median(values: Sequence[float]) -> float:
    vals = [v for v in values if _finite(v)]
    return statistics.median(vals) if vals else math.nan


# ------------------------------------------------------------------------------------------------------
# The rules, on plain series (tests/test_stability.py checks them by hand)


def spike_positions(losses: Sequence[float], factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW,
                    min_history: int = MIN_HISTORY) -> list[int]:
    """Positions i with loss_i > factor x median(finite losses of positions i-window .. i-1), tested only
    when at least ``min_history`` of those are finite; a non-finite loss is never a spike (it is counted as
    non-finite) and never part of a later step's baseline."""
    out = []
    for i, x in enumerate(losses):
        previous = [v for v in losses[max(0, i - window):i] if _finite(v)]
        if _finite(x) and len(previous) >= min_history and x > factor * statistics.median(previous):
            out.append(i)
    return out


def divergence(losses: Sequence[float], warmup_end: int, window: int = SPIKE_WINDOW,
               nonfinite: int = 0) -> tuple[bool | None, str | None]:
    """(diverged, why) of one loss series (one value per step; ``warmup_end``: the position of the first
    step at the peak learning rate; ``nonfinite``: steps train skipped). None when no step follows warm-up."""
    bad = nonfinite + sum(1 for v in losses if not _finite(v))
    if bad:
        return True, f"non-finite loss or gradient at {bad} step(s)"
    reference = _median(losses[max(0, warmup_end - window + 1):warmup_end + 1])
    after = list(losses[warmup_end + 1:])
    if not after:
        return None, "no step after warm-up"
    k = min(window, len(after))
    lowest = min(_median(after[j:j + k]) for j in range(len(after) - k + 1))
    if lowest < reference:
        return False, None
    return True, f"loss never fell below its end-of-warm-up value {reference:.4g} (lowest: {lowest:.4g})"


def plateau(values: Sequence[float], points: int = PLATEAU_POINTS) -> float:
    """The mean of the last ``points`` finite values of a curve."""
    vals = [v for v in values if _finite(v)][-points:]
    return sum(vals) / len(vals) if vals else math.nan


def steps_to_level(steps: Sequence[int], values: Sequence[float], level: float,
                   share: float = PLATEAU_SHARE) -> int | None:
    """The first step at which a falling curve has made ``share`` of its fall from its first value to
    ``level``: values[0] - v >= share x (values[0] - level). None when the curve does not fall to the level
    (level >= first value) or never gets that far."""
    pairs = [(s, v) for s, v in zip(steps, values) if _finite(v)]
    if not pairs or not _finite(level) or level >= pairs[0][1]:
        return None
    first = pairs[0][1]
    return next((s for s, v in pairs if first - v >= share * (first - level)), None)


# ------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunCurves:
    """One run of the sweep: what analyse and plot read from its folder."""

    dataset: str
    variant: str  # the base variant (linear, gated_headwise, ...)
    name: str  # the sweep's variant name (linear_lr1e-3)
    learning_rate: float
    seed: int
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    warmup_end: int = 0  # position in steps/losses
    nonfinite: int = 0
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    placement: dict[str, float] = field(default_factory=dict)


def read_run(path: Path, dataset: str, variant: str, name: str, lr: float, seed: int) -> RunCurves:
    """Per-step loss and gradient norm, the validation curve and the placement of one run folder."""
    run = load_run(path)
    c = RunCurves(dataset, variant, name, lr, seed)
    lrs = []
    for rec in run.train_log:
        if "val_loss" in rec:
            c.val_steps.append(int(rec["step"]))
            c.val_losses.append(rec["val_loss"] if _finite(rec["val_loss"]) else math.nan)
        elif rec.get("nonfinite"):
            c.nonfinite += 1
            c.steps.append(int(rec["step"]))
            c.losses.append(math.nan)
            c.grad_norms.append(math.nan)
            lrs.append(math.nan)
        elif "loss" in rec:
            c.steps.append(int(rec["step"]))
            c.losses.append(rec["loss"] if _finite(rec["loss"]) else math.nan)
            c.grad_norms.append(rec.get("grad_norm") if _finite(rec.get("grad_norm")) else math.nan)
            lrs.append(rec.get("lr", math.nan))
    peak = max((v for v in lrs if _finite(v)), default=math.nan)
    # The end of warm-up: the first step at the peak rate (train.lr_at reaches it at step warmup_steps).
    c.warmup_end = next((i for i, v in enumerate(lrs) if _finite(v) and v >= peak * (1 - 1e-9)), 0)
    c.placement = {m: run.value(m) for m in PLACEMENT}
    return c


def sweep_runs(plan: dict[str, Any]) -> list[tuple[str, str, str, float, int]]:
    """(dataset, base variant, sweep name, rate, seed) of every run the plan's sweep trains; the references
    (linear, softmax) first, then the plan's order, rates ascending."""
    if not plan.get("learning_rates"):
        raise StabilityError("the plan has no learning_rates: pass a sweep's config (config/stability.yaml)")
    order = [*(v for v in REFERENCES if v in plan["variants"]), *plan["variants"]]
    out = []
    for ds in plan_module.expand_datasets(plan["datasets"]):
        for name, entry in plan_module.expand_variants(plan).items():
            for seed in plan_module.dataset_seeds(plan, ds):
                out.append((ds, entry["base"], name, float(entry["learning_rate"]), seed))
    return sorted(out, key=lambda r: (r[0], order.index(r[1]), r[3], r[4]))


def collect(plan: dict[str, Any], root: Path) -> tuple[list[RunCurves], list[str]]:
    """The curves of every run of the sweep found under ``root``, and the folders not found."""
    curves, missing = [], []
    for ds, variant, name, lr, seed in sweep_runs(plan):
        path = run_folder(root, ds, name, seed)
        if (path / "train" / "metrics.jsonl").is_file():
            curves.append(read_run(path, ds, variant, name, lr, seed))
        else:
            missing.append(str(path))
    return curves, missing


# ------------------------------------------------------------------------------------------------------
# The analysis: one JSON


def run_record(c: RunCurves) -> dict[str, Any]:
    diverged, why = divergence(c.losses, c.warmup_end, nonfinite=c.nonfinite)
    spikes = spike_positions(c.losses)
    grads = [(g, s) for g, s in zip(c.grad_norms, c.steps) if _finite(g)]
    top = max(grads, default=(math.nan, None))
    warm = c.losses[max(0, c.warmup_end - SPIKE_WINDOW + 1):c.warmup_end + 1]
    return {
        "dataset": c.dataset, "variant": c.variant, "name": c.name, "learning_rate": c.learning_rate,
        "seed": c.seed, "steps": c.steps[-1] if c.steps else 0, "diverged": diverged, "divergence": why,
        "nonfinite_steps": c.nonfinite, "warmup_end_step": c.steps[c.warmup_end] if c.steps else None,
        "warmup_loss": _median(warm), "final_loss": _median(c.losses[-SPIKE_WINDOW:]),
        "spikes": len(spikes), "spike_steps": [c.steps[i] for i in spikes],
        "max_grad_norm": top[0], "max_grad_norm_step": top[1],
        "val_first": next((v for v in c.val_losses if _finite(v)), math.nan),
        "plateau": plateau(c.val_losses),
        **c.placement,
    }


def add_convergence(records: list[dict[str, Any]], curves: list[RunCurves]) -> None:
    """steps_to_plateau and, per (data set, rate, seed), the common target and steps_to_common; diverged
    runs get None (their curve has no plateau to reach)."""
    by_key = {(c.dataset, c.name, c.seed): c for c in curves}
    for r in records:
        c = by_key[(r["dataset"], r["name"], r["seed"])]
        ok = r["diverged"] is False
        r["steps_to_plateau"] = steps_to_level(c.val_steps, c.val_losses, r["plateau"]) if ok else None
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["learning_rate"], r["seed"]), []).append(r)
    for group in groups.values():
        plateaus = [r["plateau"] for r in group if r["diverged"] is False and _finite(r["plateau"])]
        target = max(plateaus, default=math.nan)
        for r in group:
            c = by_key[(r["dataset"], r["name"], r["seed"])]
            r["common_target"] = target
            ok = r["diverged"] is False
            r["steps_to_common"] = steps_to_level(c.val_steps, c.val_losses, target) if ok else None


def max_stable_lr(records: list[dict[str, Any]], seeds: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per (data set, variant): the largest rate at which every seed of the data set ran and none diverged
    (None: no such rate), and whether that is the sweep's largest (the limit lies beyond the sweep)."""
    rates = sorted({r["learning_rate"] for r in records})
    out: dict[str, dict[str, Any]] = {}
    for ds, variant in dict.fromkeys((r["dataset"], r["variant"]) for r in records):
        stable = [lr for lr in rates
                  if len([r for r in records if (r["dataset"], r["variant"], r["learning_rate"]) ==
                          (ds, variant, lr) and r["diverged"] is False]) == seeds[ds]]
        best = max(stable, default=None)
        out.setdefault(ds, {})[variant] = {"learning_rate": best, "beyond_sweep": best == max(rates)}
    return out


def summaries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (data set, variant, rate): seeds, diverged seeds, spikes, gradient norm, losses, convergence and
    placement over the seeds (means; the largest gradient norm is the largest of any seed)."""
    out = []
    keys = dict.fromkeys((r["dataset"], r["variant"], r["learning_rate"]) for r in records)
    for ds, variant, lr in keys:
        sel = [r for r in records if (r["dataset"], r["variant"], r["learning_rate"]) == (ds, variant, lr)]

        def mean(key: str) -> float:
            vals = [r[key] for r in sel if _finite(r[key])]
            return sum(vals) / len(vals) if vals else math.nan

        out.append({
            "dataset": ds, "variant": variant, "learning_rate": lr, "seeds": len(sel),
            "diverged": sum(1 for r in sel if r["diverged"]), "spikes_mean": mean("spikes"),
            "max_grad_norm": max((r["max_grad_norm"] for r in sel if _finite(r["max_grad_norm"])),
                                 default=math.nan),
            **{k: mean(k) for k in ("final_loss", "plateau", *CONVERGENCE, *PLACEMENT)},
        })
    return out


def gated(variants: Sequence[str]) -> list[str]:
    return [v for v in variants if v in VARIANTS and VARIANTS[v].gate != "none"]


def paired(records: list[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """At each (data set, rate): every gated variant vs linear and vs softmax, paired by seed, per metric
    (``verdict.compare``: mean difference and its 95 % t interval over the seeds both have a value for)."""
    out = []
    variants = list(dict.fromkeys(r["variant"] for r in records))
    for ds, lr in dict.fromkeys((r["dataset"], r["learning_rate"]) for r in records):
        at = [r for r in records if (r["dataset"], r["learning_rate"]) == (ds, lr)]
        for v in gated(variants):
            for ref in (x for x in REFERENCES if x in variants):
                for m in metrics:
                    a = {r["seed"]: r[m] for r in at if r["variant"] == v and _finite(r[m])}
                    b = {r["seed"]: r[m] for r in at if r["variant"] == ref and _finite(r[m])}
                    out.append({"learning_rate": lr, **compare(ds, v, ref, m, a, b)})
    return out


def claims(stable: dict[str, dict[str, Any]], convergence: list[dict[str, Any]],
           rates: list[float]) -> list[dict[str, Any]]:
    """The two claims as the report's claims table reads them: per gated variant and reference, the largest
    stable rates side by side, and the paired difference in steps to the common target at the sweep's
    smallest rate (the package default, where every variant trains)."""
    out = []
    for ds, per in stable.items():
        for v in gated(list(per)):
            for ref in (x for x in REFERENCES if x in per):
                a, b = per[v]["learning_rate"], per[ref]["learning_rate"]
                out.append({"claim": "supports larger learning rates", "dataset": ds, "variant": v,
                            "reference": ref, "variant_max_stable_lr": a, "reference_max_stable_lr": b,
                            "variant_beyond_sweep": per[v]["beyond_sweep"],
                            "reference_beyond_sweep": per[ref]["beyond_sweep"],
                            "ratio": a / b if a and b else None})
    lowest = min(rates) if rates else None
    for rec in convergence:
        if rec["learning_rate"] == lowest and rec["metric"] == "steps_to_common":
            out.append({"claim": "faster convergence", **{k: rec[k] for k in (
                "dataset", "variant", "reference", "learning_rate", "metric", "n", "variant_mean",
                "reference_mean", "mean_difference", "ci_low", "ci_high")}})
    return out


def analyse(curves: list[RunCurves], seeds: dict[str, int], missing: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON (docs/training.md, "Stability and convergence", lists its fields): rules, runs, per-rate
    summaries, the largest stable rate, paired placement and convergence, the claims."""
    records = [run_record(c) for c in curves]
    add_convergence(records, curves)
    rates = sorted({r["learning_rate"] for r in records})
    stable = max_stable_lr(records, seeds)
    convergence = paired(records, CONVERGENCE)
    return json_safe({
        "schema": SCHEMA,
        "rules": {"spike_factor": SPIKE_FACTOR, "spike_window": SPIKE_WINDOW, "min_history": MIN_HISTORY,
                  "plateau_share": PLATEAU_SHARE, "plateau_points": PLATEAU_POINTS,
                  "convergence_curve": "val_loss (EMA weights)", "interval": "95 % t over seeds"},
        "learning_rates": rates,
        "variants": list(dict.fromkeys(r["variant"] for r in records)),
        "seeds": seeds,
        "missing_runs": list(missing),
        "runs": records,
        "summary": summaries(records),
        "max_stable_lr": stable,
        "placement": paired(records, PLACEMENT),
        "convergence": convergence,
        "claims": claims(stable, convergence, rates),
    })


# ------------------------------------------------------------------------------------------------------
# Tables and the figure


def _num(x: Any, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _diff(rec: dict[str, Any], fmt: str) -> str:
    if rec["mean_difference"] is None:
        return "-"
    ci = "" if rec["ci_low"] is None else f" [{rec['ci_low']:{fmt}}, {rec['ci_high']:{fmt}}]"
    return f"{rec['mean_difference']:+{fmt}}{ci} (n {rec['n']})"


def markdown(doc: dict[str, Any]) -> str:
    """The tables of docs/results.md from a stability.json."""
    rate = plan_module.lr_tag
    lines = ["### Divergence, spikes and placement per learning rate", "",
             "| data set | variant | lr | diverged / seeds | spikes per run | largest grad norm | final loss "
             "| steps to plateau | kNN pres. | dist. Spearman |", "|" + "---|" * 10]
    for s in doc["summary"]:
        cells = [s["dataset"], s["variant"], rate(s["learning_rate"]), f"{s['diverged']} / {s['seeds']}",
                 _num(s["spikes_mean"], ".1f"), _num(s["max_grad_norm"], ".3g"), _num(s["final_loss"]),
                 _num(s["steps_to_plateau"], ".0f"), _num(s["knn_preservation"]),
                 _num(s["distance_spearman"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### The largest learning rate at which every seed trains without diverging", "",
              "| data set | variant | largest stable lr |", "|---|---|---|"]
    for ds, per in doc["max_stable_lr"].items():
        for v, rec in per.items():
            lr = "none" if rec["learning_rate"] is None else rate(rec["learning_rate"])
            beyond = " (the sweep's largest: the limit lies beyond)" if rec["beyond_sweep"] else ""
            lines.append(f"| {ds} | {v} | {lr}{beyond} |")
    for title, key, metrics, fmt in (
            ("Placement, gated - reference, paired over seeds (mean [95 % interval])", "placement",
             PLACEMENT, ".3f"),
            ("Steps to converge, gated - reference, paired over seeds (mean [95 % interval])", "convergence",
             CONVERGENCE, ".0f")):
        head = "| data set | lr | variant | reference | " + " | ".join(metrics) + " |"
        lines += ["", f"### {title}", "", head, "|" + "---|" * (4 + len(metrics))]
        rows: dict[tuple, dict[str, str]] = {}
        for rec in doc[key]:
            k = (rec["dataset"], rec["learning_rate"], rec["variant"], rec["reference"])
            rows.setdefault(k, {})[rec["metric"]] = _diff(rec, fmt)
        for (ds, lr, v, ref), cells in rows.items():
            values = " | ".join(cells.get(m, "-") for m in metrics)
            lines.append(f"| {ds} | {rate(lr)} | {v} | {ref} | {values} |")
    if doc["missing_runs"]:
        lines += ["", f"Runs not found ({len(doc['missing_runs'])}): " + ", ".join(doc["missing_runs"][:5])
                  + (" ..." if len(doc["missing_runs"]) > 5 else "")]
    return "\n".join(lines) + "\n"


def _smoothed(losses: Sequence[float], window: int = SPIKE_WINDOW) -> list[float]:
    return [_median(losses[max(0, i - window + 1):i + 1]) for i in range(len(losses))]


def plot(curves: list[RunCurves], path: Path) -> None:
    """One panel per learning rate, one colour per variant: each seed's loss (running median of
    SPIKE_WINDOW steps) faint, their mean bold; log scale, as a diverging loss grows by orders."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({c.learning_rate for c in curves})
    variants = list(dict.fromkeys(c.variant for c in curves))
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates), 3.0), sharey=True, squeeze=False)
    for ax, lr in zip(axes[0], rates):
        for i, v in enumerate(variants):
            color = f"C{i}"
            runs = [c for c in curves if c.learning_rate == lr and c.variant == v]
            per_step: dict[int, list[float]] = {}
            for c in runs:
                ys = _smoothed(c.losses)
                ax.plot(c.steps, ys, color=color, alpha=0.25, lw=0.7)
                for s, y in zip(c.steps, ys):
                    if _finite(y):
                        per_step.setdefault(s, []).append(y)
            xs = sorted(per_step)
            ax.plot(xs, [sum(per_step[s]) / len(per_step[s]) for s in xs], color=color, lw=1.6, label=v)
        diverged = sum(1 for c in curves if c.learning_rate == lr
                       and divergence(c.losses, c.warmup_end, nonfinite=c.nonfinite)[0])
        runs = sum(c.learning_rate == lr for c in curves)
        ax.set_title(f"lr {plan_module.lr_tag(lr)} ({diverged} of {runs} runs diverged)", fontsize=9)
        ax.set_yscale("log")
        # a few labelled ticks (0.2, 0.5, 1, 2, 5, ...), none on the minor ticks, which would overlap
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))  # 0.2, not 2 x 10^-1
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"training loss (median of {SPIKE_WINDOW} steps)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(args: Any, cfg: Any) -> int:
    if args.markdown is not None:
        src = args.markdown / "stability.json" if args.markdown.is_dir() else args.markdown
        if not src.is_file():
            raise StabilityError(f"{src}: no stability.json; run `make stability` first")
        text = markdown(read_json(src, "rerun `make stability` to rewrite it", StabilityError))
        if args.out:
            atomic_write_text(args.out, text)
        else:
            print(text, end="")
        return 0
    try:
        plan = yaml.safe_load(args.plan.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StabilityError(f"{args.plan}: not a readable workflow config ({type(err).__name__}); "
                             "pass config/stability.yaml") from None
    out = Path(args.out or plan.get("report_dir") or "results/stability")
    out.mkdir(parents=True, exist_ok=True)
    curves, missing = collect(plan, args.root)
    if not curves:
        raise StabilityError(f"{args.root}: none of the sweep's runs found (e.g. {missing[0]}); run `make "
                             "stability` first")
    datasets = plan_module.expand_datasets(plan["datasets"])
    seeds = {ds: len(plan_module.dataset_seeds(plan, ds)) for ds in datasets}
    doc = analyse(curves, seeds, missing)
    atomic_write_text(out / "stability.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(out / "stability.md", markdown(doc))
    plot(curves, out / "stability.png")
    diverged = sum(1 for r in doc["runs"] if r["diverged"])
    print(f"stability: {len(curves)} runs ({diverged} diverged, {len(missing)} not found) -> {out}",
          file=sys.stderr)
    return 0
