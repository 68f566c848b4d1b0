"""The comparison report: one self-contained HTML page that answers "does gating help, and at what cost?".

The page renders ``results/verdict.json`` (``alphastomics.verdict``: the declared contrasts tested over
seeds, Holm-adjusted, with intervals) and adds what the verdict does not decide: descriptive tables, cost,
figures and provenance, read from the run folders (``alphastomics.runs``). Its first screen is the answer:
each data set's learning gate in one line, then one compact table per declared contrast with every data set
(this campaign's and, with ``--with-verdict``, other campaigns') and the estimate pooled over the real
tissues (verdict.json ``across_tissues``). Then per data set the learning gate and the run warnings
(``alphastomics.checks``), a forest plot of the declared contrasts on the primary metrics and a table of
decisions; the sentence per test follows, collapsed.
A data set that failed the gate says so first and shows its contrasts as "not interpreted", without a forest
plot. Gated attention is that of Qiu et al. 2025 (arXiv 2505.06708), the
baseline the linear attention of LUNA (Yu et al. 2025). Inline CSS and PNG figures as data URIs: the page
opens without network.

``python -m alphastomics report --markdown RESULTS`` prints the decisions with intervals per data set from
``RESULTS/verdict.json`` (``--out docs/results.md`` writes them as a page, quoted by the README);
``report --screenshot PAGE.html OUT.png`` renders a page in headless Chromium (docs/report.md). About 800
lines: the three renderings of one verdict (page, Markdown, screenshot) with the page's tables (the gate's
and those across tissues among them); the figures are in ``report_figures``.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from alphastomics import AlphaSTomicsError, claims
from alphastomics import verdict as V
from alphastomics.artifacts import atomic_write_text
from alphastomics.checks import NOT_INTERPRETED
from alphastomics.layout import peer_method
from alphastomics.provenance import NOT_MEASURED, _manifests, provenance
from alphastomics.runs import (  # noqa: F401  (load_run: this module's API too)
    DatasetView,
    Run,
    _is_num,
    _read_json,
    group_runs,
    load_run,
)
from alphastomics.variants import VARIANTS


class ReportError(AlphaSTomicsError, ValueError):
    """A report input is unusable; the message names the file, the field and the fix."""


SINK_THRESHOLD = claims.SINK_THRESHOLD

# Plain-language names (the metric key follows in brackets).
LABELS = {
    "knn_preservation": "neighbour preservation",
    "distance_spearman": "pairwise-distance rank agreement",
    "procrustes_rmsd_scaled": "position error after scaled alignment",
    "masked_reconstruction_mse": "masked reconstruction error",
    "distance_mse": "pairwise-distance error",
    "procrustes_rmsd": "position error after alignment (unscaled)",
    "expression_mse": "expression error",
    "morans_i_corr": "spatial-pattern agreement (Moran's I)",
    "neighborhood_ari": "cell-type neighbourhood agreement",
}

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
# Formatting (None/NaN -> "not measured")


def _ok(x: Any) -> bool:
    return _is_num(x) and math.isfinite(x)


def fmt(x: float | None, digits: int = 3) -> str:
    if not _ok(x):
        return NOT_MEASURED
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a signed percentage: 0.052 -> '+5.2 %'; below 0.1 % two significant digits
    (0.00031 -> '+0.031 %'), so a tiny interval does not read as exactly zero."""
    if not _ok(x):
        return NOT_MEASURED
    x = 100 * x
    if x == 0:
        return "0.0 %"
    return f"{x:+.1f} %" if abs(x) >= 0.1 else f"{x:+.2g} %"


def fmt_p(p: float | None) -> str:
    if not _ok(p):
        return "n/a"
    return f"{p:.2g}"


def fmt_rel_ci(r: dict[str, Any]) -> str:
    """'+5.2 % [+1.0, +9.4] %' (relative change and its 95 % interval)."""
    if not _ok(r.get("relative_ci_low")):
        return fmt_pct(r.get("relative_change"))
    lo, hi = fmt_pct(r["relative_ci_low"]), fmt_pct(r["relative_ci_high"])
    return f"{fmt_pct(r['relative_change'])} [{lo.removesuffix(' %')}, {hi}]"


