"""docs/results.md, written whole in one command from the verdicts of the project's targets:
``python -m alphastomics report --markdown VERDICT [VERDICT ...] --out docs/results.md``
(``make results-page``).

Each VERDICT is a verdict.json or a results folder holding one; the order given is the order of the page. The
page reads as an answer: the title, the command and the verdicts it read (with their commits), then the answer
to the question in one paragraph, a template filled with the verdicts' numbers (each data set's learning gate,
the declared contrasts of each gated variant against the baseline on the primary metrics, their decisions and
smallest detectable effects, the pooled estimates, the cost from the claims table), then the tables: each
contrast on every data set, one table per data set, the peers of all data sets, the claims, and the power plan
of the question's contrasts. A verdict file that does not exist is a line of the page ("not run for this page:
run `make powered`"); only when none of them exists is nothing written.

Long because the page is one document: the answer, five tables and the lines around them, each from the
verdicts alone (the cells come from ``alphastomics.analysis.tables``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphastomics.analysis import verdict as V
from alphastomics.analysis.checks import NOT_INTERPRETED
from alphastomics.analysis.report_provenance import NOT_MEASURED
from alphastomics.analysis.tables import (
    ReportError,
    claim_cells,
    contrast_name,
    dataset_label,
    fmt_abs_ci,
    fmt_mde,
    fmt_p,
    fmt_pct,
    fmt_rel_ci,
    not_computed_lines,
    plan_rows,
    short_decision,
)
from alphastomics.provenance import describe
from alphastomics.variants import VARIANTS

TITLE = "# Results"
QUESTION = ("Does gated softmax attention (gated_headwise and the other gated variants) beat linear "
            "attention on held-out tissue, by how much, and at what cost?")
# The claims table's rows that say what the gate costs (alphastomics.analysis.claims)
TRAINING_TIME, PARAMETERS = "training time", "parameter overhead per attention layer"


@dataclass
class Source:
    """One VERDICT argument: the verdict file, the Makefile target that writes it, and its contents (None:
    the target was not run for this page)."""

    arg: str
    path: str
    target: str
    verdict: dict[str, Any] | None
    labels: dict[str, str] = field(default_factory=dict)  # data set -> its name on the page

    @property
    def datasets(self) -> list[dict[str, Any]]:
        """The verdict's data sets in the order of its comparison across tissues (by kind)."""
        v = self.verdict or {}
        order = [d["dataset"] for d in (v.get("across_tissues") or {}).get("datasets", [])
                 if d.get("from") == V.THIS_CAMPAIGN]
        return sorted(v.get("datasets", []),
                      key=lambda d: order.index(d["dataset"]) if d["dataset"] in order else len(order))

    @property
    def baseline(self) -> str:
        return (self.verdict or {}).get("baseline", V.BASELINE)

    def question(self, variant: str, reference: str) -> bool:
        """A contrast of the question: a gated variant against the baseline."""
        return reference == self.baseline and is_gated(variant)


def is_gated(variant: str) -> bool:
    v = VARIANTS.get(variant)
    return v.gate != "none" if v is not None else variant.startswith("gated")


def verdict_path(arg: str | Path) -> str:
    """A VERDICT argument as the verdict file: a .json as given, a folder's verdict.json."""
    p = Path(arg)
    return (p if p.suffix == ".json" else p / "verdict.json").as_posix()


def target_of(path: str) -> str:
    """The Makefile target that writes a verdict file (verdict.CAMPAIGNS, by its report folder)."""
    folder = Path(path).parent
    for k in sorted(V.CAMPAIGNS, key=len, reverse=True):
        if folder.parts[-len(Path(k).parts):] == Path(k).parts:
            return V.CAMPAIGNS[k]
    return f"the campaign whose report_dir is {folder.as_posix()}"


