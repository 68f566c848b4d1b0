"""The verdict as Markdown: ``python -m alphastomics report --markdown RESULTS [--out docs/results.md]``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from alphastomics.analysis import verdict as V
from alphastomics.analysis.checks import NOT_INTERPRETED
from alphastomics.analysis.tables import (
    across_notes,
    across_tables,
    claim_cells,
    decisions_table,
    fmt,
    fmt_p,
    fmt_rel_ci,
    not_computed_lines,
    plan_rows,
)


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