def fmt_mean_ci(cell: dict[str, Any] | None) -> str:
    if not cell or not _ok(cell.get("mean")):
        return NOT_MEASURED
    if not _ok(cell.get("ci_low")):
        return f"{fmt(cell['mean'])} ({cell.get('n', 1)} seed)"
    return f"{fmt(cell['mean'])} [{fmt(cell['ci_low'])}, {fmt(cell['ci_high'])}]"


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def sentence(r: dict[str, Any]) -> str:
    """One test in words, every number from the record."""
    word = r["better"]
    units = "sections" if "peer" in r else "seeds"
    head = (
        f"{r['variant']} vs {peer_method(r['reference'])} on {label(r['metric'])} ({r['metric']}, "
        f"{word} is better), {r['n']} paired {units}: {fmt(r['variant_mean'])} vs "
        f"{fmt(r['reference_mean'])}, difference {fmt(r['mean_difference'])}"
    )
    if r.get("decision") == NOT_INTERPRETED:  # relative to a value at the random level: no scale
        if _ok(r.get("ci_low")):
            head += f" [95 % interval {fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
    elif _ok(r.get("ci_low")):
        head += f" [95 % interval {fmt(r['ci_low'])}, {fmt(r['ci_high'])}], relative {fmt_rel_ci(r)}"
    else:
        head += f", relative {fmt_pct(r.get('relative_change'))}"
    if "peer" in r and not _ok(r.get("p_value")):
        diffs = np.subtract(r["variant_values"], r["reference_values"])
        head += "; differences per section " + ", ".join(f"{s} {fmt(d)}" for s, d in zip(r["units"], diffs))
    if _ok(r.get("p_value")) or _ok(r.get("permutation_p")):
        head += (
            f"; paired t-test p = {fmt_p(r.get('p_value'))}, "
            f"sign-flip permutation p = {fmt_p(r.get('permutation_p'))}"
        )
    if _ok(r.get("holm_p")) and r.get("decision") != NOT_INTERPRETED:
        head += f", Holm-adjusted p = {fmt_p(r['holm_p'])} (family of {r['family_size']})"
    if r.get("decision"):
        head += f": {r['decision']}"
    return head + "."


# --------------------------------------------------------------------------------------------------------
# Across tissues: the first screen (verdict.json ``across_tissues``)

DATASET_LABELS = {"mop": "MOp", "starmap": "STARmap"}


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


def fmt_mde(x: float | None) -> str:
    """A smallest detectable effect (a positive fraction) in percent: 0.041 -> '4.1 %'."""
    return f"{V._pct(x)} %" if _ok(x) and x > 0 else "n/a"


def short_decision(decision: str | None) -> str:
    """The decision word of a compact table (its smallest detectable effect has a column of its own)."""
    if not decision:
        return "n/a"
    if decision.startswith("no difference detected"):
        return "none detected"
    m = re.fullmatch(r"no test \(n = (\d+) < \d+\)", decision)
    return f"no test ({m.group(1)} seed)" if m else decision


def _status(text: str) -> str:
    """A row's reason for having no record, shortened for a table cell."""
    return "not computed: no cell-type labels" if text == V.NO_CELL_TYPES else text


def _across_cell(r: dict[str, Any]) -> dict[str, Any]:
    if r["status"] != "tested":
        return {"span": _status(r["status"])}
    if r["decision"] == NOT_INTERPRETED:
        return {"span": "not interpreted (the models did not learn this tissue)"}
    point, _, interval = fmt_rel_ci(r).partition(" % ")
    return {"span": None, "effect": fmt_rel_ci(r), "point": f"{point} %", "interval": interval,
            "mde": fmt_mde(r.get("mde_relative")), "note": "",
            "decision": short_decision(r["decision"]), "full": r["decision"],
            "kind": r["decision"] if r["decision"] in ("better", "worse") else "none"}


def _pooled_cell(p: dict[str, Any]) -> dict[str, Any]:
    if p["k"] == 0:
        why = "; ".join(f"{dataset_label(x['dataset'])}: {_status(x['reason'])}" for x in p["left_out"])
        return {"span": "no real tissue to pool" + (f" ({why})" if why else "")}
    cell = _across_cell({"status": "tested", **p})
    if p["k"] == 1:
        cell["note"] = f"one tissue ({dataset_label(p['tissues'][0])}): its own estimate"
    else:
        dl = f"[{fmt_pct(p['dl_ci_low']).removesuffix(' %')}, {fmt_pct(p['dl_ci_high'])}]"
        tau = f"{100 * math.sqrt(p['tau2']):.1f} %" if _ok(p.get("tau2")) else NOT_MEASURED
        cell["note"] = f"DL {dl}; \u03c4 {tau}, I\u00b2 {100 * p['i2']:.0f} %"
    if p["left_out"]:
        cell["note"] += "; left out: " + ", ".join(dataset_label(x["dataset"]) for x in p["left_out"])
    return cell


def _whole(cells: list[dict[str, Any]]) -> str | None:
    """One reason for a whole row when every cell of it is the same reason."""
    spans = {c.get("span") for c in cells}
    return spans.pop() if len(spans) == 1 and None not in spans else None


