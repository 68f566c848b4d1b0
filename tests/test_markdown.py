"""docs/results.md written whole from several targets' verdicts (alphastomics/analysis/markdown.py): the page
opens with the title, the command and the answer, whose numbers are the verdicts'; one line and one table per
data set, effect, decision and smallest detectable effect in columns of their own; the pooled estimates in one
small table; the tested peers of all data sets in one table, the untested in one sentence for the page; the
claims of gated_headwise in compact columns (the other variants, make claims' replicates and generated tissue
counted in one sentence); the power plan of gated_headwise against linear only; a target not run is a line of
the page; the page stays within a word bound of its records; the same verdicts give the same bytes, written
atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from alphastomics.__main__ import main as cli
from alphastomics.analysis import checks, markdown, report
from alphastomics.analysis import verdict as V
from alphastomics.analysis.runs import load_run
from alphastomics.analysis.tables import ReportError, fmt_mde, fmt_p, fmt_pct, fmt_rel_ci

RANDOM = {"knn_preservation": 0.1, "distance_spearman": 0.0}
FAMILY = V.Family(
    contrasts=(("gated_headwise", "linear"), ("gated_elementwise", "linear"), ("gated_headwise", "softmax"),
               ("softmax", "linear")),
    primary_metrics=("knn_preservation", "distance_spearman"),
)
COMMIT = "a" * 40
# Per (variant, seed, section): the factor on linear's value. gated_headwise is 10 % better on kNN preservation
# in every seed (a decision "better"), the others wobble around linear (no difference).
FACTORS = {
    "linear": lambda m, s, i: 1.0,
    "gated_headwise": lambda m, s, i: 1.10 + 0.002 * s if m == "knn_preservation" else 1 + 0.01 * (s - 1),
    "gated_elementwise": lambda m, s, i: 1 + 0.02 * (-1) ** (i + s),
    "softmax": lambda m, s, i: 1 - 0.01 * (-1) ** s,
    "peer_knn": lambda m, s, i: 0.8,
}
TARGETS = {"results/verdict.json": "make run", "results/tissues/verdict.json": "make tissues",
           "results/claims/verdict.json": "make claims", "results/powered/verdict.json": "make powered"}


def _run(root: Path, ds: str, variant: str, seed: int, n_sections: int, *, flat: bool = False,
         code: bool = False) -> Path:
    run = root / ds / variant / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    rows = []
    for i in range(n_sections):
        if flat:  # at the random level
            vals = {"knn_preservation": 0.1 + 0.005 * ((i + seed) % 3), "distance_spearman": 0.01 * ((i + seed) % 3 - 1)}
        else:
            base = {"knn_preservation": 0.5, "distance_spearman": 0.6}
            vals = {m: b * (1 + 0.05 * i + 0.01 * seed) * FACTORS[variant](m, seed, i) for m, b in base.items()}
        rows.append({"section": f"s{i}", "n_cells": 40, **vals})
    overall = {m: float(np.mean([r[m] for r in rows])) for m in RANDOM}
    record = {"commit": COMMIT, "dirty": False}
    metrics = {"overall": overall, "random_reference": RANDOM, "per_section": rows}
    if code:
        metrics["code"] = {"evaluate": record, "sample": record}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    if not variant.startswith("peer_"):
        (run / "train").mkdir()
        summary = {"wall_time_s": 60.0 * (1.5 if variant != "linear" else 1.0)} | ({"code": record} if code else {})
        (run / "train" / "train_summary.json").write_text(json.dumps(summary))
    return run


def _campaign(root: Path, out: str, plan: dict[str, dict], claims: list[dict] | None = None,
              family: V.Family = FAMILY) -> dict:
    """Runs under root/results/{dataset}/..., their verdict at root/out (relative run paths, as the workflow
    writes them)."""
    runs, manifests = [], {}
    for ds, how in plan.items():
        for v in how["variants"]:
            for seed in range(3):
                runs.append(_run(root / "results", ds, v, seed, how["sections"], flat=how.get("flat", False),
                                 code=how.get("code", False)))
        if how.get("manifest"):
            manifests[ds] = how["manifest"]
    verdict = V.build([load_run(r) for r in runs], family, manifests=manifests)
    verdict["runs"] = sorted(r.relative_to(root).as_posix() for r in runs)
    if claims is not None:
        verdict["claims"] = claims
    V.write(verdict, root / out)
    return verdict


CLAIMS = [
    {"claim": "expression MSE", "expected": "-10 .. -5 %", "dataset": None, "task": None, "variant": None,
     "reference": None, "measured": None, "mark": "not measured", "why": "no pos_to_expr runs here"},
    {"claim": "kNN preservation", "expected": "+5 .. +10 %", "dataset": "toy", "task": "expr_to_pos",
     "variant": "gated_headwise", "reference": "linear", "measured": 0.1, "ci_low": 0.09, "ci_high": 0.11,
     "mde_relative": 0.02, "n": 3, "unit": "relative", "mark": "met"},
    {"claim": "healthy gate range", "expected": "mean ~0.5, std ~0.2 (note); paper: sparse, mean ~0.1",
     "dataset": "toy", "task": "expr_to_pos", "variant": "gated_headwise", "reference": None, "layer": 0,
     "measured": 0.48, "ci_low": 0.4, "ci_high": 0.56, "std": 0.3, "share_below": 0.145, "unit": "gate mean",
     "mark": "not met"},
    {"claim": "healthy gate range", "expected": "mean ~0.5, std ~0.2 (note); paper: sparse, mean ~0.1",
     "dataset": "toy", "task": "expr_to_pos", "variant": "gated_headwise", "reference": None, "layer": 1,
     "measured": 0.68, "ci_low": 0.55, "ci_high": 0.81, "std": 0.27, "share_below": 0.028, "unit": "gate mean",
     "mark": "met"},
    {"claim": "parameter overhead per attention layer", "expected": "+4%", "dataset": None, "task": None,
     "variant": "gated_headwise", "reference": "linear", "measured": 0.008, "unit": "relative", "mark": "not met"},
    {"claim": "parameter overhead per attention layer", "expected": "+50%", "dataset": None, "task": None,
     "variant": "gated_elementwise", "reference": "linear", "measured": 0.25, "unit": "relative", "mark": "not met"},
    {"claim": "training time", "expected": "the cost (no number in the note)", "dataset": "toy",
     "task": "expr_to_pos", "variant": "gated_headwise", "reference": "linear", "measured": 0.5, "ci_low": 0.45,
     "ci_high": 0.55, "n": 3, "unit": "relative", "mark": "measured", "why": "trained size d_model 64"},
]
# make tissues' rows: kNN preservation on mop; training time not measured there (make claims measures it)
TISSUE_CLAIMS = [CLAIMS[0], CLAIMS[1] | {"dataset": "mop", "measured": 0.05, "ci_low": 0.04, "ci_high": 0.06},
                 {"claim": "training time", "expected": "the cost (no number in the note)", "dataset": None,
                  "task": None, "variant": None, "reference": None, "measured": None, "mark": "not measured",
                  "why": "no train_summary.json here: make claims"}]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make run (toy: 2 sections, so its peers cannot be tested; flat: at the random level), make tissues
    (mop, starmap: 6 real sections each, peers tested, runs recording their commit) and make claims (claims
    table); make powered not run."""
    root = tmp_path_factory.mktemp("project")
    every = ["linear", "gated_headwise", "gated_elementwise", "softmax"]
    _campaign(root, "results/verdict.json", {
        "toy": {"variants": every + ["peer_knn"], "sections": 2},
        "flat": {"variants": ["linear", "gated_headwise"], "sections": 2, "flat": True}})
    real = {"source": "csv", "cell_types": None}
    _campaign(root, "results/tissues/verdict.json", {
        "mop": {"variants": ["linear", "gated_headwise", "softmax", "peer_knn"], "sections": 6, "code": True,
                "manifest": {"dataset": "mop"} | real},
        "starmap": {"variants": ["linear", "gated_headwise", "softmax", "peer_knn"], "sections": 6, "code": True,
                    "manifest": {"dataset": "starmap"} | real}},
        claims=TISSUE_CLAIMS,
        family=V.Family(tuple(c for c in FAMILY.contrasts if c[0] != "gated_elementwise"), FAMILY.primary_metrics))
    _campaign(root, "results/claims/verdict.json", {"toy_claims": {"variants": every, "sections": 3}},
              claims=CLAIMS)
    return root


