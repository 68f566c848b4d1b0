"""docs/results.md, written whole in one command from the verdicts of the project's targets:
``python -m alphastomics report --markdown VERDICT [VERDICT ...] --out docs/results.md``
(``make results-page``).

Each VERDICT is a verdict.json or a results folder holding one; the order given is the order of the page. The
page reads as an answer: the title, the command and the verdicts it read (with their commits), then the answer
to the question in one paragraph, a template filled with the verdicts' numbers (each data set's learning gate,
the declared contrasts of each gated variant against the baseline on the primary metrics, their decisions and
smallest detectable effects, the pooled estimates, the cost from the claims table), then the tables: one per
data set (a line, then effect [interval], decision and smallest detectable effect in columns of their own), the
pooled estimates over the real tissues, the tested peers of all data sets (every untested one in one
sentence), the design note's claims for gated_headwise (the other variants' rows, the replicates of make
claims' rows and those on generated tissue counted in one sentence), and the power plan of the question's
contrast, gated_headwise against the baseline. A verdict file that does not exist is a line of the page ("not
run for this page: run `make powered`"); only when none of them exists is nothing written. The page is short
(docs/ has a word budget): what a verdict.json holds beyond these tables is named, not repeated.

Long because the page is one document: the answer, five tables and the lines around them, each from the
verdicts alone (the cells come from ``alphastomics.analysis.tables``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphastomics.analysis import verdict as V
from alphastomics.analysis.checks import MIN_SEEDS, NOT_INTERPRETED
from alphastomics.analysis.report_provenance import NOT_MEASURED
from alphastomics.analysis.tables import (
    ReportError,
    claim_cells,
    contrast_name,
    dataset_label,
    fmt,
    fmt_abs_ci,
    fmt_mde,
    fmt_p,
    fmt_pct,
    fmt_rel_ci,
    plan_rows,
    short_decision,
)
from alphastomics.analysis.timing import read_time
from alphastomics.provenance import describe
from alphastomics.variants import VARIANTS

TITLE = "# Results"
QUESTION = ("Does gated softmax attention (gated_headwise and the other gated variants) beat linear "
            "attention on held-out tissue, by how much, and at what cost?")
# The claims table's rows that say what the gate costs (alphastomics.analysis.claims)
TRAINING_TIME, PARAMETERS = "training time", "parameter overhead per attention layer"
# The design note's main comparison: its power plan and claims rows are the page's (the others: verdict.json)
MAIN = "gated_headwise"


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


def _ditto(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """A column's cell left blank where it repeats the row above (rows grouped by it)."""
    return [r | ({column: ""} if i and r[column] == rows[i - 1][column] else {}) for i, r in enumerate(rows)]


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


def wall_time(s: Source) -> str:
    """How long the target that wrote this verdict took (its make_time.json, when it times this verdict)."""
    t = read_time(Path(s.path))
    if t is None:
        return "wall time not recorded"
    minutes, seconds = divmod(int(t["seconds"]), 60)
    jobs = f", {t['snakemake_jobs']} Snakemake jobs" if t.get("snakemake_jobs") else ""
    setup = "set-up included" if t.get("set_up_included") else "set-up already done"
    return f"`{t['target']}` took {minutes} min {seconds:02d} s ({setup}{jobs}; {t['cores']} cores, {t['cpu']})"