def across_tables(v: dict[str, Any]) -> list[dict[str, Any]]:
    """verdict.json's ``across_tissues`` as one table per declared contrast: rows = data sets (kind order),
    the other campaigns' missing files, then the pooled row; a column group per primary metric measured
    somewhere (effect [95 % interval], smallest detectable effect, decision)."""
    at = v.get("across_tissues") or {}
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    for e in at.get("contrasts", []):
        t = tables.setdefault((e["variant"], e["reference"]), {
            "name": contrast_name(e["variant"], e["reference"]), "metrics": [], "rows": {}, "pooled": []})
        t["metrics"].append({"key": e["metric"], "better": e["better"]})
        for r in e["rows"]:
            mine = r["from"] == V.THIS_CAMPAIGN
            row = t["rows"].setdefault((r["dataset"], r["from"]), {
                "label": dataset_label(r["dataset"]), "anchor": r["dataset"] if mine else None,
                "kind": r["kind"] or "kind not recorded", "from": r["from"], "n": set(), "cells": []})
            row["cells"].append(_across_cell(r))
            if r["status"] == "tested":
                row["n"].add(r["n"])
        t["pooled"].append(e["pooled"])
    out = []
    for t in tables.values():
        rows = []
        for row in t["rows"].values():
            n = sorted(row.pop("n"))
            row["seeds"] = "" if not n else f"{n[0]} seeds" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds"
            rows.append(row | {"whole": _whole(row["cells"]), "pooled": False})
        for x in at.get("not_run", []):
            rows.append({"label": Path(x["from"]).parent.as_posix() + "/", "anchor": None, "kind": "",
                         "from": x["from"], "seeds": "", "cells": [], "whole": x["message"], "pooled": False})
        pools = t.pop("pooled")
        tissues = list(dict.fromkeys(d for p in pools for d in p["tissues"]))
        cells = [_pooled_cell(p) for p in pools]
        pooled = {"label": "pooled" + (f": {', '.join(map(dataset_label, tissues))}" if tissues else ""),
                  "anchor": None, "kind": f"{at['pooled_kind']}, random effects", "from": "",
                  "seeds": f"{len(tissues)} tissues" if len(tissues) > 1 else "", "cells": cells,
                  "whole": _whole(cells), "pooled": True}
        out.append(t | {"rows": rows, "pooled_row": pooled})
    return out


def across_notes(v: dict[str, Any]) -> dict[str, Any]:
    """The lines around the tables: each data set's learning gate, what the pooled row pools, the kinds, and
    the cell-type metrics not computed on the other campaigns' data sets (this campaign's: in their own
    section)."""
    at = v.get("across_tissues") or {}
    sets = at.get("datasets", [])
    return {
        "gates": [{"label": dataset_label(d["dataset"]), "outcome": d["learning_gate"], "from": d["from"],
                   "anchor": d["dataset"] if d["from"] == V.THIS_CAMPAIGN else None} for d in sets],
        "kinds": [(k, text) for k, text in (at.get("kinds") or {}).items()
                  if any(d["kind"] == k for d in sets)],
        "pooled_kind": at.get("pooled_kind", V.POOLED_KIND),
        "real": [dataset_label(d["dataset"]) for d in sets if d["kind"] == at.get("pooled_kind")],
        "not_computed": [
            f"{dataset_label(d['dataset'])} ({d['from']}): {', '.join(e['metrics'])}: {e['reason']}"
            for d in sets if d["from"] != V.THIS_CAMPAIGN for e in d.get("not_computed") or []],
        "notes": at.get("notes", []),
        "untested": [f"{contrast_name(u['variant'], u['reference'])} ({u['reason']})"
                     for u in at.get("untested", [])],
    }


def not_computed_lines(ds: dict[str, Any], data_notes: list[str] | None = None) -> list[str]:
    """A data set's ``not_computed``, once: not repeated where a preprocess note already names the metrics."""
    return [f"{', '.join(e['metrics'])}: {e['reason']}" for e in ds.get("not_computed") or []
            if not any(all(m in n for m in e["metrics"]) for n in data_notes or [])]


# --------------------------------------------------------------------------------------------------------
# Tables from the verdict


def contrast_name(variant: str, reference: str) -> str:
    return f"{variant} vs {reference}"


