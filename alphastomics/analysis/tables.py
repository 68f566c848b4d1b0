"""What the report shows, as cells and rows: number formats, plain-language labels, the decisions, the gate,
the metrics, the cost, the power plan, the claims and the tables across tissues. One definition for the HTML
page (``alphastomics.analysis.report``) and the Markdown (``alphastomics.analysis.markdown``).

Long because every cell and row that the page and the Markdown share lives here, one short function each.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from alphastomics import AlphaSTomicsError
from alphastomics.analysis import claims
from alphastomics.analysis import verdict as V
from alphastomics.analysis.checks import NOT_INTERPRETED
from alphastomics.analysis.report_provenance import NOT_MEASURED
from alphastomics.analysis.runs import DatasetView, Run, _is_num
from alphastomics.layout import peer_method


class ReportError(AlphaSTomicsError, ValueError):
    """A report input is unusable; the message names the file, the field and the fix."""


SINK_THRESHOLD = claims.SINK_THRESHOLD


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

