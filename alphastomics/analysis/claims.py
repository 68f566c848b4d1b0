"""The design note's claims, one table: verdict.json ``claims``, section 2 of the report, docs/results.md.

Every claim the note makes for gated attention (DESIGN.md, "Gated Attention for AlphaSTomics") is one or more
rows: how it is measured, on which data set and task, the measured effect with its interval and smallest
detectable effect, and a mark. A campaign fills the rows its runs can measure (``make claims`` runs every task:
config/claims.yaml); every other row says why it is not measured and which target measures it.

- Effects against linear attention (expression MSE, position distance MSE, masked reconstruction, kNN
  preservation, Moran's I, joint-mode consistency): the verdict's paired records over seeds. met = the 95 %
  interval of the relative change excludes 0 and reaches the expected range (or beyond it, in the expected
  direction); inconclusive = it overlaps both 0 and that range; not met = it misses the range.
- No attention sink: per variant, layer and head the largest share of attention one cell receives (mean over
  sections and seeds); judged on the worst head, beside the ungated softmax control's worst head.
- Larger learning rates, faster convergence: the learning-rate sweep (``alphastomics.analysis.stability``).
- Gate over diffusion time: per gated variant and layer, the gate mean at each of ``evaluation.gate_times``
  per seed, ``stats.time_effect`` (variation across t against variation across seeds), Holm over the layers
  and variants tested.
- Healthy gate range: the note's mean ~0.5 and std ~0.2, beside the paper's sparse gates (share < 0.1).
- Parameter overhead: counted at the note's size (d_model 256, 8 heads) and at the trained size.
- Training time: paired over seeds against linear (train_summary.json wall time).

Marks are words, never colours alone; "not interpreted" where the data set's learning gate says the models
learned nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alphastomics import AlphaSTomicsError
from alphastomics.analysis import stats
from alphastomics.analysis.checks import NOT_INTERPRETED
from alphastomics.analysis.runs import DatasetView, Run, _read_json, group_runs
from alphastomics.analysis.runs import finite as _finite
from alphastomics.variants import VARIANTS


class ClaimsError(AlphaSTomicsError, ValueError):
    """An input of the claims table is unusable; the message names the file, the field and the fix."""

MET, INCONCLUSIVE, NOT_MET, NOT_MEASURED = "met", "inconclusive", "not met", "not measured"
BASELINE = "linear"
CONTROL = "softmax"  # the ungated softmax control: what the gate adds, with the kernel held fixed
# An attention sink: one cell receives more than this share of a head's attention (uniform is 1/N). Qiu et
# al. report ~47 % on the first token without gating and ~5 % with it; 10 % separates those regimes.
SINK_THRESHOLD = 0.10
# The design note's healthy gate (troubleshooting): mean ~0.5, std ~0.2; read as mean 0.3-0.7, std 0.1-0.3.
HEALTHY_MEAN, HEALTHY_STD = (0.3, 0.7), (0.1, 0.3)
# The gated-attention paper's gates are sparse (mean ~0.1 at the G1 position): most scores below 0.1.
SPARSE_SHARE = 0.5
# The note's model (DESIGN: d_model 256, 8 heads, 6 layers), which the parameter claims are about.
NOTE_SIZE = {"d_model": 256, "num_heads": 8, "num_layers": 6}
LAPTOP = "trained size {size}; the note's size needs a GPU (config/model_cluster.yaml)"

# (claim, metric, expected low %, expected high %): None, None = "up"; "down" as (None, -0.0).
EFFECTS: list[tuple[str, str, float | None, float | None, str]] = [
    ("expression MSE", "expression_mse", -10.0, -5.0, "pos_to_expr"),
    ("per-gene expression correlation (beside expression MSE; no number in the note)", "expression_pearson",
     None, None, "pos_to_expr"),
    ("position distance MSE", "distance_mse", -15.0, -10.0, "expr_to_pos"),
    ("masked reconstruction MSE", "masked_reconstruction_mse", -20.0, -15.0, "expr_to_pos"),
    ("kNN preservation", "knn_preservation", 5.0, 10.0, "expr_to_pos"),
    ("Moran's I agreement", "morans_i_corr", None, None, "expr_to_pos"),
    ("joint-mode expression-position consistency", "joint_consistency_error", None, -0.0, "joint"),
]
TARGET = {"pos_to_expr": "make claims (config/claims.yaml: bdtnp_expression, starmap_expression)",
          "expr_to_pos": "make run", "joint": "make claims (config/claims.yaml: bdtnp_joint)"}


def _mode(view: DatasetView) -> str | None:
    modes = {(r.metrics or {}).get("mode") for rs in view.variants.values() for r in rs}
    modes.discard(None)
    return next(iter(modes)) if len(modes) == 1 else None


def _not_measured(claim: str, expected: str, how: str, why: str) -> dict[str, Any]:
    return {"claim": claim, "expected": expected, "how": how, "dataset": None, "task": None, "variant": None,
            "reference": None, "measured": None, "mark": NOT_MEASURED, "why": why}


def expectation_mark(rel_low: float, rel_high: float, lo: float | None, hi: float | None) -> str:
    """met / inconclusive / not met of a relative interval [rel_low, rel_high] (fractions) against the
    expected range in % (lo, hi); (None, None) = any increase, (None, -0.0) = any decrease."""
    a, b = 100 * rel_low, 100 * rel_high
    if lo is None and hi is None:
        region = (0.0, math.inf)
    elif lo is None:
        region = (-math.inf, 0.0)
    else:
        lo, hi = min(lo, hi), max(lo, hi)
        region = (-math.inf, hi) if hi < 0 else (lo, math.inf)
    if not (b > region[0] and a < region[1]):
        return NOT_MET
    return INCONCLUSIVE if a <= 0 <= b else MET


def _expected_text(lo: float | None, hi: float | None) -> str:
    if lo is None and hi is None:
        return "up"
    if lo is None:
        return "down"
    return f"{min(lo, hi):+.0f} .. {max(lo, hi):+.0f} %"


def _mde_relative(rec: dict[str, Any], alpha: float, power: float) -> float:
    """The record's smallest detectable relative effect: the verdict's (Holm level) for a primary record,
    at level alpha for a secondary one (no Holm: it is never given a word)."""
    if _finite(rec.get("mde_relative")):
        return float(rec["mde_relative"])
    mde = stats.min_detectable_effect(rec.get("sd_difference", math.nan), int(rec.get("n", 0)), alpha=alpha,
                                      target=power)
    ref = rec.get("reference_mean", math.nan)
    return mde / abs(ref) if _finite(mde) and _finite(ref) and ref != 0 else math.nan


def effect_rows(datasets: list[dict[str, Any]], views: dict[str, DatasetView], family: dict[str, Any]) -> list[dict]:
    """The note's expected changes against linear, per data set whose task produces the metric, per gated
    variant of the declared contrasts."""
    alpha, power = float(family.get("alpha", 0.05)), float(family.get("power", 0.8))
    contrasts = [tuple(c) for c in family.get("contrasts", [])]
    rows = []
    for claim, metric, lo, hi, task in EFFECTS:
        expected = _expected_text(lo, hi)
        how = f"{metric}, paired over seeds against {BASELINE} (95 % t interval of the relative change)"
        found = []
        for ds in datasets:
            view = views.get(ds["dataset"])
            by_key = {(r["variant"], r["reference"], r["metric"]): r for r in ds["records"] + ds["secondary"]}
            learned = (ds.get("learning_gate") or {}).get("outcome") != "not learned"
            for variant, reference in contrasts:
                rec = by_key.get((variant, reference, metric))
                if reference != BASELINE or rec is None or VARIANTS.get(variant) is None or \
                        VARIANTS[variant].gate == "none":
                    continue
                low, high = rec.get("relative_ci_low"), rec.get("relative_ci_high")
                if rec["n"] < 2 or not (_finite(low) and _finite(high)):
                    mark = NOT_MEASURED
                elif not learned:
                    mark = NOT_INTERPRETED
                else:
                    mark = expectation_mark(low, high, lo, hi)
                found.append({
                    "claim": claim, "expected": expected, "how": how, "dataset": ds["dataset"],
                    "task": _mode(view) if view else None, "variant": variant, "reference": reference,
                    "measured": rec.get("relative_change"), "ci_low": low, "ci_high": high,
                    "mde_relative": _mde_relative(rec, alpha, power), "n": rec["n"], "unit": "relative",
                    "mark": mark,
                })
        rows += found or [_not_measured(claim, expected, how, f"no {task} runs here: {TARGET[task]}")]
    return rows


def sink_share(run: Run) -> list[float]:
    """Per layer: the attention-sink share, mean over heads and sections (evaluate's diagnostics), for the
    report's per-layer figure; the claim itself is judged on the worst head (``_worst_head``)."""
    entries = ((run.metrics or {}).get("diagnostics") or {}).get("attention_sink") or []
    return [float(e["share"]) if isinstance(e, dict) and _finite(e.get("share")) else math.nan for e in entries]


def _worst_head(runs: list[Run]) -> tuple[float, int, int, list[float]]:
    """(share, layer, head, per-seed shares) of the head whose mean share over seeds is largest; each seed's
    per-head share is the mean over the probed sections (evaluate's diagnostics ``attention_sink``)."""
    per_seed: list[dict[tuple[int, int], float]] = []
    for r in runs:
        layers = ((r.metrics or {}).get("diagnostics") or {}).get("attention_sink") or []
        heads = {(int(e["layer"]), h): float(v) for e in layers if isinstance(e, dict)
                 for h, v in enumerate(e.get("share_per_head") or []) if _finite(v)}
        if heads:
            per_seed.append(heads)
    if not per_seed:
        return math.nan, -1, -1, []
    keys = sorted(set.intersection(*(set(p) for p in per_seed)))
    if not keys:
        return math.nan, -1, -1, []
    means = {k: float(np.mean([p[k] for p in per_seed])) for k in keys}
    worst = max(keys, key=lambda k: means[k])
    return means[worst], worst[0], worst[1], [p[worst] for p in per_seed]


def sink_rows(views: dict[str, DatasetView]) -> list[dict]:
    claim, expected = "no attention sink", f"worst head < {SINK_THRESHOLD:.0%} to one cell"
    how = ("per layer and head: the largest share of attention any one cell receives (mean over sections and "
           "seeds), the worst head of the variant, beside the ungated softmax control's worst head")
    rows = []
    for name, view in views.items():
        control = _worst_head(view.variants.get(CONTROL, []))
        for variant, runs in view.variants.items():
            if VARIANTS.get(variant) is None or VARIANTS[variant].gate == "none":
                continue
            share, layer, head, seeds = _worst_head(runs)
            if not _finite(share):
                continue
            mark = MET if share < SINK_THRESHOLD else NOT_MET
            if mark == MET and _finite(control[0]) and control[0] < SINK_THRESHOLD:
                mark = "met, but so does the ungated control"
            rows.append({
                "claim": claim, "expected": expected, "how": how, "dataset": name, "task": _mode(view),
                "variant": variant, "reference": CONTROL if _finite(control[0]) else None, "measured": share,
                "ci_low": min(seeds), "ci_high": max(seeds), "interval": "min .. max over seeds",
                "layer": layer, "head": head, "n": len(seeds), "unit": "share",
                "control": control[0], "control_layer": control[1], "control_head": control[2], "mark": mark,
            })
    return rows or [_not_measured(claim, expected, how, "no run has attention diagnostics (evaluate "
                                  "--checkpoint) of a gated variant")]


def _gate_over_t(runs: list[Run]) -> dict[int, dict[float, dict[int, float]]]:
    """layer -> t -> seed -> gate mean, from evaluate's diagnostics ``gate_over_t``."""
    out: dict[int, dict[float, dict[int, float]]] = {}
    for r in runs:
        for row in ((r.metrics or {}).get("diagnostics") or {}).get("gate_over_t") or []:
            if _finite(row.get("mean")):
                out.setdefault(int(row["layer"]), {}).setdefault(float(row["t"]), {})[r.seed] = float(row["mean"])
    return out


def gate_time_rows(views: dict[str, DatasetView], alpha: float = stats.ALPHA) -> list[dict]:
    claim = "the gate adjusts across diffusion time"
    expected = "variation across t beyond seed-to-seed"
    how = ("gate mean per seed at each probed diffusion time (evaluation.gate_times); repeated-measures ANOVA, "
           "seeds as blocks (stats.time_effect), p with the Greenhouse-Geisser lower bound, Holm over the "
           "layers and variants")
    rows = []
    for name, view in views.items():
        for variant, runs in view.variants.items():
            for layer, by_t in sorted(_gate_over_t(runs).items()):
                times = sorted(by_t)
                seeds = sorted(set.intersection(*(set(by_t[t]) for t in times))) if times else []
                x = np.array([[by_t[t][s] for t in times] for s in seeds], dtype=float)
                te = stats.time_effect(x.reshape(len(seeds), len(times)))
                rows.append({
                    "claim": claim, "expected": expected, "how": how, "dataset": name, "task": _mode(view),
                    "variant": variant, "reference": None, "layer": layer, "times": times,
                    "time_means": list(te.time_means), "measured": te.range_t, "seed_sd": te.seed_sd,
                    "f": te.f, "p_value": te.p_lower_bound, "n": te.n_seeds, "unit": "gate range over t",
                })
    tested = [r for r in rows if _finite(r["p_value"])]
    for r, h in zip(tested, stats.holm([r["p_value"] for r in tested])):
        r["holm_p"] = h
        r["mark"] = MET if h < alpha else "not detected"
    for r in rows:
        r.setdefault("holm_p", math.nan)
        r.setdefault("mark", NOT_MEASURED)
    return rows or [_not_measured(claim, expected, how, "no gated run has gate_over_t diagnostics "
                                  "(evaluate --checkpoint of a gated variant)")]


def gate_range_rows(views: dict[str, DatasetView]) -> list[dict]:
    claim = "healthy gate range"
    expected = "mean ~0.5, std ~0.2 (note); paper: sparse, mean ~0.1"
    how = (f"per layer at evaluation.diagnostic_time: gate mean, std and share below 0.1 over held-out cells, "
           f"mean over seeds; met: mean {HEALTHY_MEAN[0]}-{HEALTHY_MEAN[1]} and std {HEALTHY_STD[0]}-"
           f"{HEALTHY_STD[1]} in every layer; 'sparse' when most scores are below 0.1, as in the paper")
    rows = []
    for name, view in views.items():
        for variant, runs in view.variants.items():
            per_layer: dict[int, list[dict[str, float]]] = {}
            for r in runs:
                for g in ((r.metrics or {}).get("diagnostics") or {}).get("gate") or []:
                    per_layer.setdefault(int(g["layer"]), []).append(g)
            for layer, gs in sorted(per_layer.items()):
                mean = stats.summarize([g.get("mean", math.nan) for g in gs])
                std = float(np.nanmean([g.get("std", math.nan) for g in gs]))
                below = float(np.nanmean([g.get("share_below", math.nan) for g in gs])) \
                    if any(_finite(g.get("share_below")) for g in gs) else math.nan
                healthy = HEALTHY_MEAN[0] <= mean.mean <= HEALTHY_MEAN[1] and HEALTHY_STD[0] <= std <= HEALTHY_STD[1]
                sparse = _finite(below) and below > SPARSE_SHARE
                rows.append({
                    "claim": claim, "expected": expected, "how": how, "dataset": name, "task": _mode(view),
                    "variant": variant, "reference": None, "layer": layer, "measured": mean.mean,
                    "ci_low": mean.low, "ci_high": mean.high, "std": std, "share_below": below, "n": mean.n,
                    "unit": "gate mean",
                    "mark": MET if healthy else ("not met: sparse, as in the paper" if sparse else NOT_MET),
                })
    return rows or [_not_measured(claim, expected, how, "no gated run has gate diagnostics")]


def parameter_rows(views: dict[str, DatasetView], parameter_table: Any = None) -> list[dict]:
    """Attention parameters per layer against linear: at the note's size (``parameter_table``, the params
    stage's rows, when given) and at the trained size (train_summary.json ``params_attention``)."""
    claim, how = "parameter overhead per attention layer", "parameters counted (alphastomics.model.params)"
    claimed = {"gated_headwise": 0.04, "gated_elementwise": 0.50, "gated_headwise_no_qknorm": 0.04}
    rows = []
    for row in parameter_table or []:
        v = row["variant"]
        if v in claimed:
            got = float(row["attention_per_layer_vs_linear"])
            rows.append({"claim": claim, "expected": f"{claimed[v]:+.0%}", "how": how + " at the note's size "
                         "(d_model 256, 8 heads)", "dataset": None, "task": None, "variant": v,
                         "reference": BASELINE, "measured": got, "unit": "relative", "n": None,
                         "mark": MET if abs(got - claimed[v]) <= 0.01 else NOT_MET})
    # one data set, the one with the most variants: the counts depend on the model, not the data
    for name, view in sorted(views.items(), key=lambda kv: -len(kv[1].variants))[:1]:
        base = [r.summary.get("params_attention") for r in view.variants.get(BASELINE, []) if r.summary]
        base = [b for b in base if _finite(b)]
        for v in claimed:
            mine = [r.summary.get("params_attention") for r in view.variants.get(v, []) if r.summary]
            mine = [m for m in mine if _finite(m)]
            if base and mine:
                got = mine[0] / base[0] - 1.0
                rows.append({"claim": claim, "expected": f"{claimed[v]:+.0%}", "how": how + " at the trained "
                             "size (train_summary.json params_attention)", "dataset": name, "task": _mode(view),
                             "variant": v, "reference": BASELINE, "measured": got, "unit": "relative",
                             "n": None, "mark": MET if abs(got - claimed[v]) <= 0.01 else NOT_MET})
    return rows or [_not_measured(claim, "+4 % headwise, +50 % elementwise", how, "no parameter counts")]


def time_rows(views: dict[str, DatasetView]) -> list[dict]:
    claim, expected = "training time", "the cost (no number in the note)"
    how = "train_summary.json wall time per seed, paired against linear (95 % t interval of the relative change)"
    rows = []
    for name, view in views.items():
        base = {r.seed: float(r.summary["wall_time_s"]) for r in view.variants.get(BASELINE, [])
                if r.summary and _finite(r.summary.get("wall_time_s"))}
        size = None
        for variant, runs in view.variants.items():
            if variant == BASELINE:
                continue
            mine = {r.seed: float(r.summary["wall_time_s"]) for r in runs
                    if r.summary and _finite(r.summary.get("wall_time_s"))}
            keys = sorted(set(base) & set(mine))
            if len(keys) < 2:
                continue
            p = stats.paired([mine[k] for k in keys], [base[k] for k in keys])
            ref = float(np.mean([base[k] for k in keys]))
            v = (runs[0].summary or {}).get("variant") or {}
            size = f"d_model {v.get('d_model')}, {v.get('num_layers')} layers, {v.get('num_heads')} heads"
            if variant not in VARIANTS:  # a variant of its own (a sweep's rate, an ablation): not the note's
                continue
            rows.append({"claim": claim, "expected": expected, "how": how, "dataset": name, "task": _mode(view),
                         "variant": variant, "reference": BASELINE, "measured": p.mean_difference / ref,
                         "ci_low": p.ci_low / ref, "ci_high": p.ci_high / ref, "n": p.n, "unit": "relative",
                         "mark": "measured", "why": LAPTOP.format(size=size)})
    return rows or [_not_measured(claim, expected, how, "no training summaries with wall times")]


def spike_row(stability: dict[str, Any], dataset: str, variant: str, reference: str) -> dict[str, Any]:
    """Loss spikes (the sweep's rule: a step above 2x the median of the 20 before it) of the gated variant
    against the reference, paired over seeds at the smallest rate where the reference spikes: where every
    run still trains, fewer spikes is what "more stable" can mean."""
    runs = [r for r in stability.get("runs", []) if r.get("dataset") == dataset]
    spikes = {(r["variant"], r["learning_rate"], r["seed"]): r.get("spikes") for r in runs}
    rates = sorted({r["learning_rate"] for r in runs})
    at = next((lr for lr in rates if np.mean([v for (n, rr, _), v in spikes.items()
                                              if n == reference and rr == lr and _finite(v)] or [0]) > 0), None)
    row = {"claim": "stable at larger learning rates (loss spikes)", "expected": f"fewer spikes than {reference}",
           "how": "loss spikes per run (a step above 2x the median of the 20 before it), paired over seeds at the "
                  "smallest rate where the reference spikes", "dataset": dataset, "task": "expr_to_pos",
           "variant": variant, "reference": reference, "unit": "spikes", "learning_rate": at}
    if at is None:
        return row | {"measured": None, "mark": NOT_MEASURED, "why": f"{reference} has no spike at any rate"}
    seeds = sorted(s for (n, lr, s) in spikes if n == reference and lr == at and (variant, lr, s) in spikes)
    a = [float(spikes[(variant, at, s)]) for s in seeds]
    b = [float(spikes[(reference, at, s)]) for s in seeds]
    p = stats.paired(a, b)
    mark = NOT_MEASURED if not _finite(p.ci_high) else MET if p.ci_high < 0 else NOT_MET if p.ci_low > 0 \
        else INCONCLUSIVE
    return row | {"measured": p.mean_difference, "ci_low": p.ci_low, "ci_high": p.ci_high, "n": p.n,
                  "variant_mean": float(np.mean(a)), "reference_mean": float(np.mean(b)),
                  "mde": stats.min_detectable_effect(p.sd_difference, p.n), "mark": mark}


def stability_rows(stability: dict[str, Any] | None) -> list[dict]:
    """The learning-rate sweep's two claims (``alphastomics.analysis.stability.claims``), marked."""
    how_lr = ("largest learning rate at which every seed trains without diverging (alphastomics.analysis.stability; "
              "docs/training.md, 'Stability and convergence')")
    how_conv = "steps to reach the common target validation loss, paired over seeds at the sweep's lowest rate"
    if not stability:
        why = "no learning-rate sweep read: make stability (config/stability.yaml), then make claims"
        return [_not_measured("stable at larger learning rates", "larger stable rate than linear", how_lr, why),
                _not_measured("faster convergence", "fewer steps than linear", how_conv, why)]
    rows = []
    conv = {(c["dataset"], c["variant"], c["reference"], c["learning_rate"], c["metric"]): c
            for c in stability.get("convergence", [])}
    for c in stability.get("claims", []):
        base = {"dataset": c["dataset"], "task": "expr_to_pos", "variant": c["variant"], "reference": c["reference"]}
        if c["claim"] == "supports larger learning rates":
            a, b = c.get("variant_max_stable_lr"), c.get("reference_max_stable_lr")
            if c.get("variant_beyond_sweep") and c.get("reference_beyond_sweep"):
                mark = INCONCLUSIVE + " (both train at every rate of the sweep)"
            elif not (_finite(a) and _finite(b)):
                mark = NOT_MEASURED
            else:
                mark = MET if a > b else NOT_MET
            rows.append({"claim": "stable at larger learning rates", "expected": "larger stable rate than "
                         f"{c['reference']}", "how": how_lr, **base, "measured": a, "control": b,
                         "unit": "learning rate", "n": None, "mark": mark})
            rows.append(spike_row(stability, c["dataset"], c["variant"], c["reference"]))
        else:
            full = conv.get((c["dataset"], c["variant"], c["reference"], c["learning_rate"], c["metric"]), c)
            low, high = c.get("ci_low"), c.get("ci_high")
            mde = stats.min_detectable_effect(full.get("sd_difference", math.nan), int(c.get("n") or 0))
            mark = NOT_MEASURED if not (_finite(low) and _finite(high)) else (
                MET if high < 0 else NOT_MET if low > 0 else INCONCLUSIVE)
            rows.append({"claim": "faster convergence", "expected": f"fewer steps than {c['reference']}",
                         "how": how_conv, **base, "measured": c.get("mean_difference"), "ci_low": low,
                         "ci_high": high, "mde": mde, "n": c.get("n"), "unit": "steps", "mark": mark})
    return rows


def table(datasets: list[dict[str, Any]], runs: Sequence[Run], family: dict[str, Any],
          stability: dict[str, Any] | None = None, parameter_table: Any = None,
          baseline: str = BASELINE) -> list[dict[str, Any]]:
    """Every row of the claims table, in the note's order (module docstring)."""
    views = {v.name: v for v in group_runs(list(runs), baseline)}
    effects = effect_rows(datasets, views, family)
    order = ["expression MSE", "per-gene expression correlation", "position distance MSE",
             "masked reconstruction MSE", "kNN preservation", "Moran's I agreement"]
    by_claim = lambda name: [r for r in effects if r["claim"].startswith(name)]  # noqa: E731
    rows = [r for name in order for r in by_claim(name)]
    rows += sink_rows(views)
    rows += stability_rows(stability)
    rows += by_claim("joint-mode")
    rows += gate_time_rows(views, float(family.get("alpha", stats.ALPHA)))
    rows += gate_range_rows(views)
    rows += parameter_rows(views, parameter_table)
    rows += time_rows(views)
    return rows


# --------------------------------------------------------------------------------------------------------
# What the table reads besides the runs


def read_stability(path: Path | None) -> dict[str, Any] | None:
    """The learning-rate sweep's stability.json (``make stability``), or None when not given or not written
    yet (its claims rows then say how to measure them)."""
    if path is None or not Path(path).is_file():
        return None
    data = _read_json(Path(path))
    if not isinstance(data, dict) or "claims" not in data:
        raise ClaimsError(f"{path}: field 'claims' missing; rerun make stability to rewrite it")
    return data


def note_parameters() -> list[dict[str, Any]]:
    """Attention parameters per layer of every variant at the design note's size (the package's default
    model: d_model 256, 8 heads), which the parameter claims are about, against linear."""
    from alphastomics.config import ModelConfig

    m = ModelConfig()
    counts = {name: v.attention_parameters(m.d_model, m.num_heads) for name, v in VARIANTS.items()}
    return [{"variant": name, "attention_per_layer": n, "attention_per_layer_vs_linear": n / counts["linear"] - 1}
            for name, n in counts.items()]