def decisions_table(ds: dict[str, Any], primary: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows = declared contrasts (in declared order), columns = primary metrics measured here."""
    cols = [m for m in primary if any(r["metric"] == m for r in ds["records"])]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ds["records"]:
        key = (r["variant"], r["reference"])
        row = rows.setdefault(key, {"name": contrast_name(*key), "cells": {m: None for m in cols}})
        if r["decision"] == NOT_INTERPRETED:
            row["cells"][r["metric"]] = {"change": fmt_abs_ci(r), "holm": None, "decision": r["decision"],
                                         "kind": "not-interpreted"}
            continue
        row["cells"][r["metric"]] = {
            "change": fmt_rel_ci(r),
            "holm": fmt_p(r.get("holm_p")),
            "decision": r["decision"],
            "kind": r["decision"] if r["decision"] in ("better", "worse") else "none",
        }
    return cols, list(rows.values())


def fmt_abs_ci(r: dict[str, Any]) -> str:
    """'difference 0.0012 [-0.003, 0.005]': the paired difference in the metric's units (a relative change
    would divide by a value at the random level)."""
    if not _ok(r.get("ci_low")):
        return f"difference {fmt(r.get('mean_difference'))}"
    return f"difference {fmt(r['mean_difference'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"


def fmt_skill(x: float | None) -> str:
    if not _ok(x):
        return NOT_MEASURED
    return "0.00" if abs(x) < 0.005 else f"{x:+.2f}"


def gate_table(ds: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The learning gate as a table: columns = primary metrics with a random-placement reference; rows = the
    variants (mean [95 % interval over seeds], skill, against random), the best peer, random placement."""
    gate = ds.get("learning_gate") or {}
    metrics = [e for e in gate.get("metrics", []) if e.get("random") is not None]
    cols = [e["metric"] for e in metrics]
    rows: dict[str, dict[str, Any]] = {}
    for e in metrics:
        for r in e["variants"]:
            row = rows.setdefault(r["variant"], {"name": r["variant"], "kind": "variant", "cells": {}})
            ci = fmt_mean_ci({"mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"]})
            where = {"above": "above random", "at": "at the random level", "below": "below random",
                     "undetermined": "one seed, no interval"}[r["vs_random"]]
            of_ceiling = f", {r['of_ceiling']:.0%} of the ceiling's" if r.get("of_ceiling") is not None else ""
            row["cells"][e["metric"]] = {
                "value": ci,
                "skill": f"skill {fmt_skill(r['skill'])} (worse end {fmt_skill(r['skill_worse_end'])}){of_ceiling}",
                "mark": where, "kind": r["vs_random"]}
        p = e.get("best_peer")
        if p:
            name = f"best peer ({p['peer']})"
            row = rows.setdefault(name, {"name": name, "kind": "peer", "cells": {}})
            above = p["peer"] in e["peers_above"]
            row["cells"][e["metric"]] = {"value": fmt(p["value"]), "skill": f"skill {fmt_skill(p['skill'])}",
                                         "mark": "above random" if above else "at the random level",
                                         "kind": "above" if above else "at"}
    ceiling = {e["metric"]: e["ceiling"] for e in metrics if e.get("ceiling")}
    if ceiling:  # what expression alone reaches within a held-out section (docs/peers.md)
        rows["expression ceiling"] = {"name": "expression ceiling", "kind": "reference", "cells": {
            m: {"value": fmt(c["value"]), "skill": f"skill {fmt_skill(c['skill'])}", "mark": "attainable",
                "kind": ""} for m, c in ceiling.items()}}
    out = list(rows.values())
    out.append({"name": "random placement", "kind": "reference",
                "cells": {e["metric"]: {"value": fmt(e["random"]), "skill": "skill 0", "mark": "", "kind": ""}
                          for e in metrics}})
    return cols, out