def _args(root: Path) -> list[str]:
    return [(root / p).as_posix() for p in TARGETS]


def _page(root: Path) -> str:
    return markdown.markdown_document(_args(root), root / "docs" / "results.md")


def _verdicts(root: Path) -> list[dict]:
    return [json.loads((root / p).read_text()) for p in TARGETS if (root / p).is_file()]


def _section(page: str, head: str) -> str:
    part = page[page.index(head + "\n"):]
    nxt = re.search(r"\n## ", part[len(head):])
    return part[:len(head) + nxt.start()] if nxt else part


def _tables(text: str) -> list[list[list[str]]]:
    """Each Markdown table of text: its rows of cells (the header first, the rule left out)."""
    out, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|[-|: ]+\|", line):
                cur.append([c.strip() for c in line.strip("|").split("|")])
        elif cur:
            out.append(cur)
            cur = []
    return out


def _dataset(page: str, label: str) -> tuple[str, list[list[str]]]:
    """A data set's line and its table."""
    part = _section(page, "## Each data set")
    part = part[part.index(f"\n**{label}**") + 1:]
    line, rest = part.split("\n", 1)
    return line, _tables(rest)[0]


def _answer(page: str) -> str:
    return _section(page, "## The answer").split("\n\n")[1]


def _effect(r: dict) -> str:
    """The effect cell: the relative change and its 95 % interval, in percent (the unit in the header)."""
    pct = [fmt_pct(r[k]).removesuffix(" %") for k in ("relative_change", "relative_ci_low", "relative_ci_high")]
    return f"{pct[0]} [{pct[1]}, {pct[2]}]"