def header(sources: list[Source], command: str) -> list[str]:
    out = [TITLE, "",
           f"Written whole by `{command}` from the verdicts below; rerun it rather than edit this file. Held-out "
           "sections only, one value per seed (the cell-weighted mean over the test sections); how to read it: "
           "docs/metrics.md, \"The verdict\".", ""]
    for s in sources:
        if s.verdict is None:
            out.append(f"- `{s.path}` ({s.target}): not run for this page: run `{s.target}`")
            continue
        c = commits(s)
        where = (f"commit {c[0]}" if len(c) == 1 else f"commits {', '.join(c)} (its runs differ)" if c
                 else "commit not recorded")
        unrecorded = ((s.verdict or {}).get("code") or {}).get("unrecorded") if c else None
        if unrecorded:
            where += f"; {unrecorded} outputs of its runs record none"
        out.append(f"- `{s.path}` ({s.target}): {', '.join(s.labels.values()) or 'no data set'}; {where}; "
                   f"{wall_time(s)}")
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
    out = [f"**{lead}.** {QUESTION} The models learned "
           + (f"all {len(sets)} data sets" if len(learned) == len(sets) > 1 else f"{len(learned)} of {len(sets)} "
              "data sets" + (f" ({', '.join(s.labels[ds['dataset']] for s, ds in learned)})" if learned else ""))
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


def _pct(x: Any) -> str:
    return fmt_pct(x).removesuffix(" %")


def _effect_cells(r: dict[str, Any]) -> dict[str, str]:
    """Effect, decision and smallest detectable effect in columns of their own, the percent in the header."""
    if r.get("decision") == NOT_INTERPRETED:
        return {EFFECT: "", "decision": NOT_INTERPRETED, DETECTABLE: ""}
    effect = _pct(r.get("relative_change")) + (
        f" [{_pct(r['relative_ci_low'])}, {_pct(r['relative_ci_high'])}]" if _finite(r.get("relative_ci_low"))
        else "")
    decision = short_decision(r.get("decision"))
    return {EFFECT: effect, "decision": "none" if decision == "none detected" else decision,
            DETECTABLE: fmt_mde(r.get("mde_relative")).removesuffix(" %")}


EFFECT, DETECTABLE = "effect % [95 % interval]", "smallest detectable %"
EFFECT_COLUMNS = [EFFECT, "decision", DETECTABLE]


def pooled_table(sources: list[Source]) -> list[str]:
    """The pooled estimates over 2 or more real tissues (what the comparison across tissues adds to the tables
    of each data set), one row per contrast and metric, the question's contrasts first."""
    present = [s for s in sources if s.verdict]
    pooled = sorted(_pooled(present), key=lambda se: not se[0].question(se[1]["variant"], se[1]["reference"]))
    if not pooled:
        return []
    rows = [{"contrast": contrast_name(e["variant"], e["reference"]), "metric": e["metric"]}
            | _effect_cells(e["pooled"])
            | {"tissues pooled": ", ".join(map(dataset_label, e["pooled"]["tissues"]))} for _, e in pooled]
    return ["## Pooled over the real tissues", "",
            "DerSimonian-Laird random effects over the real tissues; the interval and decision from the "
            "Hartung-Knapp-Sidik-Jonkman t interval, its scale floored at 1 (docs/metrics.md, \"Across "
            "tissues\").", ""] + table(_ditto(rows, "contrast"),
                                       ["contrast", "metric"] + EFFECT_COLUMNS + ["tissues pooled"])


def declared_order(records: list[dict[str, Any]], family: dict[str, Any]) -> list[dict[str, Any]]:
    """Records in the family's order: declared contrasts, then primary metrics."""
    pairs = [tuple(c) for c in family.get("contrasts", [])]
    metrics = list(family.get("primary_metrics", []))

    def rank(r: dict[str, Any]) -> tuple[int, int]:
        pair = (r["variant"], r["reference"])
        return (pairs.index(pair) if pair in pairs else len(pairs),
                metrics.index(r["metric"]) if r["metric"] in metrics else len(metrics))
    return sorted(records, key=rank)


def _warning(w: dict[str, Any]) -> str:
    """A data set's warning in a few words (the whole message is in verdict.json, 'warnings')."""
    if w.get("kind") == "few seeds":
        n = re.match(r"[\d or]+", w["message"])
        return f"{n.group(0).strip() if n else 'few'} seeds, fewer than {MIN_SEEDS}"
    if w.get("kind") == "early best validation":
        runs = w.get("runs") or []
        total = re.search(r" of (\d+) runs", w["message"])
        return (f"{len(runs)}{' of ' + total.group(1) if total else ''} runs best on validation early in "
                "training (docs/training.md)")
    return w["message"]


def _not_computed(ds: dict[str, Any]) -> str:
    """A data set's metrics not computed, and why, in a few words."""
    return "; ".join(f"{', '.join(e['metrics'])} ("
                     + ("no cell-type labels" if e["reason"] == V.NO_CELL_TYPES_WHY else e["reason"]) + ")"
                     for e in ds.get("not_computed") or [])


def dataset_line(src: Source, ds: dict[str, Any]) -> str:
    """One line: the data set, its target, seeds, learning gate, tests, warnings, what was not computed."""
    gate = ds.get("learning_gate") or {}
    label = src.labels[ds["dataset"]]
    seeds = "/".join(map(str, sorted({len(x) for x in ds["seeds"].values()}))) or "0"
    known = src.target.startswith("make ") and not label.endswith(f"({src.target})")
    head = f"**{label}**" + (f" ({src.target})" if known else "") + f": {seeds} seeds"
    if gate.get("outcome") == "not learned":
        msg = gate["message"].removeprefix("the models did not learn this tissue: ")
        head += (f"; **the models did not learn it** ({msg}): every contrast is not interpreted, the mean paired "
                 "difference in the metric's units [95 % t interval over seeds]")
    else:
        learned = [e["metric"] for e in gate.get("metrics") or [] if e.get("outcome") == "learned"]
        outcome = gate.get("message") if gate.get("outcome") == "not assessed" else gate.get("outcome")
        head += (f"; learning gate: {outcome}" + (f" ({', '.join(learned)})" if learned else "") if gate else "")
        head += f"; {len(ds['records'])} tests, Holm over the data set"
    out = [head + "."]
    out += [f"Warning: {_warning(w)}." for w in ds.get("warnings", [])]
    if _not_computed(ds):
        out.append(f"Not computed: {_not_computed(ds)}.")
    return " ".join(out)


def dataset_section(src: Source, ds: dict[str, Any]) -> list[str]:
    """One data set: its line, then rows = contrast x primary metric, columns = effect [95 % interval],
    decision, smallest detectable effect (a data set the models did not learn: the differences, not
    interpreted)."""
    out = [dataset_line(src, ds), ""]
    if not ds["records"]:
        return out + ["No declared contrast could be tested here (verdict.json, 'skipped').", ""]
    records = declared_order(ds["records"], src.verdict["family"])
    if (ds.get("learning_gate") or {}).get("outcome") == "not learned":
        rows = [{"contrast": contrast_name(r["variant"], r["reference"]), "metric": r["metric"],
                 "difference [95 % interval] (metric's units)": fmt_abs_ci(r).removeprefix("difference "),
                 "decision": r["decision"]} for r in records]
        return out + table(_ditto(rows, "contrast"), ["contrast", "metric",
                                                      "difference [95 % interval] (metric's units)", "decision"])
    rows = []
    for r in records:
        row = {"contrast": contrast_name(r["variant"], r["reference"]), "metric": r["metric"]} | _effect_cells(r)
        if r["decision"] == NOT_INTERPRETED:
            row[EFFECT] = fmt_abs_ci(r)
        rows.append(row)
    return out + table(_ditto(rows, "contrast"), ["contrast", "metric"] + EFFECT_COLUMNS)


def per_dataset(sources: list[Source]) -> list[str]:
    alpha = next((s.verdict["family"].get("alpha", 0.05) for s in sources if s.verdict), 0.05)
    out = ["## Each data set", "",
           "Rows: the declared contrasts x the primary metrics; relative change of the mean paired difference "
           f"[95 % t interval over seeds]; decision better or worse only when p_Holm < {alpha:g} (Holm over the "
           "data set's family), else none (no difference detected); smallest detectable at 80 % power.", ""]
    for s in sources:
        for ds in s.datasets:
            out += dataset_section(s, ds)
    return out


def peers(sources: list[Source]) -> list[str]:
    """The tested peer comparisons of all data sets in one table (per held-out section, the model's mean over
    seeds against the peer); every untested one in one sentence for the page: counts per data set and why."""
    rows, untested = [], {}
    for s in sources:
        for ds in s.datasets:
            label = s.labels[ds["dataset"]]
            for r in ds["peers"]:
                if r["decision"] == NOT_INTERPRETED or not _finite(r.get("p_value")):
                    few = re.fullmatch(r"too few sections to test \((\d+) < (\d+)\)", r["decision"])
                    why = f"too few held-out sections to test (fewer than {few[2]})" if few else r["decision"]
                    count, _ = untested.setdefault(why, {}).get(label, (0, ""))
                    sections = f" ({few[1]} section{'s' * (few[1] != '1')})" if few else ""
                    untested[why][label] = (count + 1, sections)
                    continue
                rows.append({"data set": label, "variant": r["variant"], "peer": r["peer"],
                             "metric": r["metric"], "sections": str(r["n"])} | _effect_cells(r))
    if not rows and not untested:
        return []
    out = ["## Peers", ""]
    if rows:
        out += ["Per held-out section: the model's mean over seeds against the peer's value, relative change "
                "[95 % t interval over sections], Holm over the data set's peer tests.", ""]
        out += table(rows, ["data set", "variant", "peer", "metric", "sections"] + EFFECT_COLUMNS)
    if untested:
        n = sum(c for where in untested.values() for c, _ in where.values())
        out += [f"{'Not tested' if rows else 'No peer comparison could be tested'}: {n} comparisons, "
                + "; ".join(f"{why}: " + ", ".join(f"{label} {c}{note}" for label, (c, note) in where.items())
                            for why, where in untested.items())
                + " (the per-section differences: verdict.json, 'peers').", ""]
    return out


def claims_rows(sources: list[Source]) -> tuple[list[dict[str, Any]], list[Source]]:
    """The claims table: all rows of the claims campaign's verdict (make claims; else the verdict with the most
    measured rows), then the measured rows of the other verdicts that it lacks; a claim measured somewhere
    loses its 'not measured' rows. Also the verdicts the rows came from, the first one first."""
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
    return rows, [first] + [s for s in have if s is not first and any(r["_from"] == s.target for r in rows)]


GATE_UNITS = ("gate range over t", "gate mean")


def _dataset_of(used: list[Source], r: dict[str, Any]) -> dict[str, Any] | None:
    """A claims row's data set entry, in the verdict the row came from."""
    src = next((s for s in used if s.target == r["_from"]), None)
    return next((d for d in (src.datasets if src else []) if d["dataset"] == r.get("dataset")), None)


def _tissue_task(used: list[Source], r: dict[str, Any]) -> tuple[str, str] | None:
    """A claims row's tissue (its data set's source) and task."""
    ds = _dataset_of(used, r)
    return (ds.get("source"), r.get("task")) if ds and ds.get("source") else None


def _replicates(rows: list[dict[str, Any]], used: list[Source]) -> dict[int, list[str]]:
    """The rows of the other verdicts on a tissue and task that the claims verdict (the first) measures too
    (make run's bdtnp beside make claims' bdtnp_position): replicates of its rows, counted, not shown. By row:
    the claims verdict's data sets of that tissue and task."""
    covered: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        key = _tissue_task(used, r) if r["_from"] == used[0].target else None
        if key and r["dataset"] not in covered.setdefault(key, []):
            covered[key].append(r["dataset"])
    return {id(r): covered[key] for r in rows if r["_from"] != used[0].target
            and (key := _tissue_task(used, r)) in covered}


def _measured(r: dict[str, Any]) -> str:
    """A claims row's measurement, compact: what every row of its kind shares is said once under the table."""
    unit = r.get("unit")
    if r["mark"] == NOT_MEASURED and r.get("measured") is None:
        return r.get("why") or NOT_MEASURED
    if unit == "relative" and _finite(r.get("measured")):
        return _pct(r["measured"]) + (f" [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
                                      if _finite(r.get("ci_low")) else "") + " %"
    if unit == "share":
        lo, hi = (f"{100 * r[k]:.1f}" if _finite(r.get(k)) else "?" for k in ("ci_low", "ci_high"))
        return (f"{100 * r['measured']:.1f} % (seeds {lo}-{hi} %)"
                + (f"; softmax {100 * r['control']:.1f} %" if _finite(r.get("control")) else ""))
    if unit == "gate range over t":
        return f"{fmt(r.get('measured'))} (sd {fmt(r.get('seed_sd'))}, p_Holm {fmt_p(r.get('holm_p'))})"
    if unit == "gate mean":
        below = f", {100 * r['share_below']:.1f} %" if _finite(r.get("share_below")) else ""
        return (f"{fmt(r.get('measured'))} [{fmt(r.get('ci_low'))}, {fmt(r.get('ci_high'))}], "
                f"std {fmt(r.get('std'))}{below}")
    return claim_cells(r | {"why": None})["measured"]


def _merge_layers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gate's rows of one claim, data set and variant, one per layer, as one row: 'L0 ...; L1 ...' (and the
    marks, unless they agree)."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        cell = {"r": r, "measured": _measured(r), "mark": r["mark"]}
        if r.get("unit") not in GATE_UNITS or r.get("layer") is None:
            out.append(cell)
            continue
        k = (r["claim"], r.get("dataset"), r.get("task"), r.get("variant"), r["_from"])
        if k not in groups:
            groups[k] = cell | {"layers": []}
            out.append(groups[k])
        groups[k]["layers"].append((r["layer"], cell["measured"], r["mark"]))
    for g in groups.values():
        layers = g.pop("layers")
        g["measured"] = "; ".join(f"L{la} {m}" for la, m, _ in layers)
        marks = list(dict.fromkeys(m for _, _, m in layers))
        g["mark"] = marks[0] if len(marks) == 1 else ", ".join(f"L{la} {m}" for la, _, m in layers)
    return out