def metrics_table(ds: dict[str, Any], runs: dict[str, list[Run]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns = every metric measured; rows = variants, peers, then the random-placement reference."""
    names: list[str] = []
    for entry in ds["table"].values():
        names += [m for m in entry["metrics"] if m not in names]
    rows = []
    for name, entry in ds["table"].items():
        wall = [_wall_time(r) for r in runs.get(name, [])]
        wall = [w for w in wall if math.isfinite(w)]
        rows.append(dict(
            name=name,
            kind=entry["kind"],
            cells=[fmt_mean_ci(entry["metrics"].get(m)) for m in names],
            wall=fmt(float(np.mean(wall))) if wall else NOT_MEASURED,
        ))
    if ds.get("random_reference"):
        rows.append(dict(name="random placement", kind="reference",
                         cells=[fmt(ds["random_reference"].get(m)) for m in names], wall=""))
    return names, rows


def _share(x: float) -> str:
    """0.031 -> '3.1 %' (a share or a size, no sign)."""
    return f"{100 * x:.1f} %"


def _ci_pct(r: dict[str, Any]) -> str:
    lo, hi = fmt_pct(r.get("ci_low")), fmt_pct(r.get("ci_high"))
    return f"{fmt_pct(r.get('measured'))} [{lo.removesuffix(' %')}, {hi}]" if _ok(r.get("ci_low")) else \
        fmt_pct(r.get("measured"))


def claim_cells(r: dict[str, Any]) -> dict[str, str]:
    """One row of verdict.json ``claims`` as the strings the page and docs/results.md show."""
    where = "" if not r.get("dataset") else r["dataset"] + (f" ({r['task']})" if r.get("task") else "")
    who = r.get("variant") or ""
    if r.get("reference") and r.get("unit") in ("relative", "steps", "learning rate", "spikes"):
        who += f" vs {r['reference']}"
    if r.get("layer") is not None and r.get("unit") in ("gate range over t", "gate mean"):
        who += f", layer {r['layer']}"
    unit, measured, detectable = r.get("unit"), "", ""
    if r["mark"] == NOT_MEASURED and r.get("measured") is None:
        measured = r.get("why") or NOT_MEASURED
    elif unit == "relative":
        measured = _ci_pct(r) + (f" over {r['n']} seeds" if r.get("n") else "")
        detectable = _share(abs(r["mde_relative"])) if _ok(r.get("mde_relative")) else ""
    elif unit == "share":
        measured = (f"worst head (layer {r['layer']}, head {r['head']}) {_share(r['measured'])} "
                    f"(seeds {_share(r['ci_low'])}-{_share(r['ci_high'])})")
        if _ok(r.get("control")):
            measured += f"; softmax control's worst head (layer {r['control_layer']}, head {r['control_head']}) " \
                        f"{_share(r['control'])}"
    elif unit == "learning rate":
        measured = f"{fmt(r.get('measured'))} vs {fmt(r.get('control'))}"
    elif unit == "steps":
        lo, hi = fmt(r.get("ci_low")), fmt(r.get("ci_high"))
        measured = f"{fmt(r.get('measured'))} steps [{lo}, {hi}] over {r.get('n')} seeds"
        detectable = f"{fmt(r.get('mde'))} steps" if _ok(r.get("mde")) else ""
    elif unit == "spikes":
        measured = (f"{fmt(r.get('measured'))} spikes per run [{fmt(r.get('ci_low'))}, {fmt(r.get('ci_high'))}] "
                    f"at lr {fmt(r.get('learning_rate'))} ({fmt(r.get('variant_mean'))} vs "
                    f"{fmt(r.get('reference_mean'))}) over {r.get('n')} seeds")
        detectable = f"{fmt(r.get('mde'))} spikes" if _ok(r.get("mde")) else ""
    elif unit == "gate range over t":
        means = ", ".join(f"{m:.2f}" for m in r.get("time_means") or [])
        measured = (f"gate mean at t = {', '.join(f'{t:g}' for t in r.get('times') or [])}: {means} (range "
                    f"{fmt(r.get('measured'))}; seed-to-seed sd {fmt(r.get('seed_sd'))}); F {fmt(r.get('f'))}, "
                    f"p_Holm {fmt_p(r.get('holm_p'))}")
    elif unit == "gate mean":
        measured = (f"mean {fmt(r.get('measured'))} [{fmt(r.get('ci_low'))}, {fmt(r.get('ci_high'))}], std "
                    f"{fmt(r.get('std'))}")
        if _ok(r.get("share_below")):
            measured += f", {_share(r['share_below'])} of scores below 0.1"
    else:
        measured = fmt(r.get("measured"))
    if r.get("why") and r["mark"] != NOT_MEASURED:
        measured += f" ({r['why']})"
    return {"claim": r["claim"], "how": r.get("how") or "", "where": where, "who": who,
            "expected": r.get("expected") or "",
            "measured": measured, "detectable": detectable, "mark": r["mark"], "style": _mark_style(r["mark"])}


def _mark_style(mark: str) -> str:
    """The CSS class of a mark: its first words ('not met: sparse, ...' is styled as 'not met')."""
    for word in ("met, but so does the ungated control", "not met", "not measured", "not interpreted",
                 "not detected", "inconclusive", "met"):
        if mark.startswith(word):
            return "mark-" + word.replace(",", "").replace(" ", "-")
    return ""


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
# The page


def plan_rows(ds: dict[str, Any]) -> list[dict[str, str]]:
    """The power plan (verdict.json ``power_plan``) as table cells."""
    rows = []
    for r in ds.get("power_plan") or []:
        n = r.get("seeds_needed")
        minutes = r.get("train_minutes")
        rows.append({
            "contrast": contrast_name(r["variant"], r["reference"]),
            "metric": r["metric"],
            "now": f"{r['n']} seeds: {100 * r['mde_relative']:.1f} %" if _ok(r.get("mde_relative")) else NOT_MEASURED,
            "needed": str(n) if n is not None else "not estimable",
            "cost": (f"{minutes:,.0f} train-job minutes ({fmt(r['train_minutes_per_seed'])} per seed)"
                     if _ok(minutes) else NOT_MEASURED),
        })
    return rows


def _render(verdict: dict[str, Any], runs: list[Run], prov: dict[str, Any], sweep_png: str | None = None) -> str:
    import jinja2

    from alphastomics.report_figures import (
        fig_attention,
        fig_forest,
        fig_gates,
        fig_loss,
        fig_positions,
        fig_sinks,
    )

    primary = list(verdict["family"]["primary_metrics"])
    views = {v.name: v for v in group_runs(runs, verdict["baseline"])}
    pages = []
    for ds in verdict["datasets"]:
        view = views.get(ds["dataset"]) or DatasetView(ds["dataset"], verdict["baseline"], {}, {})
        names = view.metric_names()
        shown = next((m for m in primary if m in names), names[0] if names else "knn_preservation")
        cols, rows = metrics_table(ds, {**view.variants, **view.peers})
        dcols, drows = decisions_table(ds, primary)
        gcols, grows = gate_table(ds)
        pos_png, pos_caption = fig_positions(view, shown)
        gate = ds.get("learning_gate") or {
            "outcome": "not assessed", "message": "no learning gate in verdict.json", "metrics": [],
            "min_skill": None,
        }
        gate = gate | {"unchecked": [e["metric"] for e in gate["metrics"] if e.get("random") is None]}
        pages.append(dict(
            name=ds["dataset"],
            baseline=verdict["baseline"],
            seeds=ds["seeds"],
            gate=gate,
            gate_cols=gcols,
            gate_rows=grows,
            warnings=[w["message"] for w in ds.get("warnings", [])],
            data_notes=prov.get("data_notes", {}).get(ds["dataset"], []),
            not_computed=not_computed_lines(ds, prov.get("data_notes", {}).get(ds["dataset"], [])),
            forest=fig_forest(ds, primary) if gate["outcome"] != "not learned" else None,
            decision_cols=dcols,
            decision_rows=drows,
            plan=plan_rows(ds),
            sentences=[sentence(r) for r in ds["records"]],
            secondary=[sentence(r) for r in ds["secondary"]],
            peers=ds["peers"],
            peer_sentences=[sentence(r) for r in ds["peers"]],
            skipped=ds["skipped"],
            metric_cols=cols,
            metric_rows=rows,
            cost=cost_table(view),
            bdtnp=BDTNP_REFERENCE if ds["dataset"] == "bdtnp" else None,
            figures=[
                (
                    "Training and validation loss per variant: mean over seeds, band = min..max over seeds "
                    "(moving average over 1/40 of the logged points)",
                    fig_loss(view),
                ),
                (f"Predicted vs true coordinates after Procrustes alignment: {pos_caption}", pos_png),
                ("Gate score histograms per layer (healthy: mean about 0.5, std about 0.2)", fig_gates(view)),
                ("Attention-sink share per layer: attention mass received by the most-attended cell",
                 fig_sinks(view)),
                ("Attention map of the worst head (the one whose most-attended cell receives the largest "
                 "share) on one held-out section: gated vs the ungated softmax control, seed 0",
                 fig_attention(view, shown)),
            ],
        ))
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alphastomics", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["capitalize_first"] = lambda text: text[:1].upper() + text[1:]
    return env.get_template("report.html.j2").render(
        across=across_tables(verdict),
        claims=[claim_cells(r) for r in verdict.get("claims") or []],
        sweep_png=sweep_png,
        across_notes=across_notes(verdict),
        method=(verdict.get("across_tissues") or {}).get("method") or {},
        views=pages,
        family=verdict["family"],
        labels=LABELS,
        prov=prov,
        not_measured=NOT_MEASURED,
        sink_threshold=f"{SINK_THRESHOLD:.0%}",
        fmt_pct=fmt_pct,
        fmt=fmt,
    )


def read_stability(path: Path | None) -> dict[str, Any] | None:
    """The learning-rate sweep's stability.json (``make stability``), or None when not given or not written
    yet (its claims rows then say how to measure them)."""
    if path is None or not Path(path).is_file():
        return None
    data = _read_json(Path(path))
    if not isinstance(data, dict) or "claims" not in data:
        raise ReportError(f"{path}: field 'claims' missing; rerun make stability to rewrite it")
    return data


def sweep_figure(stability: Path | None) -> str | None:
    """The sweep's loss curves per learning rate (stability.png beside stability.json), as a data URI."""
    png = Path(stability).with_name("stability.png") if stability else None
    if png is None or not png.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def note_parameters() -> list[dict[str, Any]]:
    """Attention parameters per layer of every variant at the design note's size (the package's default
    model: d_model 256, 8 heads), which the parameter claims are about, against linear."""
    from alphastomics.config import ModelConfig

    m = ModelConfig()
    counts = {name: v.attention_parameters(m.d_model, m.num_heads) for name, v in VARIANTS.items()}
    return [{"variant": name, "attention_per_layer": n, "attention_per_layer_vs_linear": n / counts["linear"] - 1}
            for name, n in counts.items()]


def build_report(
    run_dirs: list[Path],
    out: Path,
    *,
    baseline: str = V.BASELINE,
    family: V.Family | None = None,
    verdict_out: Path | None = None,
    config_snapshot: Path | None = None,
    cfg: Any = None,
    compare_with: list[Path] | None = None,
    stability: Path | None = None,
) -> Path:
    """Read every run folder, write the verdict (``verdict_out``, default next to ``out``) and then the
    HTML page rendered from it; both atomically, the page only after the verdict. ``compare_with``: other
    campaigns' verdict files, whose data sets join the comparison across tissues (a missing one is a row
    saying so; this campaign's own verdict file is skipped)."""
    if not run_dirs:
        raise ReportError(
            "report: no run folders given; pass --runs results/{dataset}/{variant}/seed{seed} ..."
        )
    runs = [load_run(Path(p)) for p in run_dirs]
    verdict_out = Path(verdict_out) if verdict_out else Path(out).with_name("verdict.json")
    others = V.read_others([p for p in compare_with or [] if Path(p).resolve() != verdict_out.resolve()])
    verdict = V.build(runs, family, baseline=baseline, manifests=_manifests(runs), others=others)
    verdict["claims"] = V._clean(claims.table(verdict["datasets"], runs, verdict["family"],
                                              read_stability(stability), note_parameters(), baseline))
    html = _render(verdict, runs, provenance(runs, cfg, config_snapshot), sweep_figure(stability))
    V.write(verdict, verdict_out)
    atomic_write_text(out, html)
    return Path(out)


def main(args: argparse.Namespace, cfg: Any) -> int:
    """``report --runs ... --out PAGE`` builds the verdict and the page; ``--markdown RESULTS`` prints the
    verdict as Markdown (with ``--out FILE``: writes it as a whole page, docs/results.md); ``--screenshot PAGE
    PNG`` renders a page to PNG."""
    if getattr(args, "markdown", None) is not None:
        if args.out is None:
            print(markdown_summary(args.markdown))
        else:
            atomic_write_text(args.out, markdown_document(args.markdown, args.out))
            print(f"report: wrote {args.out}")
        return 0
    if getattr(args, "screenshot", None):
        return _screenshot_png(Path(args.screenshot[0]), Path(args.screenshot[1]), args.width, args.height,
                               args.scale)
    if not args.runs or args.out is None:
        raise ReportError("report: pass --runs RUN ... and --out PAGE.html (or --markdown / --screenshot)")
    family = V.Family.parse(getattr(args, "contrasts", None), getattr(args, "primary_metrics", None))
    out = build_report(
        args.runs,
        args.out,
        baseline=getattr(args, "baseline", V.BASELINE),
        family=family,
        verdict_out=getattr(args, "verdict", None),
        config_snapshot=getattr(args, "config_snapshot", None),
        cfg=cfg,
        compare_with=getattr(args, "with_verdict", None),
        stability=getattr(args, "stability", None),
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


# --------------------------------------------------------------------------------------------------------
# Markdown (docs/results.md, quoted by README "What make run found")


def markdown_summary(results: Path) -> str:
    """Per data set: the decisions with intervals (rows = declared contrasts, columns = primary metrics),
    then the peers, all from ``results/verdict.json`` (or the verdict file itself)."""
    v = V.read(Path(results))
    primary = list(v["family"]["primary_metrics"])
    out = markdown_across(v) + markdown_claims(v)
    for ds in v["datasets"]:
        cols, rows = decisions_table(ds, primary)
        seeds = "/".join(map(str, sorted({len(s) for s in ds["seeds"].values()})))
        gate = ds.get("learning_gate") or {}
        if gate.get("outcome") == "not learned":
            out.append(
                f"**{ds['dataset']}: {gate['message']}.** ({seeds} seeds per variant; every contrast is not "
                "interpreted: the mean paired difference in the metric's units [95 % t interval over seeds], "
                "no decision; verdict.json, 'learning_gate')\n"
            )
        else:
            out.append(
                f"**{ds['dataset']}** ({seeds} seeds per variant; relative change of the "
                f"mean paired difference [95 % t interval over seeds]; Holm-adjusted p over "
                f"{len(ds['records'])} tests; better/worse only when it is < 0.05)\n"
            )
            if gate:
                out.append(f"Learning gate: {gate['message']}.\n")
        for w in ds.get("warnings", []):
            out.append(f"Warning: {w['message']}.\n")
        for n in not_computed_lines(ds):
            out.append(f"Not computed on {ds['dataset']}: {n}.\n")
        if not rows:
            out.append("No declared contrast could be tested here (see verdict.json, 'skipped').\n")
        else:
            out.append("| contrast | " + " | ".join(cols) + " |")
            out.append("|---" * (len(cols) + 1) + "|")
            for row in rows:
                cells = []
                for m in cols:
                    c = row["cells"][m]
                    if c is None:
                        cells.append("-")
                    elif c["decision"] == NOT_INTERPRETED:
                        cells.append(f"{c['decision']} ({c['change']})")
                    else:
                        cells.append(f"{c['change']}, p_Holm {c['holm']}: {c['decision']}")
                out.append(f"| {row['name']} | " + " | ".join(cells) + " |")
            out.append("")
        plan = plan_rows(ds)
        if plan:
            target = 100 * (ds.get("power_plan") or [{}])[0].get("target", math.nan)
            out.append(f"Power plan (seeds for a {target:.0f} % smallest detectable effect at the observed "
                       "spread):\n")
            # metric first: a row of this table never reads as a row of the decisions table above
            out.append("| metric | contrast | smallest detectable now | seeds needed | training cost |")
            out.append("|---|---|---|---|---|")
            for r in plan:
                out.append(f"| {r['metric']} | {r['contrast']} | {r['now']} | {r['needed']} | {r['cost']} |")
            out.append("")
        if ds["peers"]:
            out.append("Peers, per held-out section (model: mean over seeds):\n")
            for r in ds["peers"]:
                diffs = ", ".join(fmt(d) for d in np.subtract(r["variant_values"], r["reference_values"]))
                if r["decision"] == NOT_INTERPRETED or r["p_value"] is None:
                    out.append(
                        f"- {r['variant']} vs {r['peer']}, {r['metric']}: differences per section {diffs}; "
                        f"{r['decision']}"
                    )
                else:
                    out.append(f"- {r['variant']} vs {r['peer']}, {r['metric']}: {fmt_rel_ci(r)}, p_Holm "
                               f"{fmt_p(r['holm_p'])}: {r['decision']}")
            out.append("")
    return "\n".join(out)


def markdown_claims(v: dict[str, Any]) -> list[str]:
    """The claims table (verdict.json ``claims``; the report's section 2) as Markdown."""
    rows = [claim_cells(r) for r in v.get("claims") or []]
    if not rows:
        return []
    out = ["**The design note's claims** (one row per claim, data set and variant; relative changes against "
           "linear with their 95 % interval over seeds and the smallest effect the seeds detect; "
           "docs/metrics.md, \"The claims table\"; every row on the model that was trained, the parameter counts "
           "at the note's size)\n",
           "| claim | data set (task) | variant | expected | measured [95 % interval] | detectable | result |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(r[k].replace("|", "/") for k in (
            "claim", "where", "who", "expected", "measured", "detectable", "mark")) + " |")
    return out + [""]


def _md_cell(c: dict[str, Any]) -> str:
    if c.get("span"):
        return c["span"]
    note = f" ({c['note']})" if c.get("note") else ""
    return f"{c['effect']}{note}, detectable {c['mde']}: {c['decision']}"


def markdown_across(v: dict[str, Any]) -> list[str]:
    """The first part of ``report --markdown``: each data set's learning gate in one line, then per declared
    contrast the primary metrics on every data set and pooled over the real tissues (``across_tables``)."""
    tables = across_tables(v)
    if not tables:
        return []
    notes = across_notes(v)
    gates = "; ".join(f"{g['label']} {g['outcome']}" + ("" if g["anchor"] else f" ({g['from']})")
                      for g in notes["gates"])
    out = [
        f"Learning gate: {gates}.\n",
        "**Every contrast on every data set** (cell: relative change of the mean paired difference [95 % "
        "interval], the smallest detectable effect and the decision of the data set's family; pooled: "
        f"DerSimonian-Laird random effects over the data sets of kind '{notes['pooled_kind']}', its interval "
        "and decision from the Hartung-Knapp-Sidik-Jonkman t interval with scale floored at 1, in brackets "
        "the DerSimonian-Laird normal interval, the between-tissue sd tau and I^2; docs/metrics.md, "
        "\"Across tissues\")\n",
    ]
    for t in tables:
        out.append(f"*{t['name']}*\n")
        out.append("| data set | kind | seeds | " + " | ".join(m["key"] for m in t["metrics"]) + " |")
        out.append("|---" * (len(t["metrics"]) + 3) + "|")
        for r in t["rows"] + [t["pooled_row"]]:
            cells = ([r["whole"]] + [""] * (len(t["metrics"]) - 1) if r["whole"]
                     else [_md_cell(c) for c in r["cells"]])
            where = "" if r["from"] in ("", V.THIS_CAMPAIGN) or not r["kind"] else f" ({r['from']})"
            out.append(f"| {r['label']}{where} | {r['kind']} | {r['seeds']} | " + " | ".join(cells) + " |")
        out.append("")
    if notes["untested"]:
        out.append(f"Tested on no data set: {'; '.join(notes['untested'])}.\n")
    for n in notes["not_computed"]:
        out.append(f"Not computed on {n}.\n")
    for n in notes["notes"]:
        out.append(f"{n}.\n")
    return out


def markdown_document(results: Path, out: Path) -> str:
    """The whole results page (docs/results.md): a title, the command that wrote it and what the tables hold,
    then ``markdown_summary``."""
    results, out = Path(results).as_posix(), Path(out).as_posix()
    verdict = results if results.endswith(".json") else f"{results}/verdict.json"
    return (
        "# Results\n\n"
        f"Filled by `python -m alphastomics report --markdown {results} --out {out}` from the\n"
        f"`{verdict}` of a run; rerun that command after a run instead of editing this file.\n"
        "Held-out sections only, one value per seed (the cell-weighted mean over the test sections); how to read\n"
        'the tables: docs/metrics.md, "The verdict".\n\n' + markdown_summary(Path(results)) + "\n"
    )


def _screenshot_png(page: Path, out: Path, width: int, height: int, scale: float) -> int:
    """The README's picture of a page: rendered, shrunk by ``scale``, saved as a palette PNG."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        errors = console_errors(screenshot(page, full, width=width, height=height))
        img = Image.open(full).convert("RGB")
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        img = img.quantize(colors=256)  # a page of text and flat plots: a palette PNG is ~3x smaller
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp.png")
        img.save(tmp_out, optimize=True)
        os.replace(tmp_out, out)
    for e in errors:
        print(f"warning: page console: {e}", file=sys.stderr)
    print(f"screenshot: wrote {out} ({img.width} x {img.height})")
    return 0