EFFECT_HEADER = ["effect % [95 % interval]", "decision", "smallest detectable %"]
DECISIONS = ("better", "worse", "none", checks.NOT_INTERPRETED)  # none: no difference detected


def test_the_page_opens_with_title_command_then_the_answer_before_any_table(project):
    page = _page(project)
    lines = page.splitlines()
    assert lines[0] == "# Results"
    command = next(i for i, line in enumerate(lines) if "`python -m alphastomics report --markdown " in line)
    assert f"--markdown {' '.join(_args(project))} --out {(project / 'docs/results.md').as_posix()}`" in lines[command]
    answer = lines.index("## The answer")
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert 0 < command < answer < answer + 2 < first_table
    assert lines[answer + 1] == "" and lines[answer + 2].startswith("**") and lines[answer + 3] == ""
    # the verdicts it read, each with the target that writes it and its commit
    head = "\n".join(lines[:answer])
    assert "- `" + (project / "results/tissues/verdict.json").as_posix() + "` (make tissues): MOp, STARmap; commit aaaaaaa" \
        in head
    assert "(make run): toy, flat; commit not recorded" in head or "(make run): flat, toy; commit not recorded" in head
    # then the sections, in this order; no section repeats the tables of each data set
    heads = [line for line in lines if line.startswith("## ")]
    assert heads == ["## The answer", "## Each data set", "## Pooled over the real tissues", "## Peers",
                     "## The design note's claims", "## Power plan: gated_headwise vs linear"]


