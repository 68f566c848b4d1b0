"""The verdict: the declared family of contrasts tested over seeds, written to ``results/verdict.json``.

Follows DESIGN section 6, "Statistics", like a methods section written before the experiment:

- the contrasts and primary metrics are declared (config ``verdict:``; ``DEFAULT_CONTRASTS`` and
  ``DEFAULT_PRIMARY`` when none are given), never picked after looking at the numbers;
- one observation per trained model (data set, variant, seed): the run's cell-weighted mean over its held-out
  sections (``runs.Run.value``); two variants are paired by seed;
- per contrast x primary metric: mean paired difference, relative change, 95 % t interval, paired t-test p,
  exact sign-flip permutation p, Holm-adjusted p over the data set's family (contrasts x primary metrics), the
  smallest effect detectable with 80 % power at the level Holm needs, and a decision word only when the
  Holm-adjusted p < 0.05; every other metric is a secondary record (the same numbers, no Holm p, no word);
- peers: per held-out section, the model's seed-averaged value against the peer's value; a test only with at
  least ``MIN_PEER_SECTIONS`` sections;
- before any of that is read, the learning gate and the run warnings (``alphastomics.analysis.checks``): when no
  variant placed cells better than random, every contrast of the data set is "not interpreted".
- the power plan: per primary record, the seeds needed for a 5 % smallest detectable effect and their cost.
- across tissues: every declared contrast x primary metric on every data set side by side (this campaign's
  and those of other campaigns' verdict files), each labelled by kind from its manifest, and a
  random-effects estimate pooled over the real tissues (``stats.random_effects``).

The JSON schema is documented in docs/metrics.md ("verdict.json"); the report and ``report --markdown`` only
render this file. About 750 lines, on purpose: every number of the file is computed here, in the order a
reader of the verdict checks them, so that one module answers "where does this number come from".

Long because verdict.json is built in one place: the declared family and its tests, the learning gate's
consequences, the peers and the estimate across tissues.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alphastomics import AlphaSTomicsError
from alphastomics.analysis import checks, stats
from alphastomics.analysis.runs import (
    DatasetView,
    Run,
    direction,
    group_runs,
    section_values,
    seed_values,
)
from alphastomics.artifacts import atomic_file, json_safe, read_json
from alphastomics.layout import peer_method

SCHEMA = "alphastomics.verdict/1"
BASELINE = "linear"
# The design note's rows (each gated variant vs linear), the gate's own effect (vs the ungated softmax
# control), QK-norm (headwise with vs without) and the kernel (softmax vs linear).
DEFAULT_CONTRASTS: tuple[tuple[str, str], ...] = (
    ("gated_headwise", "linear"),
    ("gated_elementwise", "linear"),
    ("gated_headwise_no_qknorm", "linear"),
    ("gated_headwise", "softmax"),
    ("gated_elementwise", "softmax"),
    ("gated_headwise", "gated_headwise_no_qknorm"),
    ("softmax", "linear"),
)
# Placement quality invariant to rotation, reflection and scale, plus masked reconstruction where the model
# reconstructs expression (docs/metrics.md says why Moran's I correlation and unscaled RMSD are not here).
DEFAULT_PRIMARY: tuple[str, ...] = (
    "knn_preservation",
    "distance_spearman",
    "procrustes_rmsd_scaled",
    "masked_reconstruction_mse",
)
MIN_PEER_SECTIONS = 5
# The power plan's target: seeds needed for a smallest detectable effect of this relative size (the design
# note's expected effects are 5-15 %).
PLAN_TARGET = 0.05

class VerdictError(AlphaSTomicsError, ValueError):
    """A family declaration or verdict file is unusable; the message names the field and the fix."""


@dataclass(frozen=True)
class Family:
    """The declared family: (variant, reference) contrasts and primary metrics."""

    contrasts: tuple[tuple[str, str], ...] = DEFAULT_CONTRASTS
    primary_metrics: tuple[str, ...] = DEFAULT_PRIMARY
    alpha: float = stats.ALPHA
    power: float = stats.POWER

    @classmethod
    def parse(cls, contrasts: Sequence[str] | None, primary: Sequence[str] | None) -> Family:
        """From the CLI: contrasts as ``VARIANT:REFERENCE``."""
        pairs = DEFAULT_CONTRASTS
        if contrasts:
            pairs = []
            for c in contrasts:
                a, sep, b = c.partition(":")
                if not sep or not a or not b or a == b:
                    raise VerdictError(
                        f"--contrasts: '{c}' is not VARIANT:REFERENCE of two variants; "
                        "e.g. gated_headwise:linear"
                    )
                pairs.append((a, b))
            pairs = tuple(pairs)
        return cls(tuple(pairs), tuple(primary) if primary else DEFAULT_PRIMARY)


def _div(a: float, b: float) -> float:
    return a / abs(b) if math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan


def _pct(x: float) -> str:
    """A positive fraction in percent: one decimal, or two significant digits below 0.1 %."""
    return f"{100 * x:.1f}" if 100 * x >= 0.1 else f"{100 * x:.2g}"


def _word(metric: str) -> str:
    """Which way ``metric`` is better (``metrics.DIRECTIONS``): higher, lower, or neither (a description)."""
    d = direction(metric)
    return "higher" if d == 1 else "lower" if d == -1 else "neither"


def compare(
    dataset: str, variant: str, reference: str, metric: str, a: dict[Any, float], b: dict[Any, float]
) -> dict[str, Any]:
    """One paired record over the keys (seeds, or sections for peers) both sides hold; no Holm, no word."""
    keys = sorted(set(a) & set(b), key=lambda k: (isinstance(k, str), k))
    va = [a[k] for k in keys]
    vb = [b[k] for k in keys]
    p = stats.paired(va, vb)
    ref_mean = float(np.mean(vb)) if vb else math.nan
    return {
        "dataset": dataset,
        "variant": variant,
        "reference": reference,
        "metric": metric,
        "better": _word(metric),
        "n": p.n,
        "units": keys,
        "variant_values": va,
        "reference_values": vb,
        "variant_mean": float(np.mean(va)) if va else math.nan,
        "reference_mean": ref_mean,
        "mean_difference": p.mean_difference,
        "sd_difference": p.sd_difference,
        "relative_change": _div(p.mean_difference, ref_mean),
        "ci_low": p.ci_low,
        "ci_high": p.ci_high,
        "relative_ci_low": _div(p.ci_low, ref_mean),
        "relative_ci_high": _div(p.ci_high, ref_mean),
        "t_statistic": p.t_statistic,
        "p_value": p.p_value,
        "permutation_p": p.permutation_p,
        "permutation_exact": p.permutation_exact,
    }


def decide(records: list[dict[str, Any]], family: Family, *, min_n: int = 2) -> None:
    """Holm over ``records`` (one family), smallest detectable effect at the level Holm needs for the
    smallest p (alpha / m: power to reach that is power to be declared), and the decision word."""
    m = len(records)
    adjusted = stats.holm([r["p_value"] for r in records])
    for r, h in zip(records, adjusted):
        r["holm_p"] = h if r["n"] >= min_n and math.isfinite(r["p_value"]) else math.nan
        r["family_size"] = m
        r["mde"] = stats.min_detectable_effect(
            r["sd_difference"], r["n"], alpha=family.alpha / m, target=family.power
        )
        r["mde_relative"] = _div(r["mde"], r["reference_mean"])
        d = direction(r["metric"]) or 0
        if math.isfinite(r["holm_p"]) and r["holm_p"] < family.alpha and d != 0:
            r["decision"] = "better" if d * r["mean_difference"] > 0 else "worse"
        elif r["n"] < min_n:
            r["decision"] = f"no test (n = {r['n']} < {min_n})"
        elif math.isfinite(r["mde_relative"]):
            r["decision"] = f"no difference detected (smallest detectable: {_pct(r['mde_relative'])} %)"
        else:
            r["decision"] = (
                "no difference detected (smallest detectable: not estimable, the differences have no spread)"
            )


def contrast_records(
    view: DatasetView, family: Family
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, str]]]:
    """(primary records with decisions, secondary records, skipped) of the declared contrasts."""
    metrics = view.metric_names()
    records: list[dict[str, Any]] = []
    secondary: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for variant, reference in family.contrasts:
        pair = {"variant": variant, "reference": reference}
        missing = [v for v in (variant, reference) if v not in view.variants]
        if missing:
            skipped.append(pair | {"reason": f"no runs of {', '.join(missing)}"})
            continue
        for m in metrics:
            a = seed_values(view.variants[variant], m)
            b = seed_values(view.variants[reference], m)
            if a and b:
                rec = compare(view.name, variant, reference, m, a, b)
                (records if m in family.primary_metrics else secondary).append(rec)
            elif m in family.primary_metrics:
                skipped.append(pair | {"metric": m, "reason": "not measured on both sides"})
        for m in family.primary_metrics:
            if m not in metrics:
                skipped.append(pair | {"metric": m, "reason": "not measured (the mode does not produce it)"})
    decide(records, family)
    for r in secondary:
        r["holm_p"] = None
        r["decision"] = None  # secondary: shown, never given a verdict word
    return records, secondary, skipped


def peer_records(view: DatasetView, family: Family) -> list[dict[str, Any]]:
    """Every variant against every peer on the primary metrics, paired by held-out section (the variant's
    mean over seeds); tested, Holm-adjusted among themselves, only with MIN_PEER_SECTIONS sections or more."""
    peers: list[dict[str, Any]] = []
    for peer, p_runs in view.peers.items():
        for variant, v_runs in view.variants.items():
            for m in family.primary_metrics:
                a, b = section_values(v_runs, m), section_values(p_runs, m)
                if a and b:
                    peers.append(
                        compare(view.name, variant, peer, m, a, b) | {"peer": peer_method(peer)}
                    )
    decide([r for r in peers if r["n"] >= MIN_PEER_SECTIONS], family, min_n=MIN_PEER_SECTIONS)
    untested = (
        "p_value",
        "permutation_p",
        "t_statistic",
        "ci_low",
        "ci_high",
        "relative_ci_low",
        "relative_ci_high",
        "holm_p",
        "mde",
        "mde_relative",
        "family_size",
    )
    for r in peers:
        if r["n"] < MIN_PEER_SECTIONS:
            r.update(dict.fromkeys(untested))
            r["decision"] = f"too few sections to test ({r['n']} < {MIN_PEER_SECTIONS})"
    return peers


def describe(view: DatasetView) -> tuple[dict[str, Any], dict[str, float]]:
    """(method -> metric -> mean and t interval over seeds, metric -> mean random-placement value)."""
    metrics = view.metric_names()
    table = {}
    for kind, groups in (("variant", view.variants), ("peer", view.peers)):
        for name, rs in groups.items():
            row = {}
            for m in metrics:
                s = stats.summarize(seed_values(rs, m).values())
                if s.n:
                    row[m] = {"mean": s.mean, "ci_low": s.low, "ci_high": s.high, "n": s.n}
            table[name] = {"kind": kind, "metrics": row}
    refs = [r.metrics["random_reference"] for r in view.all_runs if (r.metrics or {}).get("random_reference")]
    random_reference = {}
    for m in metrics:
        vals = [float(x[m]) for x in refs if isinstance(x.get(m), (int, float)) and math.isfinite(x[m])]
        if vals:
            random_reference[m] = float(np.mean(vals))
    return table, random_reference


def _train_minutes(runs: list[Run]) -> float:
    """Mean training wall time of a seed's model in minutes (train_summary.json; folds summed)."""
    walls = [float(r.summary["wall_time_s"]) for r in runs if r.summary and r.summary.get("wall_time_s")]
    return float(np.mean(walls)) / 60 if walls else math.nan


