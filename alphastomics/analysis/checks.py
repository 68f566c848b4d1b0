"""What is checked before any verdict is read (docs/metrics.md, "The learning gate"; written to verdict.json).

- ``learning_gate``: did the models learn this tissue at all? Each primary metric over seeds is compared with
  the random-placement reference (evaluate's ``random_reference``), with the best peer and, when it ran, with
  the expression ceiling (``peer_ceiling``: the margin is then a share of the way to it). When no variant
  places cells better than random, a difference between two variants is noise around random placement: every
  contrast of the data set is "not interpreted" (``not_interpreted``), and the report says so first.
- ``run_warnings``: what weakens a data set's numbers without voiding them: fewer seeds than ``MIN_SEEDS``,
  runs whose best validation loss came early in training while their last model was scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from alphastomics.analysis import stats
from alphastomics.analysis.runs import DatasetView, Run, direction, seed_values
from alphastomics.layout import is_ceiling, peer_method

# A metric's skill is how far a value goes from random placement towards a perfect score (1 for a
# higher-is-better metric, 0 for a lower-is-better one). A variant clears the gate on a metric when the worse
# end of its 95 % interval over seeds has a skill of at least MIN_SKILL. Excluding random alone is not enough:
# cultured cells with no shared layout gave kNN preservation 0.045 against 0.030 at random (skill 0.015) and
# distance Spearman 0.05 against 0.01 (0.04), tight over seeds; the bundled tissues' kNN peer reaches 0.38
# (bdtnp) and more.
MIN_SKILL = 0.10
MIN_SEEDS_FOR_INTERVAL = 2
NOT_LEARNED = "the models did not learn this tissue: every method is at the random level"
NOT_INTERPRETED = "not interpreted"
RULE = {
    "skill": "(value - random placement) / (perfect - random placement); perfect = 1 if higher is better, "
    "0 if lower is better",
    "min_skill": MIN_SKILL,
    "passes": "some variant's 95 % t interval over seeds (2 seeds or more) has a skill of at least min_skill "
    "at its worse end, on some primary metric with a random-placement reference",
    "fails": "no variant does (a single seed whose value falls short counts as falling short); every "
    "contrast and secondary record of the data set is then 'not interpreted' (and so is every claims-table row of it)",
}

# Seeds per variant below which a data set is flagged (config/README.md, "seeds"); a run is flagged when its
# best validation loss came before this share of its steps.
MIN_SEEDS = 5
EARLY_BEST_FRACTION = 0.5


def skill(metric: str, value: float, random: float) -> float:
    """(value - random) / (perfect - random): 0 at random placement, 1 at a perfect score, below 0 when worse
    than random. NaN when the metric's direction is unknown or random placement is already perfect."""
    d = direction(metric)
    if d is None or not (math.isfinite(value) and math.isfinite(random)):
        return math.nan
    perfect = 1.0 if d == 1 else 0.0
    return (value - random) / (perfect - random) if perfect != random else math.nan


def _variant_row(
    metric: str, variant: str, values: dict[Any, float], random: float, peer: dict[str, Any] | None,
    margin: float = MIN_SKILL, attainable: float | None = None,
) -> dict[str, Any]:
    """One variant on one metric: mean and interval over seeds, their skill, and where they sit against random
    placement (``above`` / ``at`` / ``below`` / ``undetermined``: the worse end's skill against ``margin``)
    and the best peer; with an expression ceiling of skill ``attainable``, the share of it reached."""
    s = stats.summarize(values.values())
    d = direction(metric) or 1
    worse_end, better_end = (s.low, s.high) if d == 1 else (s.high, s.low)
    row: dict[str, Any] = {
        "variant": variant,
        "n": s.n,
        "mean": s.mean,
        "ci_low": s.low,
        "ci_high": s.high,
        "skill": skill(metric, s.mean, random),
        "skill_worse_end": skill(metric, worse_end, random),
        "of_ceiling": skill(metric, s.mean, random) / attainable if attainable else None,
        "vs_best_peer": None,
    }
    if s.n >= MIN_SEEDS_FOR_INTERVAL:
        if row["skill_worse_end"] >= margin:
            row["vs_random"] = "above"
        elif skill(metric, better_end, random) < 0:
            row["vs_random"] = "below"
        else:
            row["vs_random"] = "at"
        if peer is not None:
            lo, hi = sorted((d * (worse_end - peer["value"]), d * (better_end - peer["value"])))
            row["vs_best_peer"] = "better" if lo > 0 else "worse" if hi < 0 else "overlaps"
    else:  # no interval: one value short of the margin rules clearing out; one beyond it cannot show it
        row["vs_random"] = "undetermined" if row["skill"] >= margin else "at"
    return row