def test_the_answer_is_the_verdicts_numbers(project):
    answer = _answer(_page(project))
    assert len(answer.split()) <= 300
    sets = [ds for v in _verdicts(project) for ds in v["datasets"]]
    learned = [ds for ds in sets if ds["learning_gate"]["outcome"] != "not learned"]
    tests = [r for ds in learned for r in ds["records"] if r["reference"] == "linear" and r["variant"].startswith("gated")]
    words = [r["decision"] for r in tests]
    b, w = words.count("better"), words.count("worse")
    none = sum(x.startswith("no difference detected") for x in words)
    assert b >= 1 and w == 0 and none >= 1  # the fixture's design: headwise better on kNN preservation
    assert answer.startswith(f"**Better in {b} of {len(tests)} tests.**")
    assert f"The models learned {len(learned)} of {len(sets)} data sets" in answer
    assert "not learned, so not interpreted: flat" in answer
    assert f"the decisions are {b} better, {w} worse and {none} no difference detected" in answer
    lo = min(tests, key=lambda r: r["relative_change"])
    hi = max(tests, key=lambda r: r["relative_change"])
    assert f"run from {fmt_rel_ci(lo)} (" in answer and f") to {fmt_rel_ci(hi)} (" in answer
    mdes = sorted(r["mde_relative"] for r in tests)
    assert f"run from {fmt_mde(mdes[0])} to {fmt_mde(mdes[-1])} (median {fmt_mde(float(np.median(mdes)))})" in answer
    for r in tests:
        if r["decision"] == "better":
            assert f"{fmt_rel_ci(r)} (p_Holm {fmt_p(r['holm_p'])})" in answer
    # the pooled estimates over the two real tissues, and the cost from the claims table
    pooled = [e["pooled"] for e in _verdicts(project)[1]["across_tissues"]["contrasts"]
              if (e["variant"], e["reference"]) == ("gated_headwise", "linear")]
    assert f"Pooled over the real tissues (MOp, STARmap), {[p['decision'] for p in pooled].count('better')} of " \
        f"{len(pooled)} estimates are better" in answer
    assert f"training time against linear over the data sets measured, at the trained size: gated_headwise " \
        f"{fmt_pct(0.5)}" in answer and f"gated_headwise {fmt_pct(0.008)}" in answer
    assert f"gated_elementwise {fmt_pct(0.25)}" in answer  # the cost of every gated variant, not only the table's
    assert "Not run for this page: `make powered`" in answer


def test_each_data_set_is_one_line_then_effect_decision_and_detectable_in_columns_of_their_own(project):
    page = _page(project)
    assert "## Every contrast on every data set" not in page and "p_Holm |" not in page
    toy = json.loads((project / "results/verdict.json").read_text())
    ds = next(d for d in toy["datasets"] if d["dataset"] == "toy")
    rec = next(r for r in ds["records"]
               if (r["variant"], r["reference"], r["metric"]) == ("gated_headwise", "linear", "knn_preservation"))
    line, t = _dataset(page, "toy")
    assert line == (f"**toy** (make run): 3 seeds; learning gate: learned (knn_preservation, distance_spearman); "
                    f"{len(ds['records'])} tests, Holm over the data set. Warning: 3 seeds, fewer than 5.")
    assert t[0] == ["contrast", "metric"] + EFFECT_HEADER
    row = next(r for r in t if r[:2] == ["gated_headwise vs linear", "knn_preservation"])
    assert row[2:] == [_effect(rec), "better", fmt_mde(rec["mde_relative"]).removesuffix(" %")]
    # rows in the declared order (contrasts, then primary metrics), a contrast named once for its rows
    assert [r[:2] for r in t[1:4]] == [["gated_headwise vs linear", "knn_preservation"], ["", "distance_spearman"],
                                       ["gated_elementwise vs linear", "knn_preservation"]]
    assert len(t) - 1 == len(ds["records"]) and all(r[3] in DECISIONS for r in t[1:])
    # what was not computed, in a few words, on the data set's line
    line, _ = _dataset(page, "MOp")
    assert line.startswith("**MOp** (make tissues): 3 seeds; learning gate: learned")
    assert line.endswith("Not computed: neighborhood_ari, neighborhood_nmi (no cell-type labels).")