def power_plan(view: DatasetView, family: Family, records: list[dict[str, Any]],
               target: float = PLAN_TARGET) -> list[dict[str, Any]]:
    """Per primary record: the seeds the same design needs for a smallest detectable effect of ``target``
    (relative to the reference's mean) at the observed spread of the paired differences, at the level Holm
    needs for the family's smallest p, and what they cost in training-job minutes (both variants of the
    contrast train every seed)."""
    rows = []
    for r in records:
        effect = target * abs(r["reference_mean"]) if math.isfinite(r["reference_mean"]) else math.nan
        n = stats.seeds_needed(r["sd_difference"], effect, alpha=family.alpha / r["family_size"],
                               target=family.power)
        per_seed = _train_minutes(view.variants.get(r["variant"], [])) + _train_minutes(
            view.variants.get(r["reference"], []))
        rows.append({
            "variant": r["variant"], "reference": r["reference"], "metric": r["metric"], "target": target,
            "n": r["n"], "sd_difference": r["sd_difference"], "mde_relative": r["mde_relative"],
            "seeds_needed": n, "train_minutes_per_seed": per_seed,
            "train_minutes": n * per_seed if n is not None and math.isfinite(per_seed) else math.nan,
            "more_seeds": max(0, n - r["n"]) if n is not None else None,
        })
    return rows