def _rows(rs: list[Any]) -> str:
    return f"{len(rs)} row{'s' * (len(rs) != 1)}"


def _mark(mark: str) -> str:
    """A mark's first words, for a tally ('met, but so does the ungated control' counts as met)."""
    return next((w for w in ("not met", "not measured", "not detected", "inconclusive", "met", "measured")
                 if mark.startswith(w)), mark)


def claims(rows: list[dict[str, Any]], used: list[Source], baseline: str) -> list[str]:
    """The claims of gated_headwise (the design note's main variant) and those of no variant: one row per claim
    and data set (the gate's layers in one row), in the note's order; a claim or expectation said once for
    the rows under it; what the rows of a kind share, said once under the table. The other variants' rows,
    those not interpreted, the other verdicts' replicates of the claims verdict's rows and the rows on generated
    tissue (a check of the method, not a tissue): counted in one sentence."""
    if not rows:
        return []
    order = list(dict.fromkeys(r["claim"] for r in rows))
    again = _replicates(rows, used)
    other = {id(r) for r in rows if r.get("variant") not in (None, "", MAIN) or r["mark"] == NOT_INTERPRETED}
    generated = {id(r) for r in rows if (_dataset_of(used, r) or {}).get("kind") == V.SYNTHETIC} - other
    hidden = other | generated | set(again)
    shown = sorted((r for r in rows if id(r) not in hidden), key=lambda r: order.index(r["claim"]))
    sources: dict[str, set[str]] = {}
    tasks: dict[str, set[str]] = {}
    for r in shown:
        if r.get("dataset"):
            sources.setdefault(r["dataset"], set()).add(r["_from"])
            tasks.setdefault(r["dataset"], set()).add(r.get("task") or "")
    cells, prev = [], ("", "")
    for c in _merge_layers(shown):
        r = c["r"]
        ds = r.get("dataset")
        where = (dataset_label(ds) + (f" ({r['task']})" if r.get("task") and len(tasks[ds]) > 1 else "")
                 + (f" ({r['_from']})" if len(sources[ds]) > 1 and r["_from"] != used[0].target else "")
                 if ds else "the note's size" if _finite(r.get("measured")) else "")
        expected = r.get("expected") or ""
        cells.append({"claim": "" if r["claim"] == prev[0] else r["claim"], "data set": where,
                      "expected": "" if (r["claim"], expected) == prev else expected,
                      "measured [95 % interval]": c["measured"], "result": c["mark"]})
        prev = (r["claim"], expected)
    whys: dict[str, dict[str, None]] = {}
    for r in shown:
        if r.get("why") and r["mark"] != NOT_MEASURED:
            whys.setdefault(r["claim"], {})[r["why"]] = None
    notes = [f"{claim}: {'; '.join(w)}" for claim, w in whys.items()]
    if any(r.get("unit") == "share" for r in shown):
        notes.append("no attention sink: the worst head's largest share of attention on one cell (its range over "
                     "seeds), beside the softmax control's worst head")
    times = next((r.get("times") for r in shown if r.get("unit") == "gate range over t" and r.get("times")), None)
    if times:
        notes.append(f"the gate over t: per layer (L0, L1, ...), the range of its mean over t = "
                     f"{', '.join(f'{t:g}' for t in times)} (sd: seed-to-seed)")
    if any(r.get("unit") == "gate mean" for r in shown):
        notes.append("healthy gate range: per layer, the mean gate score [95 % interval], its std and the share "
                     "of scores below 0.1")
    out = ["## The design note's claims", "",
           f"From {', '.join(f'`{s.path}`' for s in used)}: {MAIN} against {baseline} (unless the expected cell "
           "names another), relative changes with their 95 % interval over seeds; a blank claim or expected cell "
           "repeats the row above (docs/metrics.md, \"The claims table\").", ""] + table(
        cells, ["claim", "data set", "expected", "measured [95 % interval]", "result"])
    if notes:
        out += ["Measured: " + "; ".join(notes) + ".", ""]
    parts = []
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if id(r) in other:
            by.setdefault(NOT_INTERPRETED if r["mark"] == NOT_INTERPRETED else r["variant"], []).append(r)
    for k, rs in by.items():
        marks = list(dict.fromkeys(_mark(r["mark"]) for r in rs))
        tally = ", ".join(f"{sum(_mark(r['mark']) == m for r in rs)} {m}" for m in marks)
        where = ", ".join(dict.fromkeys(dataset_label(r["dataset"]) for r in rs if r.get("dataset")))
        parts.append(f"{len(rs)} not interpreted (the models did not learn {where})" if k == NOT_INTERPRETED
                     else f"{_rows(rs)} of {k} ({tally})")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if id(r) in hidden - other:
            groups.setdefault((r["_from"], r["dataset"]), []).append(r)
    for (target, ds), rs in groups.items():
        parts.append(f"{_rows(rs)} on {dataset_label(ds)} ({target}), " + (
            "generated tissue, a check of the method" if id(rs[0]) in generated else
            f"replicates of {', '.join(map(dataset_label, again[id(rs[0])]))} ({used[0].target}): the same "
            "tissue and task"))
    if parts:
        out += [f"Not shown: {'; '.join(parts)}; every row is in its verdict.json, 'claims'.", ""]
    return out