def test_the_pooled_estimates_are_one_small_table(project):
    part = _section(_page(project), "## Pooled over the real tissues")
    (t,) = _tables(part)
    assert t[0] == ["contrast", "metric"] + EFFECT_HEADER + ["tissues pooled"]
    pooled = [e for e in _verdicts(project)[1]["across_tissues"]["contrasts"] if e["pooled"]["k"] >= 2]
    assert len(t) - 1 == len(pooled) and {r[-1] for r in t[1:]} == {"MOp, STARmap"}
    e = next(e for e in pooled if (e["variant"], e["metric"]) == ("gated_headwise", "knn_preservation")
             and e["reference"] == "linear")
    assert t[1][:4] == ["gated_headwise vs linear", "knn_preservation", _effect(e["pooled"]),
                        "better" if e["pooled"]["decision"] == "better" else "none"]
    assert part.count("DerSimonian-Laird") == 1 and "Hartung-Knapp-Sidik-Jonkman" in part


def test_a_tissue_the_models_did_not_learn_shows_differences_without_words(project):
    page = _page(project)
    line, t = _dataset(page, "flat")
    assert line.startswith("**flat** (make run): 3 seeds; **the models did not learn it** (every method is at the "
                           "random level): every contrast is not interpreted")
    assert t[0] == ["contrast", "metric", "difference [95 % interval] (metric's units)", "decision"]
    assert {r[3] for r in t[1:]} == {checks.NOT_INTERPRETED}
    for row in t[1:]:
        for word in ("better", "worse", "%"):
            assert word not in " ".join(row), word


def test_peers_of_every_data_set_in_one_table_and_the_untested_in_one_sentence(project):
    page = _page(project)
    peers = _section(page, "## Peers")
    (t,) = _tables(peers)
    assert t[0] == ["data set", "variant", "peer", "metric", "sections"] + EFFECT_HEADER
    verdicts = _verdicts(project)
    tested = [r for v in verdicts for ds in v["datasets"] for r in ds["peers"] if r["p_value"] is not None]
    assert len(t) - 1 == len(tested) and {r[0] for r in t[1:]} == {"MOp", "STARmap"}
    untested = [r for v in verdicts for ds in v["datasets"] for r in ds["peers"] if r["p_value"] is None]
    assert untested and {r["decision"] for r in untested} == {"too few sections to test (2 < 5)"}
    # one sentence for the whole page: how many per data set and why
    assert page.count("too few") == 1
    (line,) = [x for x in peers.splitlines() if x.startswith("Not tested")]
    assert line.startswith(f"Not tested: {len(untested)} comparisons, too few held-out sections to test (fewer "
                           f"than 5): toy {len(untested)} (2 sections)")


def test_the_power_plan_shows_only_gated_headwise_against_linear(project):
    plan = _section(_page(project), "## Power plan: gated_headwise vs linear")
    (t,) = _tables(plan)
    assert t[0] == ["data set", "metric", "seeds needed", "train-job minutes"]
    expected = [(ds["dataset"], r) for v in _verdicts(project) for ds in v["datasets"] for r in ds["power_plan"]
                if (r["variant"], r["reference"]) == ("gated_headwise", "linear")]
    assert len(t) - 1 == len(expected)
    labels = {"mop": "MOp", "starmap": "STARmap"}
    for i, (row, (ds, r)) in enumerate(zip(t[1:], expected)):
        same = i and expected[i - 1][0] == ds  # a data set named once for its rows
        assert row == ["" if same else labels.get(ds, ds), r["metric"], str(r["seeds_needed"]),
                       f"{r['train_minutes']:,.0f}"]
    everything = sum(len(ds["power_plan"]) for v in _verdicts(project) for ds in v["datasets"])
    assert everything > len(expected)  # gated_elementwise, softmax vs linear and those against softmax: left out
    assert "gated_elementwise" not in plan