def _metric_gate(view: DatasetView, metric: str, random: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"metric": metric, "random": random, "variants": [], "best_peer": None,
                             "peers_above": []}
    if random is None or direction(metric) is None:
        return entry | {"outcome": "no random reference"}
    peers, ceiling = [], None
    for name, runs in view.peers.items():
        values = list(seed_values(runs, metric).values())
        if values:
            value = float(np.mean(values))
            entry_ = {"peer": peer_method(name), "value": value, "skill": skill(metric, value, random)}
            if is_ceiling(name):
                ceiling = entry_
            else:
                peers.append(entry_)
    best = max(peers, key=lambda p: p["skill"], default=None)
    # What is attainable: a perfect score, or, measured, the expression ceiling's skill (a layered cortex
    # leaves the position along a layer open: docs/peers.md). The margin is MIN_SKILL of the way to it.
    attainable = ceiling["skill"] if ceiling and 0 < ceiling["skill"] < 1 else None
    margin = MIN_SKILL * attainable if attainable else MIN_SKILL
    rows = [_variant_row(metric, v, seed_values(rs, metric), random, best, margin, attainable)
            for v, rs in view.variants.items()]
    rows = [r for r in rows if r["n"]]
    marks = {r["vs_random"] for r in rows}
    outcome = (
        "learned" if "above" in marks else "undetermined" if "undetermined" in marks
        else "not learned" if rows else "not measured"
    )
    return entry | {
        "outcome": outcome,
        "variants": rows,
        "ceiling": ceiling,
        "margin": margin,
        "best_peer": best,
        "peers_above": sorted(p["peer"] for p in peers if p["skill"] >= MIN_SKILL),  # one value: no interval
    }


def learning_gate(
    view: DatasetView, primary: Sequence[str], random_reference: dict[str, float]
) -> dict[str, Any]:
    """The gate of one data set: per primary metric the variants against random placement and the best peer,
    and the outcome: ``learned`` (a variant clears MIN_SKILL on a metric), ``not learned`` (none does), or
    ``not assessed`` (no metric has a random-placement reference, or single seeds beyond the margin)."""
    metrics = [_metric_gate(view, m, random_reference.get(m)) for m in primary]
    outcomes = {e["outcome"] for e in metrics}
    if "learned" in outcomes:
        cleared = {}
        for e in metrics:
            names = [r["variant"] for r in e["variants"] if r["vs_random"] == "above"]
            if names:
                cleared[e["metric"]] = names
        outcome = "learned"
        with_ceiling = [e for e in metrics if e.get("ceiling") and e["margin"] < MIN_SKILL]
        message = (
            "the models learned this tissue: better than random placement by at least "
            f"{MIN_SKILL:.0%} of the way to " + ("the attainable score" if with_ceiling else "a perfect score")
            + " (worse end of the 95 % interval over seeds) on "
            + "; ".join(f"{m} ({', '.join(v)})" for m, v in cleared.items())
        )
        if with_ceiling:
            message += "; attainable = the expression ceiling (docs/peers.md): " + "; ".join(
                f"{e['metric']} {e['ceiling']['value']:.3g} (random {e['random']:.3g}), the best variant at "
                f"{max(r['of_ceiling'] for r in e['variants']):.0%} of its way from random" for e in with_ceiling
            )
    elif "undetermined" in outcomes or "not learned" not in outcomes:
        outcome = "not assessed"
        message = "not assessed: " + (
            "one seed per variant, no interval over seeds" if "undetermined" in outcomes
            else "no primary metric has a random-placement reference"
        )
    else:
        outcome = "not learned"
        above = sorted({p for e in metrics for p in e["peers_above"]})
        message = NOT_LEARNED if not above else (
            "the models did not learn this tissue: every variant is at the random level, but peer "
            f"{', '.join(above)} is not: look at the training before the tissue"
        )
    return {"outcome": outcome, "message": message, "min_skill": MIN_SKILL, "metrics": metrics}


def not_interpreted(dataset: dict[str, Any]) -> None:
    """A data set whose models learned nothing (one entry of verdict.json's ``datasets``): no decision word on
    any contrast or secondary record; a peer record keeps its word only where the peer itself
    beat random placement on that metric."""
    peers_above = {e["metric"]: set(e["peers_above"]) for e in dataset["learning_gate"]["metrics"]}
    for r in dataset["records"] + dataset["secondary"]:
        r["decision"] = NOT_INTERPRETED
    for r in dataset["peers"]:
        if r["peer"] not in peers_above.get(r["metric"], set()):
            r["decision"] = NOT_INTERPRETED