def dataset_verdict(view: DatasetView, family: Family, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    facts = facts or dataset_facts([])
    records, secondary, skipped = contrast_records(view, family)
    table, random_reference = describe(view)
    not_computed = missing_cell_type_metrics(facts, view.metric_names())
    for s in skipped:  # a primary cell-type metric on a data set without cell types: say why
        if not_computed and s.get("metric") in not_computed[0]["metrics"]:
            s["reason"] = NO_CELL_TYPES
    out = {
        "dataset": view.name,
        "kind": facts["kind"],
        "source": facts["source"],
        "cell_types": facts["cell_types"],
        "not_computed": not_computed,
        "seeds": {v: sorted(r.seed for r in rs) for v, rs in view.variants.items()},
        "records": records,
        "secondary": secondary,
        "peers": peer_records(view, family),
        "skipped": skipped,
        "table": table,
        "random_reference": random_reference,
    } | learning_checks(view, family, random_reference)
    # Seeds to resolve a difference nobody may interpret would be a plan for nothing: none when not learned.
    learned = out["learning_gate"].get("outcome") != "not learned"
    return out | {"power_plan": power_plan(view, family, records) if learned else []}


def learning_checks(view: DatasetView, family: Family, random_reference: dict[str, float]) -> dict[str, Any]:
    """The keys ``learning_gate`` and ``warnings`` of a data set (``alphastomics.analysis.checks``)."""
    return {
        "learning_gate": checks.learning_gate(view, family.primary_metrics, random_reference),
        "warnings": checks.run_warnings(view),
    }


def build(
    runs: list[Run],
    family: Family | None = None,
    *,
    baseline: str = BASELINE,
    manifests: dict[str, dict[str, Any]] | None = None,
    others: Sequence[tuple[str, dict[str, Any] | None]] = (),
) -> dict[str, Any]:
    """The whole verdict (JSON-ready: NaN as null) of the runs given. ``manifests``: processed data set
    name -> its manifest.json (the kind of each data set, its cell types); ``others``: (path, verdict or
    None when the file does not exist) of other campaigns, whose data sets join ``across_tissues``."""
    family = family or Family()
    manifests = manifests or {}
    datasets = [
        dataset_verdict(v, family, dataset_facts(_manifests_of(v.name, manifests)))
        for v in group_runs(runs, baseline)
    ]
    for ds in datasets:
        if ds["learning_gate"]["outcome"] == "not learned":
            checks.not_interpreted(ds)
    return json_safe(
        {
            "schema": SCHEMA,
            "baseline": baseline,
            "family": {
                "contrasts": [list(c) for c in family.contrasts],
                "primary_metrics": list(family.primary_metrics),
                "alpha": family.alpha,
                "power": family.power,
                "interval": "95 % Student t over the paired units",
                "p_value": "two-sided paired t-test (scipy.stats.ttest_1samp on the differences)",
                "permutation_p": "two-sided sign-flip permutation of the mean difference, all 2^n patterns "
                "(n <= 12)",
                "holm_p": "Holm step-down over the data set's family (declared contrasts x primary metrics)",
                "mde": "smallest |mean difference| a two-sided t-test on n differences with their sd "
                "detects with "
                "80 % power at level alpha / family size (noncentral t)",
                "min_peer_sections": MIN_PEER_SECTIONS,
                "power_plan": f"seeds the same design needs for a smallest detectable effect of "
                f"{PLAN_TARGET:.0%} of the reference's mean at the observed sd of the paired differences "
                "(level alpha / family size, 80 % power), and their training-job minutes (variant + "
                "reference, per seed: mean of train_summary.json wall_time_s, folds summed)",
            },
            "runs": sorted(str(r.path) for r in runs),
            "code": checks.code_versions(runs),
            "learning_gate": checks.RULE,
            "datasets": datasets,
            "across_tissues": across_tissues(datasets, family, others),
        }
    )


# --------------------------------------------------------------------------------------------------------
# Across tissues: every contrast on every data set, side by side, and a pooled estimate over real tissues

# Cell-type neighbourhood agreement (evaluate): computed only where the data carry cell-type labels.
CELL_TYPE_METRICS = ("neighborhood_ari", "neighborhood_nmi")
NO_CELL_TYPES_WHY = (
    "the data set has no cell-type labels (manifest.json cell_types is null), which the cell-type "
    "neighbourhood metrics need"
)
NO_CELL_TYPES = f"not computed: {NO_CELL_TYPES_WHY}"
# What a data set is, from its manifest's source: kinds in the order the tables show them.
CUT, SYNTHETIC, REAL = "real, cut sections", "synthetic", "real sections"
KINDS = {
    CUT: "one real specimen cut into slabs (bdtnp): its sections are neighbours in one embryo",
    SYNTHETIC: "generated tissue (source synthetic): a check of the method, not a tissue",
    REAL: "real tissue sections (every other source)",
}
POOLED_KIND = REAL
THIS_CAMPAIGN = "this campaign"
# The Makefile target that writes a campaign's verdict, by its report_dir: what a missing file asks for.
CAMPAIGNS = {"results": "make run", "results/tissues": "make tissues", "results/powered": "make powered",
             "results/claims": "make claims"}
POOLED_METHOD = {
    "pooled_over": f"the data sets of kind '{POOLED_KIND}' with a tested, interpreted record (n >= 2 seeds, "
    "a spread of the paired differences); the others are listed under left_out with the reason",
    "estimate": "random-effects meta-analysis of the per-tissue relative effects y_i = mean paired "
    "difference / |reference mean|: DerSimonian-Laird tau^2 "
    "(statsmodels.stats.meta_analysis.combine_effects, method_re='dl'), truncated at 0, weights "
    "w_i = 1 / (v_i + tau^2)",
    "within_variance": "v_i = (sd of the paired differences / sqrt(n seeds) / |reference mean|)^2: the "
    "seed-level standard error of the relative effect, squared",
    "interval": "dl_ci: mean -+ z_0.975 sqrt(1 / sum w_i); hksj_ci (Hartung-Knapp-Sidik-Jonkman): mean -+ "
    "t_{0.975, k-1} sqrt(sum w_i (y_i - mean)^2 / ((k - 1) sum w_i)); relative_ci, p_value and decision: "
    "the t test with k - 1 degrees of freedom on the larger of the two standard errors (HKSJ with its "
    "scale floored at 1: with 2-3 tissues the DL normal interval is too narrow, and plain HKSJ is too "
    "narrow when the tissues agree more closely than their within-tissue variances predict)",
    "decision": "better / worse only when the Holm-adjusted p over the pooled estimates of 2 or more tissues "
    "(declared contrasts x primary metrics) is < alpha; smallest detectable: the noncentral t power of that "
    "test at level alpha / its family size, as per data set. One tissue: its own record, nothing pooled",
    "assumptions": [
        "the tissues are exchangeable draws from the tissues the question is about",
        "effects are relative to the reference's mean, so tissues with different metric scales share one "
        "scale",
        "each within-tissue variance is treated as known (it is itself estimated from a few seeds)",
        "with few tissues tau^2 is imprecise (with 2, its estimate rests on one difference)",
    ],
    "not": "not a prediction for a new tissue (that interval is wider by tau^2), not a test that the effect "
    "is the same on every tissue (tau^2 and I^2 describe that), and neither the synthetic nor the slab-cut "
    "data set is in it",
}


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _manifests_of(name: str, manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifests of data set ``name``: its own, or those of its cross-validation folds."""
    return [m for key, m in manifests.items()
            if ((m.get("fold") or {}).get("dataset") or m.get("dataset") or key) == name]


def dataset_facts(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """kind (``KINDS``; None without a manifest that names its source), source, and cell_types: True with
    labels, False when the manifest says cell_types is null, None when no manifest says."""
    source = next((m["source"] for m in manifests if m.get("source")), None)
    kind = None
    if source == "synthetic":
        kind = SYNTHETIC
    elif source == "bdtnp" or any(m.get("slab_cut") for m in manifests):
        kind = CUT
    elif source:
        kind = REAL
    said = [m["cell_types"] for m in manifests if "cell_types" in m]
    cell_types = None if not said else any(bool(c) for c in said)
    return {"kind": kind, "source": source, "cell_types": cell_types}


def missing_cell_type_metrics(facts: dict[str, Any], measured: Sequence[str]) -> list[dict[str, Any]]:
    """``not_computed`` of a data set: the cell-type metrics, once, when its manifest has no cell types."""
    gone = [m for m in CELL_TYPE_METRICS if m not in measured]
    if facts.get("cell_types") is False and gone:
        return [{"metrics": gone, "reason": NO_CELL_TYPES_WHY}]
    return []


def read_others(paths: Sequence[str | Path]) -> list[tuple[str, dict[str, Any] | None]]:
    """Other campaigns' verdict files: (path, verdict), verdict None where the file does not exist (that
    campaign has not run here); an unreadable file stops, naming it."""
    out = []
    for p in paths:
        p = Path(p)
        out.append((p.as_posix(), read(p) if p.exists() else None))
    return out


def not_run_message(path: str) -> str:
    """The row of a campaign's verdict file that does not exist: which Makefile target writes it."""
    folder = Path(path).parent
    known = [k for k in sorted(CAMPAIGNS, key=len, reverse=True)
             if folder.parts[-len(Path(k).parts):] == Path(k).parts]
    how = (f"run `{CAMPAIGNS[known[0]]}`" if known
           else f"run the campaign whose report_dir is {folder.as_posix()}")
    return f"not run here: {path} does not exist; {how}"


def _row(ds: dict[str, Any], origin: str, variant: str, reference: str, metric: str) -> dict[str, Any]:
    """One data set's line of a contrast x metric: its record's relative numbers, or why there is none."""
    rec = next((r for r in ds.get("records", [])
                if (r["variant"], r["reference"], r["metric"]) == (variant, reference, metric)), None)
    row: dict[str, Any] = {"dataset": ds["dataset"], "kind": ds.get("kind"), "from": origin}
    if rec is None:
        reasons = [s["reason"] for s in ds.get("skipped", []) if (s["variant"], s["reference"]) == (
            variant, reference) and s.get("metric") in (None, metric)]
        if any(metric in e["metrics"] for e in ds.get("not_computed") or []):
            reasons = [NO_CELL_TYPES]
        return row | {"n": 0, "status": reasons[0] if reasons else "not declared there"}
    n, ref = int(rec["n"]), _num(rec["reference_mean"])
    sd = _num(rec["sd_difference"])
    se = _div(sd / math.sqrt(n), ref) if n >= 2 else math.nan
    return row | {
        "status": "tested",
        "n": n,
        "relative_change": _num(rec["relative_change"]),
        "relative_ci_low": _num(rec["relative_ci_low"]),
        "relative_ci_high": _num(rec["relative_ci_high"]),
        "relative_se": se,
        "mde_relative": _num(rec.get("mde_relative")),
        "holm_p": _num(rec.get("holm_p")),
        "family_size": rec.get("family_size"),
        "decision": rec.get("decision"),
    }


def _pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The random-effects estimate over the rows of kind POOLED_KIND that can enter it (no Holm yet)."""
    real = [r for r in rows if r["kind"] == POOLED_KIND]
    used, left_out = [], []
    for r in real:
        if r["status"] != "tested":
            left_out.append({"dataset": r["dataset"], "reason": r["status"]})
        elif r["decision"] == checks.NOT_INTERPRETED:
            left_out.append({"dataset": r["dataset"], "reason": "not learned: its effect is not interpreted"})
        elif r["n"] < 2:
            left_out.append({"dataset": r["dataset"],
                             "reason": f"one paired seed (n = {r['n']}): no variance"})
        elif not (math.isfinite(r["relative_se"]) and r["relative_se"] > 0):
            left_out.append({"dataset": r["dataset"], "reason": "the paired differences have no spread: "
                             "no within-tissue variance"})
        else:
            used.append(r)
    out: dict[str, Any] = {"tissues": [r["dataset"] for r in used], "k": len(used), "left_out": left_out}
    if not used:
        return out | {"decision": None, "note": f"no data set of kind '{POOLED_KIND}' can enter it"}
    if len(used) == 1:
        (r,) = used
        keys = ("relative_change", "relative_ci_low", "relative_ci_high", "relative_se", "mde_relative",
                "holm_p", "decision")
        return out | {k: r[k] for k in keys} | {
            "note": f"one real tissue ({r['dataset']}): its own estimate and decision (t over its seeds, "
            "Holm over its data set's family), nothing pooled, no between-tissue variance"}
    est = stats.random_effects([r["relative_change"] for r in used], [r["relative_se"] ** 2 for r in used])
    return out | {
        "method": "DerSimonian-Laird random effects; decision interval HKSJ with scale >= 1",
        "relative_change": est.mean,
        "relative_se": est.se,
        "dl_ci_low": est.ci_low,
        "dl_ci_high": est.ci_high,
        "hksj_se": est.hksj_se,
        "hksj_ci_low": est.hksj_low,
        "hksj_ci_high": est.hksj_high,
        "relative_ci_low": est.low,
        "relative_ci_high": est.high,
        "p_value": est.p_value,
        "tau2": est.tau2,
        "i2": est.i2,
        "q": est.q,
        "weights": dict(zip(out["tissues"], est.weights)),
        "note": f"{len(used)} tissues: tau^2 is imprecise" if len(used) <= 3 else "",
    }


def _decide_pooled(entries: list[dict[str, Any]], family: Family) -> None:
    """Holm over the pooled estimates of 2 or more tissues, their smallest detectable effect, their word."""
    tested = [e for e in entries if e["pooled"]["k"] >= 2]
    m = len(tested)
    for e, h in zip(tested, stats.holm([e["pooled"]["p_value"] for e in tested])):
        p = e["pooled"]
        k, se = p["k"], max(p["relative_se"], p["hksj_se"])
        # the t test on k estimates with standard error se: min_detectable_effect of sd = se sqrt(k), n = k
        p["holm_p"], p["family_size"] = h, m
        p["mde_relative"] = stats.min_detectable_effect(se * math.sqrt(k), k, alpha=family.alpha / m,
                                                        target=family.power)
        d = direction(e["metric"]) or 0
        if h < family.alpha and d != 0:
            p["decision"] = "better" if d * p["relative_change"] > 0 else "worse"
        elif math.isfinite(p["mde_relative"]):
            p["decision"] = f"no difference detected (smallest detectable: {_pct(p['mde_relative'])} %)"
        else:
            p["decision"] = "no difference detected (smallest detectable: not estimable)"


def _kind_rank(kind: str | None) -> int:
    return list(KINDS).index(kind) if kind in KINDS else len(KINDS)


def across_tissues(
    datasets: list[dict[str, Any]], family: Family, others: Sequence[tuple[str, dict[str, Any] | None]] = ()
) -> dict[str, Any]:
    """verdict.json's ``across_tissues``: per declared contrast x primary metric, one row per data set of
    this campaign and of the other campaigns' verdicts (a data set in both keeps this campaign's), and the
    random-effects estimate pooled over the real tissues (POOLED_METHOD)."""
    sets = [(ds, THIS_CAMPAIGN) for ds in datasets]
    mine = {ds["dataset"] for ds in datasets}
    not_run, notes = [], []
    for path, other in others:
        if other is None:
            not_run.append({"from": path, "message": not_run_message(path)})
            continue
        for ds in other.get("datasets", []):
            if ds["dataset"] in mine:
                notes.append(f"{ds['dataset']} is also in {path}: this campaign's runs are shown")
            elif ds["dataset"] not in {d["dataset"] for d, _ in sets}:
                sets.append((ds, path))
    sets.sort(key=lambda x: (_kind_rank(x[0].get("kind")), x[0]["dataset"]))
    entries, untested = [], []
    for variant, reference in family.contrasts:
        for metric in family.primary_metrics:
            rows = [_row(ds, origin, variant, reference, metric) for ds, origin in sets]
            if not any(r["status"] == "tested" for r in rows):
                continue  # measured nowhere (e.g. masked reconstruction without masked diffusion)
            entries.append({"variant": variant, "reference": reference, "metric": metric,
                            "better": _word(metric), "rows": rows, "pooled": _pool(rows)})
        if not any((e["variant"], e["reference"]) == (variant, reference) for e in entries):
            reasons = sorted({r["status"] for r in (_row(ds, o, variant, reference, "") for ds, o in sets)})
            untested.append({"variant": variant, "reference": reference, "reason": "; ".join(reasons)})
    _decide_pooled(entries, family)
    return {
        "datasets": [
            {"dataset": ds["dataset"], "kind": ds.get("kind"), "from": origin, "source": ds.get("source"),
             "cell_types": ds.get("cell_types"), "not_computed": ds.get("not_computed") or [],
             "learning_gate": (ds.get("learning_gate") or {}).get("outcome", "not assessed"),
             "gate_message": (ds.get("learning_gate") or {}).get("message", "no learning gate recorded"),
             "seeds": {v: len(s) for v, s in (ds.get("seeds") or {}).items()}}
            for ds, origin in sets
        ],
        "kinds": KINDS,
        "not_run": not_run,
        "notes": notes,
        "pooled_kind": POOLED_KIND,
        "method": POOLED_METHOD,
        "contrasts": entries,
        "untested": untested,
    }


def write(verdict: dict[str, Any], out: Path) -> Path:
    """Write atomically (``artifacts.atomic_file``: temp file + rename)."""
    out = Path(out)
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(verdict, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return out


def read(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "verdict.json"
    if not path.is_file():
        raise VerdictError(
            f"{path}: not found; run the workflow (make run) or the report stage with --verdict"
        )
    v = read_json(path, "rerun the report stage", VerdictError)
    if not isinstance(v, dict) or v.get("schema") != SCHEMA:
        raise VerdictError(f"{path}: field 'schema' is not {SCHEMA}; rerun the report stage of this version")
    return v