def power_plan(sources: list[Source]) -> list[str]:
    """The power plan of the question's contrast only: gated_headwise against the baseline."""
    rows, target = [], None
    for s in sources:
        for ds in s.datasets:
            plan = [r for r in ds.get("power_plan") or [] if (r["variant"], r["reference"]) == (MAIN, s.baseline)]
            plan = declared_order(plan, s.verdict["family"])
            target = target or next((r.get("target") for r in plan), None)
            for r, cells in zip(plan, plan_rows({"power_plan": plan})):
                rows.append({"data set": s.labels[ds["dataset"]], "metric": r["metric"],
                             "seeds needed": cells["needed"],
                             "train-job minutes": (f"{r['train_minutes']:,.0f}" if _finite(r.get("train_minutes"))
                                                   else NOT_MEASURED)})
    if not rows:
        return []
    baseline = next(s.baseline for s in sources if s.verdict)
    goal = f"{100 * target:.0f} %" if _finite(target) else "the target"
    return [f"## Power plan: {contrast_name(MAIN, baseline)}", "",
            f"Seeds for a {goal} smallest detectable effect at the observed spread (today's seeds and smallest "
            "detectable effect: the data set's line and table above), and their training-job minutes; the other "
            "contrasts' plans: verdict.json, 'power_plan'.", ""] + table(
        _ditto(rows, "data set"), ["data set", "metric", "seeds needed", "train-job minutes"])


# ----------------------------------------------------------------------------------------------------------
# The page


def markdown_summary(verdicts: Sequence[str | Path] | str | Path) -> str:
    """The page without its title and command: the answer, then the tables (``report --markdown`` without
    ``--out`` prints this)."""
    return _body(load(verdicts))


def _body(sources: list[Source]) -> str:
    rows, used = claims_rows(sources)
    baseline = next(s.baseline for s in sources if s.verdict)
    out = ["## The answer", "", answer(sources, rows), ""]
    out += (per_dataset(sources) + pooled_table(sources) + peers(sources) + claims(rows, used, baseline)
            + power_plan(sources))
    return "\n".join(out).rstrip() + "\n"


def markdown_document(verdicts: Sequence[str | Path] | str | Path, out: str | Path) -> str:
    """The whole of docs/results.md: the title, the command that wrote it and the verdicts it read (their
    commits), then ``markdown_summary``."""
    sources = load(verdicts)
    command = (f"python -m alphastomics report --markdown {' '.join(s.arg for s in sources)} "
               f"--out {Path(out).as_posix()}")
    return "\n".join(header(sources, command)) + "\n" + _body(sources)