def run_warnings(view: DatasetView) -> list[dict[str, Any]]:
    """Fewer seeds per variant than MIN_SEEDS; runs whose best validation loss came before EARLY_BEST_FRACTION
    of their steps (the last model, not the best, was scored)."""
    out: list[dict[str, Any]] = []
    few = {v: len(rs) for v, rs in view.variants.items() if len(rs) < MIN_SEEDS}
    if few:
        counts = " or ".join(map(str, sorted(set(few.values()))))
        out.append({
            "kind": "few seeds",
            "variants": sorted(few),
            "message": f"{counts} seed(s) for {', '.join(sorted(few))}, fewer than the {MIN_SEEDS} that the "
            "intervals and tests over seeds need (config/README.md, 'seeds'): treat the intervals as rough",
        })
    early = []
    for v, rs in view.variants.items():
        for r in rs:
            best, last = best_val_step(r)
            if best is not None and last and best < EARLY_BEST_FRACTION * last:
                early.append({"variant": v, "seed": r.seed, "best_val_step": best, "last_step": last})
    if early:
        steps = sorted({(e["best_val_step"], e["last_step"]) for e in early})
        shown = ", ".join(f"{b} of {t}" for b, t in steps[:4]) + (", ..." if len(steps) > 4 else "")
        total = sum(len(rs) for rs in view.variants.values())
        out.append({
            "kind": "early best validation",
            "runs": early,
            "message": f"{len(early)} of {total} runs had their best validation loss in the first "
            f"{EARLY_BEST_FRACTION:.0%} of training (step {shown}), yet their last model was scored: "
            "the training sections are overfitted or the budget overshoots (docs/training.md)",
        })
    return out


def best_val_step(run: Run) -> tuple[int | None, int | None]:
    """(step of the best validation loss, last step): train_summary.json's, else from metrics.jsonl."""
    s = run.summary or {}
    if isinstance(s.get("best_val_step"), int) and s.get("best_val_loss") is not None and s.get("steps"):
        return int(s["best_val_step"]), int(s["steps"])
    val = [
        (float(e["val_loss"]), int(e["step"])) for e in run.train_log
        if isinstance(e.get("val_loss"), (int, float)) and "step" in e and math.isfinite(e["val_loss"])
    ]
    steps = [int(e["step"]) for e in run.train_log if "step" in e]
    if not val or not steps:
        return None, None
    return min(val)[1], max(steps)


# --------------------------------------------------------------------------------------------------------
# Which code the compared runs come from

def _code_records(run: Run) -> dict[str, dict[str, Any] | None]:
    """stage -> the ``provenance.code()`` record a run's outputs carry (None where an output records none);
    a peer has no training output."""
    evaluated = (run.metrics or {}).get("code") or {}
    records = {"sample": evaluated.get("sample"), "evaluate": evaluated.get("evaluate")}
    return records if run.is_peer else {"train": (run.summary or {}).get("code"), **records}


def code_versions(runs: Sequence[Run]) -> dict[str, Any]:
    """The commits the runs' train, sample and evaluate outputs record, and a warning when they are not
    one clean commit: ``mixed`` (two or more commits, or uncommitted changes) or outputs recording none.

    {"commits": [{"commit", "dirty", "outputs"}], "unrecorded": n, "mixed": bool, "message": str or None}"""
    seen: dict[tuple[str, bool], int] = {}
    unrecorded = 0
    for run in runs:
        for rec in _code_records(run).values():
            if not rec or not rec.get("commit"):
                unrecorded += 1
                continue
            key = (str(rec["commit"]), bool(rec.get("dirty")))
            seen[key] = seen.get(key, 0) + 1
    commits = [{"commit": c, "dirty": d, "outputs": n} for (c, d), n in sorted(seen.items(), key=lambda kv: -kv[1])]
    mixed = len(seen) > 1 or any(d for _, d in seen)
    parts = []
    if mixed:
        listed = ", ".join(f"{c['commit'][:10]}{' with uncommitted changes' if c['dirty'] else ''} "
                           f"({c['outputs']} outputs)" for c in commits)
        parts.append(f"the runs compared come from different code: {listed}; rerun them from one commit "
                     "(snakemake --forcerun train) before reading the verdict")
    if unrecorded:
        parts.append(f"{unrecorded} train/sample/evaluate outputs record no commit (a package installed "
                     "without its git checkout, or outputs of an older version); their code is unknown")
    return {"commits": commits, "unrecorded": unrecorded, "mixed": mixed,
            "message": "; ".join(parts) if parts else None}