def test_claims_of_gated_headwise_in_compact_columns(project):
    claims = _section(_page(project), "## The design note's claims")
    (t,) = _tables(claims)
    assert t[0] == ["claim", "data set", "expected", "measured [95 % interval]", "result"]  # no "from" column
    rows = t[1:]
    # a claim and its expectation said once for the rows under it; make tissues' row (MOp) beside make claims'
    knn = next(i for i, r in enumerate(rows) if r[0] == "kNN preservation")
    assert rows[knn][1:] == ["toy", "+5 .. +10 %", "+10.0 [+9.0, +11.0] %", "met"]
    assert rows[knn + 1] == ["", "MOp", "", "+5.0 [+4.0, +6.0] %", "met"]
    # expression MSE is measured nowhere: one row saying why; training time is measured (make claims): make
    # tissues' "not measured" row for it is left out
    assert [r[0] for r in rows].count("expression MSE") == 1
    assert [r for r in rows if r[0] == "training time"] == [
        ["training time", "toy", "the cost (no number in the note)", "+50.0 [+45.0, +55.0] %", "measured"]]
    assert "no train_summary.json here" not in claims
    # the gate's layers in one row, the marks of each layer when they differ
    (gate,) = [r for r in rows if r[0] == "healthy gate range"]
    assert gate[3] == "L0 0.480 [0.400, 0.560], std 0.300, 14.5 %; L1 0.680 [0.550, 0.810], std 0.270, 2.8 %"
    assert gate[4] == "L0 not met, L1 met"
    assert "healthy gate range: per layer, the mean gate score [95 % interval], its std and the share of scores " \
        "below 0.1" in claims
    # what the rows of a kind share is said once under the table; the other variants' rows, counted
    assert claims.count("trained size d_model 64") == 1 and "training time: trained size d_model 64" in claims
    assert "Not shown: 1 row of gated_elementwise (1 not met); every row is in its verdict.json, 'claims'." in claims
    assert "gated_elementwise" not in "".join(" ".join(r) for r in rows)


def test_replicates_of_the_claims_verdicts_rows_and_generated_tissue_are_counted_not_shown(tmp_path):
    """make run's bdtnp beside make claims' bdtnp_position: the same tissue (source) and task, so make run's rows
    are replicates; generated tissue is a check of the method: both counted in the sentence, not rows; a tissue
    make claims does not measure keeps its rows."""
    knn = CLAIMS[1]
    bdtnp = {"source": "bdtnp", "cell_types": None}
    _campaign(tmp_path, "results/verdict.json", {
        "bdtnp": {"variants": ["linear", "gated_headwise"], "sections": 3, "manifest": {"dataset": "bdtnp"} | bdtnp},
        "cortex": {"variants": ["linear", "gated_headwise"], "sections": 3,
                   "manifest": {"dataset": "cortex", "source": "csv", "cell_types": None}},
        "gen": {"variants": ["linear", "gated_headwise"], "sections": 3,
                "manifest": {"dataset": "gen", "source": "synthetic", "cell_types": None}}},
        claims=[knn | {"dataset": "bdtnp", "measured": 0.02}, knn | {"dataset": "cortex", "measured": 0.03},
                knn | {"dataset": "gen", "measured": 0.04}])
    _campaign(tmp_path, "results/claims/verdict.json", {
        "bdtnp_position": {"variants": ["linear", "gated_headwise"], "sections": 3,
                           "manifest": {"dataset": "bdtnp_position"} | bdtnp}},
        claims=[knn | {"dataset": "bdtnp_position"}])
    page = markdown.markdown_document([tmp_path / "results", tmp_path / "results/claims"], tmp_path / "r.md")
    claims = _section(page, "## The design note's claims")
    (t,) = _tables(claims)
    assert [r[1] for r in t[1:]] == ["bdtnp_position", "cortex"]
    assert ("Not shown: 1 row on bdtnp (make run), replicates of bdtnp_position (make claims): the same tissue "
            "and task; 1 row on gen (make run), generated tissue, a check of the method; every row is in its "
            "verdict.json, 'claims'.") in claims