def load(verdicts: Sequence[str | Path] | str | Path) -> list[Source]:
    """The verdicts in the order given; a missing file is a Source without a verdict. None of them found:
    ReportError naming each file and the target that writes it (nothing to write a page from)."""
    args = [verdicts] if isinstance(verdicts, (str, Path)) else list(verdicts)
    sources = []
    for a in args:
        path = verdict_path(a)
        v = V.read(Path(path)) if Path(path).is_file() else None
        sources.append(Source(Path(a).as_posix(), path, target_of(path), v))
    if not any(s.verdict for s in sources):
        raise ReportError("; ".join(f"{s.path}: not found; run {s.target}" for s in sources))
    names = [ds["dataset"] for s in sources for ds in s.datasets]
    for s in sources:  # a data set in two verdicts (bdtnp of make run and of make powered) says whose it is
        s.labels = {ds["dataset"]: dataset_label(ds["dataset"]) + (
            f" ({s.target})" if names.count(ds["dataset"]) > 1 else "") for ds in s.datasets}
    return sources


def table(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    """Rows as a Markdown table (pandas + tabulate), cells as given ('|' would split a cell: '/')."""
    if not rows:
        return []
    cells = [{c: str(r.get(c, "")).replace("|", "/") for c in columns} for r in rows]
    df = pd.DataFrame(cells, columns=columns)
    return [df.to_markdown(index=False, tablefmt="github", disable_numparse=True), ""]


# ----------------------------------------------------------------------------------------------------------
# Provenance: the commits of a verdict


def _short(described: str) -> str:
    sha, _, rest = described.partition(" ")
    return (sha[:7] if len(sha) == 40 else sha) + (f" {rest}" if rest else "")


def _code_records(x: Any) -> list[dict[str, Any]]:
    """Every ``provenance.code()`` record in a run file's ``code`` (train: one; evaluate: two)."""
    if isinstance(x, dict) and "commit" in x:
        return [x]
    return [c for c in (x.values() if isinstance(x, dict) else []) if isinstance(c, dict) and "commit" in c]


def commits(src: Source) -> list[str]:
    """The commit(s) of a verdict: its ``code`` (the commits its runs' outputs record, checks.code_versions)
    when it has one, else, for a verdict written before that, what its runs recorded (train_summary.json and
    eval/metrics.json ``code``, found beside the verdict's results)."""
    v = src.verdict or {}
    code = v.get("code")
    if isinstance(code, dict) and isinstance(code.get("commits"), list):
        return sorted({_short(describe(c)) for c in code["commits"]
                       if isinstance(c, dict) and c.get("commit")})
    runs = [Path(r) for r in v.get("runs", [])]
    if not runs:
        return []
    here = Path(src.path).resolve().parent
    base = next((b for b in (here, *here.parents) if (b / runs[0]).is_dir()), None)
    found = set()
    for r in runs:
        root = r if r.is_absolute() else (base / r if base else None)
        for f in ((root / "train" / "train_summary.json", root / "eval" / "metrics.json") if root else ()):
            try:
                recorded = json.loads(f.read_text()).get("code")
            except (OSError, ValueError, AttributeError):
                continue
            found |= {_short(describe(c)) for c in _code_records(recorded) if c.get("commit")}
    return sorted(found)


def header(sources: list[Source], command: str) -> list[str]:
    out = [TITLE, "",
           f"Written whole by `{command}` from the verdicts below, in this order; rerun it after any of their "
           "targets instead of editing this file. Held-out sections only, one value per seed (the "
           "cell-weighted mean over the test sections); how to read the tables: docs/metrics.md, \"The "
           "verdict\".", ""]
    for s in sources:
        if s.verdict is None:
            out.append(f"- `{s.path}` ({s.target}): not run for this page: run `{s.target}`")
            continue
        c = commits(s)
        where = (f"commit {c[0]}" if len(c) == 1 else f"commits {', '.join(c)} (its runs differ)" if c
                 else "commit not recorded (neither the verdict nor its runs record one)")
        unrecorded = ((s.verdict or {}).get("code") or {}).get("unrecorded") if c else None
        if unrecorded:
            where += f"; {unrecorded} outputs of its runs record none"
        out.append(f"- `{s.path}` ({s.target}): {', '.join(s.labels.values()) or 'no data set'}; {where}")
    return out + [""]


# ----------------------------------------------------------------------------------------------------------
# The answer


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _listing(items: list[str], limit: int = 4) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _span(values: list[float], fmt: Any) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"


def _pooled(sources: list[Source]) -> list[tuple[Source, dict[str, Any]]]:
    """Every pooled estimate over 2 or more real tissues, once (two verdicts may pool the same tissues: the
    first in page order is shown)."""
    seen, out = set(), []
    for s in sources:
        for e in ((s.verdict or {}).get("across_tissues") or {}).get("contrasts", []):
            p = e["pooled"]
            key = (e["variant"], e["reference"], e["metric"], tuple(p.get("tissues", [])))
            if p.get("k", 0) >= 2 and key not in seen:
                seen.add(key)
                out.append((s, e))
    return out


def answer(sources: list[Source], claims_rows: list[dict[str, Any]]) -> str:
    """The question answered in one paragraph: a template filled with the verdicts' numbers."""
    present = [s for s in sources if s.verdict]
    baseline = present[0].baseline
    sets = [(s, ds) for s in present for ds in s.datasets]
    learned = [(s, ds) for s, ds in sets if (ds.get("learning_gate") or {}).get("outcome") != "not learned"]
    tests = [(s, ds, r) for s, ds in sets for r in ds["records"] if s.question(r["variant"], r["reference"])]
    ok = [t for t in tests if t[2]["decision"] != NOT_INTERPRETED]
    better = [t for t in ok if t[2]["decision"] == "better"]
    worse = [t for t in ok if t[2]["decision"] == "worse"]
    none = [t for t in ok if str(t[2]["decision"]).startswith("no difference detected")]
    untested = len(ok) - len(better) - len(worse) - len(none)
    variants = list(dict.fromkeys(r["variant"] for _, _, r in tests))
    n, b, w = len(ok), len(better), len(worse)

    def name(t: tuple[Source, dict[str, Any], dict[str, Any]], way: bool = False) -> str:
        s, ds, r = t
        better_is = f", {r['better']} is better" if way and r.get("better") in ("higher", "lower") else ""
        return f"{r['variant']} on {s.labels[ds['dataset']]}, {r['metric']}{better_is}"

    if not tests:
        return (f"**No answer from these verdicts**: none of them tests a gated variant against {baseline}. "
                + _missing_sentence(sources))
    lead = ("No difference detected" if b == w == 0 else f"Better in {b} of {n} tests" if w == 0
            else f"Worse in {w} of {n} tests" if b == 0
            else f"Mixed: better in {b}, worse in {w} of {n} tests")
    unlearned = [s.labels[ds["dataset"]] for s, ds in sets if not any(ds is d for _, d in learned)]
    out = [f"**{lead}.** {QUESTION} The models learned {len(learned)} of {len(sets)} data sets"
           + (f" ({', '.join(s.labels[ds['dataset']] for s, ds in learned)})" if learned else "")
           + (f"; not learned, so not interpreted: {', '.join(unlearned)}" if unlearned else "") + "."]
    tested_sets = len({(id(s), ds["dataset"]) for s, ds, _ in ok})
    out.append(
        f"Of the {n} declared tests of a gated variant ({', '.join(variants)}) against {baseline} on the "
        f"primary metrics of those {tested_sets} data sets (Holm-adjusted within each data set), the "
        f"decisions are {b} better, {w} worse and {len(none)} no difference detected"
        + (f" ({untested} without a test)" if untested else "") + ".")
    eff = [t for t in ok if _finite(t[2].get("relative_change"))]
    if eff:
        lo = min(eff, key=lambda t: t[2]["relative_change"])
        hi = max(eff, key=lambda t: t[2]["relative_change"])
        out.append(f"The estimated relative changes run from {fmt_rel_ci(lo[2])} ({name(lo, True)}) to "
                   f"{fmt_rel_ci(hi[2])} ({name(hi, True)}).")
    for word, group in (("Better", better), ("Worse", worse)):
        if group:
            items = [f"{name(t)} {fmt_rel_ci(t[2])} (p_Holm {fmt_p(t[2].get('holm_p'))})" for t in group]
            out.append(f"{word}: {_listing(items)}.")
    mdes = [t for t in ok if _finite(t[2].get("mde_relative"))]
    if mdes:
        values = sorted(t[2]["mde_relative"] for t in mdes)
        sharp = min(mdes, key=lambda t: t[2]["mde_relative"])
        out.append(f"The smallest detectable effects of these tests run from {_span(values, fmt_mde)} "
                   f"(median {fmt_mde(float(np.median(values)))}), so a smaller effect may have gone unseen; "
                   f"the sharpest, {name(sharp)}, measured {fmt_rel_ci(sharp[2])} and detects "
                   f"{fmt_mde(sharp[2]['mde_relative'])}.")
    pooled = [(s, e) for s, e in _pooled(present) if s.question(e["variant"], e["reference"])]
    if pooled:
        tissues = list(dict.fromkeys(dataset_label(d) for _, e in pooled for d in e["pooled"]["tissues"]))
        words = [str(e["pooled"].get("decision") or "") for _, e in pooled]
        pm = [e["pooled"]["mde_relative"] for _, e in pooled if _finite(e["pooled"].get("mde_relative"))]
        out.append(
            f"Pooled over the real tissues ({', '.join(tissues)}), {words.count('better')} of {len(pooled)} "
            f"estimates are better and {words.count('worse')} worse"
            + (f" (smallest detectable {_span(pm, fmt_mde)})" if pm else "") + ".")
    out.append(_cost(claims_rows, baseline))
    return " ".join(out + [_missing_sentence(sources)]).strip()


def _cost(rows: list[dict[str, Any]], baseline: str) -> str:
    """The cost, from the claims table: training time and parameters per attention layer against the
    baseline, per gated variant."""
    parts = []
    for claim, what in ((TRAINING_TIME, "training time"), (PARAMETERS, "parameters per attention layer")):
        per: dict[str, list[float]] = {}
        for r in rows:
            if (r["claim"] == claim and r.get("reference") == baseline and is_gated(r.get("variant") or "")
                    and r.get("unit") == "relative" and _finite(r.get("measured"))
                    and (claim == TRAINING_TIME or r.get("dataset") is None)):
                per.setdefault(r["variant"], []).append(r["measured"])
        if per:
            size = ("over the data sets measured, at the trained size" if claim == TRAINING_TIME
                    else "at the design note's size")
            parts.append(f"{what} against {baseline} {size}: " + ", ".join(
                f"{v} {_span(x, fmt_pct)}" for v, x in per.items()))
    if not parts:
        return "The cost is not measured by these verdicts (the claims table's training time and parameters)."
    return "The cost: " + "; ".join(parts) + "."


def _missing_sentence(sources: list[Source]) -> str:
    missing = [s for s in sources if s.verdict is None]
    if not missing:
        return ""
    return ("Not run for this page: " + ", ".join(f"`{s.target}` ({s.path})" for s in missing)
            + "; none of their data sets is in this answer or in the tables.")


# ----------------------------------------------------------------------------------------------------------
# The tables


def _effect_cells(r: dict[str, Any]) -> dict[str, str]:
    if r.get("decision") == NOT_INTERPRETED:
        return {"effect [95 % interval]": "", "decision": NOT_INTERPRETED, "smallest detectable": ""}
    return {"effect [95 % interval]": fmt_rel_ci(r), "decision": short_decision(r.get("decision")),
            "smallest detectable": fmt_mde(r.get("mde_relative"))}


def _contrasts(sources: list[Source]) -> list[tuple[str, str]]:
    """Every declared contrast of the verdicts, the question's first, each in order of first appearance."""
    pairs = list(dict.fromkeys(tuple(c) for s in sources if s.verdict
                               for c in s.verdict["family"]["contrasts"]))
    q = [p for p in pairs if any(s.question(*p) for s in sources if s.verdict)]
    return q + [p for p in pairs if p not in q]


def across(sources: list[Source]) -> list[str]:
    """Each declared contrast on every data set: rows = data set x primary metric (effect [95 % interval],
    decision and smallest detectable effect in columns of their own), then the pooled estimates; what could
    not be tested, in one line per contrast."""
    present = [s for s in sources if s.verdict]
    cols = ["data set", "kind", "seeds", "metric", "effect [95 % interval]", "decision", "smallest detectable"]
    out = ["## Every contrast on every data set", "",
           "Relative change of the mean paired difference over seeds [95 % t interval]; the decision and the "
           "smallest detectable effect of the data set's family (Holm, 80 % power). Pooled rows: "
           "DerSimonian-Laird random effects over the real tissues, the interval and decision from the "
           "Hartung-Knapp-Sidik-Jonkman t interval with its scale floored at 1 (docs/metrics.md, \"Across "
           "tissues\").", ""]
    pooled = _pooled(present)
    for variant, reference in _contrasts(present):
        rows, not_tested = [], {}
        for s in present:
            entries = [e for e in (s.verdict.get("across_tissues") or {}).get("contrasts", [])
                       if (e["variant"], e["reference"]) == (variant, reference)]
            declared = [variant, reference] in s.verdict["family"]["contrasts"]
            if not declared or not entries:  # not declared there, or measured on none of its data sets
                why = f"not declared by {s.target}" if not declared else next(
                    (u["reason"] for u in (s.verdict.get("across_tissues") or {}).get("untested", [])
                     if (u["variant"], u["reference"]) == (variant, reference)), "not tested")
                not_tested.setdefault(why, {}).update({label: [] for label in s.labels.values()})
                continue
            for ds in s.datasets:
                label = s.labels[ds["dataset"]]
                for e in entries:
                    r = next((x for x in e["rows"] if x["dataset"] == ds["dataset"]
                              and x["from"] == V.THIS_CAMPAIGN), None)
                    if r is None:
                        continue
                    if r["status"] != "tested":
                        not_tested.setdefault(r["status"], {}).setdefault(label, []).append(e["metric"])
                        continue
                    rows.append({"data set": label, "kind": r["kind"] or "not recorded", "seeds": str(r["n"]),
                                 "metric": e["metric"]} | _effect_cells(r))
        notes = []
        for s, e in pooled:
            if (e["variant"], e["reference"]) != (variant, reference):
                continue
            p = e["pooled"]
            rows.append({"data set": "pooled: " + ", ".join(map(dataset_label, p["tissues"])),
                         "kind": "real sections, random effects", "seeds": f"{p['k']} tissues",
                         "metric": e["metric"]} | _effect_cells(p))
            tau = f"{100 * math.sqrt(p['tau2']):.1f} %" if _finite(p.get("tau2")) else NOT_MEASURED
            dl = f"[{fmt_pct(p.get('dl_ci_low')).removesuffix(' %')}, {fmt_pct(p.get('dl_ci_high'))}]"
            notes.append(f"{e['metric']} {dl}, \u03c4 {tau}, I\u00b2 {100 * (p.get('i2') or 0):.0f} %")
        out += [f"### {contrast_name(variant, reference)}", ""] + table(rows, cols)
        if not rows:
            out += ["Tested on no data set.", ""]
        if notes:
            out += ["Pooled, the DerSimonian-Laird normal interval, the between-tissue sd \u03c4 and I\u00b2: "
                    + "; ".join(notes) + ".", ""]
        if not_tested:
            out += ["Not tested: " + "; ".join(
                f"{why}: " + ", ".join(label + (f" ({', '.join(ms)})" if ms else "")
                                       for label, ms in where.items())
                for why, where in not_tested.items()) + ".", ""]
    return out


def declared_order(records: list[dict[str, Any]], family: dict[str, Any]) -> list[dict[str, Any]]:
    """Records in the family's order: declared contrasts, then primary metrics."""
    pairs = [tuple(c) for c in family.get("contrasts", [])]
    metrics = list(family.get("primary_metrics", []))

    def rank(r: dict[str, Any]) -> tuple[int, int]:
        pair = (r["variant"], r["reference"])
        return (pairs.index(pair) if pair in pairs else len(pairs),
                metrics.index(r["metric"]) if r["metric"] in metrics else len(metrics))
    return sorted(records, key=rank)


def dataset_section(src: Source, ds: dict[str, Any]) -> list[str]:
    """One data set: its seeds, learning gate, warnings, then rows = contrast x primary metric, columns =
    effect [95 % interval], p_Holm, decision, smallest detectable effect."""
    gate = ds.get("learning_gate") or {}
    seeds = "/".join(map(str, sorted({len(x) for x in ds["seeds"].values()})))
    out = [f"### {src.labels[ds['dataset']]}", ""]
    if gate.get("outcome") == "not learned":
        msg = gate["message"]
        out += [f"**{msg[:1].upper() + msg[1:]}.** {seeds} seeds per variant; every contrast is not "
                "interpreted: the mean paired difference in the metric's units [95 % t interval over seeds], "
                "no decision (verdict.json, 'learning_gate').", ""]
    else:
        alpha = src.verdict["family"].get("alpha", 0.05)
        out += [f"{seeds} seeds per variant; {len(ds['records'])} tests, Holm-adjusted over the data set's "
                f"family; better or worse only when p_Holm < {alpha:g}."
                + (f" Learning gate: {gate['message']}." if gate else ""), ""]
    for line in [f"Warning: {w['message']}." for w in ds.get("warnings", [])] + [
            f"Not computed on {ds['dataset']}: {n}." for n in not_computed_lines(ds)]:
        out += [line, ""]
    if not ds["records"]:
        return out + ["No declared contrast could be tested here (see verdict.json, 'skipped').", ""]
    records = declared_order(ds["records"], src.verdict["family"])
    if gate.get("outcome") == "not learned":
        rows = [{"contrast": contrast_name(r["variant"], r["reference"]), "metric": r["metric"],
                 "difference [95 % interval] (metric's units)": fmt_abs_ci(r).removeprefix("difference "),
                 "decision": r["decision"]} for r in records]
        return out + table(rows, ["contrast", "metric", "difference [95 % interval] (metric's units)",
                                  "decision"])
    rows = []
    for r in records:
        row = {"contrast": contrast_name(r["variant"], r["reference"]), "metric": r["metric"],
               "p_Holm": fmt_p(r.get("holm_p")) if r["decision"] != NOT_INTERPRETED else ""} | _effect_cells(r)
        if r["decision"] == NOT_INTERPRETED:
            row["effect [95 % interval]"] = fmt_abs_ci(r)
        rows.append(row)
    return out + table(rows, ["contrast", "metric", "effect [95 % interval]", "p_Holm", "decision",
                              "smallest detectable"])


def per_dataset(sources: list[Source]) -> list[str]:
    out = ["## Each data set", "",
           "Rows: the declared contrasts x the primary metrics; relative change of the mean paired difference "
           "[95 % t interval over seeds], Holm-adjusted p over the data set's family.", ""]
    for s in sources:
        for ds in s.datasets:
            out += dataset_section(s, ds)
    return out


def peers(sources: list[Source]) -> list[str]:
    """The peers of all data sets in one table (per held-out section, the model's mean over seeds against the
    peer); the comparisons that could not be tested in one sentence per data set."""
    rows, untested = [], []
    for s in sources:
        for ds in s.datasets:
            label, skipped = s.labels[ds["dataset"]], {}
            for r in ds["peers"]:
                if r["decision"] == NOT_INTERPRETED or not _finite(r.get("p_value")):
                    skipped.setdefault(r["decision"], []).append(r)
                    continue
                rows.append({"data set": label, "variant": r["variant"], "peer": r["peer"],
                             "metric": r["metric"], "sections": str(r["n"])} | _effect_cells(r))
            if skipped:
                clauses = []
                for why, rs in skipped.items():
                    names = [", ".join(dict.fromkeys(r[k] for r in rs)) for k in ("variant", "peer", "metric")]
                    clauses.append(f"{len(rs)} comparisons ({names[0]} against {names[1]}; {names[2]}): {why}")
                untested.append(f"{label}: " + "; ".join(clauses) + ".")
    if not rows and not untested:
        return []
    out = ["## Peers", "",
           "Per held-out section: the model's mean over seeds against the peer's value, relative change [95 % t "
           "interval over sections], Holm over the data set's peer tests.", ""]
    out += table(rows, ["data set", "variant", "peer", "metric", "sections", "effect [95 % interval]",
                        "decision", "smallest detectable"]) or ["No peer comparison could be tested.", ""]
    if untested:
        out += ["Not tested (each one's per-section differences are in its verdict.json, 'peers'): "
                + " ".join(untested), ""]
    return out


def claims_rows(sources: list[Source]) -> tuple[list[dict[str, Any]], list[Source]]:
    """The claims table: all rows of the claims campaign's verdict (make claims; else the verdict with the most
    measured rows), then the measured rows of the other verdicts that it lacks; a claim measured somewhere
    loses its 'not measured' rows. Also the verdicts the rows came from."""
    have = [s for s in sources if (s.verdict or {}).get("claims")]
    if not have:
        return [], []
    first = next((s for s in have if s.target == V.CAMPAIGNS["results/claims"]), None) or max(
        have, key=lambda s: sum(r["mark"] != NOT_MEASURED for r in s.verdict["claims"]))

    def key(r: dict[str, Any]) -> tuple:
        return tuple(r.get(k) for k in ("claim", "dataset", "task", "variant", "reference", "layer", "unit"))

    rows = [r | {"_from": first.target} for r in first.verdict["claims"]]
    keys = {key(r) for r in rows}
    for s in have:
        if s is not first:
            more = [r | {"_from": s.target} for r in s.verdict["claims"]
                    if r["mark"] != NOT_MEASURED and key(r) not in keys]
            rows += more
            keys |= {key(r) for r in more}
    measured = {r["claim"] for r in rows if r["mark"] != NOT_MEASURED}
    rows = [r for r in rows if r["mark"] != NOT_MEASURED or r["claim"] not in measured]
    return rows, [s for s in have if any(r["_from"] == s.target for r in rows)]


def claims(rows: list[dict[str, Any]], used: list[Source]) -> list[str]:
    if not rows:
        return []
    cols = ["claim", "data set (task)", "variant", "expected", "measured [95 % interval]", "detectable", "result"]
    cells = []
    for r in rows:
        c = claim_cells(r)
        cells.append({"claim": c["claim"], "data set (task)": c["where"], "variant": c["who"],
                      "expected": c["expected"], "measured [95 % interval]": c["measured"],
                      "detectable": c["detectable"], "result": c["mark"], "from": r["_from"]})
    if len(used) > 1:
        cols.append("from")
    return ["## The design note's claims", "",
            f"From {', '.join(f'`{s.path}`' for s in used)}: one row per claim, data set and variant; relative "
            "changes against linear with their 95 % interval over seeds and the smallest effect the seeds detect "
            "(docs/metrics.md, \"The claims table\").", ""] + table(cells, cols)


def power_plan(sources: list[Source]) -> list[str]:
    """The power plan of the question's contrasts only (each gated variant against the baseline)."""
    rows, target = [], None
    for s in sources:
        for ds in s.datasets:
            plan = [r for r in ds.get("power_plan") or [] if s.question(r["variant"], r["reference"])]
            plan = declared_order(plan, s.verdict["family"])
            target = target or next((r.get("target") for r in plan), None)
            rows += [{"data set": s.labels[ds["dataset"]]} | r for r in plan_rows({"power_plan": plan})]
    if not rows:
        return []
    goal = f"{100 * target:.0f} %" if _finite(target) else "the target"
    return ["## Power plan of the question's contrasts", "",
            f"Seeds for a {goal} smallest detectable effect at the observed spread, each gated variant against "
            "the baseline (the other contrasts' plans are in their verdict.json, 'power_plan').", ""] + table(
        [r | {"smallest detectable now": r["now"], "seeds needed": r["needed"], "training cost": r["cost"]}
         for r in rows],
        ["data set", "contrast", "metric", "smallest detectable now", "seeds needed", "training cost"])


# ----------------------------------------------------------------------------------------------------------
# The page


def markdown_summary(verdicts: Sequence[str | Path] | str | Path) -> str:
    """The page without its title and command: the answer, then the tables (``report --markdown`` without
    ``--out`` prints this)."""
    return _body(load(verdicts))


def _body(sources: list[Source]) -> str:
    rows, used = claims_rows(sources)
    out = ["## The answer", "", answer(sources, rows), ""]
    out += across(sources) + per_dataset(sources) + peers(sources) + claims(rows, used) + power_plan(sources)
    return "\n".join(out).rstrip() + "\n"


def markdown_document(verdicts: Sequence[str | Path] | str | Path, out: str | Path) -> str:
    """The whole of docs/results.md: the title, the command that wrote it and the verdicts it read (their
    commits), then ``markdown_summary``."""
    sources = load(verdicts)
    command = (f"python -m alphastomics report --markdown {' '.join(s.arg for s in sources)} "
               f"--out {Path(out).as_posix()}")
    return "\n".join(header(sources, command)) + "\n" + _body(sources)