def test_a_missing_verdict_is_a_line_of_the_page_and_none_found_writes_nothing(project, tmp_path, capsys):
    page = _page(project)
    powered = (project / "results/powered/verdict.json").as_posix()
    assert f"- `{powered}` (make powered): not run for this page: run `make powered`" in page
    out = tmp_path / "results.md"
    missing = [(tmp_path / p).as_posix() for p in ("results/tissues/verdict.json", "results/powered")]
    assert cli(["report", "--markdown", *missing, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{missing[0]}: not found; run make tissues" in err
    assert f"{missing[1]}/verdict.json: not found; run make powered" in err
    assert not out.exists()
    with pytest.raises(ReportError, match="not found; run make tissues"):
        markdown.markdown_summary([missing[0]])


def test_the_page_stays_short(project):
    """The page grows with what the verdicts hold, and only so: at most WORDS_FIXED + WORDS_PER_ROW words per
    record (contrast x metric per data set), tested peer comparison and claims row, counted as `wc -w` counts (a
    table's '|' is a word). The tables each record once; a second table of the same records breaks this."""
    page = _page(project)
    verdicts = _verdicts(project)
    rows = sum(len(ds["records"]) + sum(r["p_value"] is not None for r in ds["peers"])
               for v in verdicts for ds in v["datasets"])
    rows += sum(len(v.get("claims") or []) for v in verdicts)
    assert len(page.split()) <= WORDS_FIXED + WORDS_PER_ROW * rows, (len(page.split()), rows)


# The word bound of the page (test_the_page_stays_short): the fixed lines (title, command, the verdicts, the
# answer, the notes around the tables) and the words per record shown. The page on make run, make tissues and
# make claims (docs/results.md) holds about 300 records and claims rows in under 4,000 words: 13 a row.
WORDS_FIXED, WORDS_PER_ROW = 1250, 14


def test_the_cli_writes_the_same_bytes_twice_atomically(project, tmp_path, monkeypatch):
    out = tmp_path / "docs" / "results.md"
    folders = [(project / p).parent.as_posix() for p in TARGETS]  # results folders work as well as files
    assert cli(["report", "--markdown", *folders, "--out", str(out)]) == 0
    first = out.read_bytes()
    assert cli(["report", "--markdown", *folders, "--out", str(out)]) == 0
    assert out.read_bytes() == first and first.decode().startswith("# Results\n")
    assert first.decode() == _page(project).replace(" ".join(_args(project)), " ".join(folders)).replace(
        (project / "docs/results.md").as_posix(), str(out))
    # written through artifacts.atomic_write_text: a failing page leaves the old file and no temporary file
    writes = []
    monkeypatch.setattr(report, "atomic_write_text", lambda p, text: writes.append(p) or out.write_text(text))
    assert cli(["report", "--markdown", *folders, "--out", str(out)]) == 0 and writes == [out]
    monkeypatch.undo()
    bad = tmp_path / "bad" / "verdict.json"
    bad.parent.mkdir()
    bad.write_text("{")
    assert cli(["report", "--markdown", *folders, str(bad), "--out", str(out)]) == 2
    assert out.read_bytes() == first and sorted(p.name for p in out.parent.iterdir()) == ["results.md"]
    # printed without --out: the page after its header
    assert markdown.markdown_summary(folders) == first.decode()[first.decode().index("## The answer"):]


def test_each_verdict_line_gives_the_wall_time_of_the_target_that_wrote_it(project, tmp_path):
    import shutil

    from alphastomics.analysis import timing
    from alphastomics.provenance import _cpu_name

    root = tmp_path / "copy"
    shutil.copytree(project, root)
    tissues = root / "results/tissues/verdict.json"
    log = tmp_path / "log"
    log.mkdir()
    (log / "x.snakemake.log").write_text("256 of 256 steps (100%) done\n")
    started = tissues.stat().st_mtime - 10
    timing.record_time(tissues, "make tissues", started, set_up=True, cores=2, log_dir=log, now=started + 3492)
    head = _page(root).split("## The answer")[0]
    line = next(x for x in head.splitlines() if "(make tissues)" in x)
    assert line.endswith(f"`make tissues` took 58 min 12 s (set-up included, 256 Snakemake jobs; 2 cores, "
                         f"{_cpu_name()})")
    assert "(make run): " in head and next(x for x in head.splitlines() if "(make run)" in x).endswith(
        "wall time not recorded")
