"""docs/results.md written whole from several targets' verdicts (alphastomics/analysis/markdown.py): the page
opens with the title, the command and the answer, whose numbers are the verdicts'; effect, decision and
smallest detectable effect in columns of their own; the peers of all data sets in one table; what could not be
tested in one sentence per data set; the power plan of the question's contrasts only; a target not run is a
line of the page; the same verdicts give the same bytes, written atomically."""

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
    {"claim": "parameter overhead per attention layer", "expected": "+4%", "dataset": None, "task": None,
     "variant": "gated_headwise", "reference": "linear", "measured": 0.008, "unit": "relative", "mark": "not met"},
    {"claim": "training time", "expected": "the cost (no number in the note)", "dataset": "toy",
     "task": "expr_to_pos", "variant": "gated_headwise", "reference": "linear", "measured": 0.5, "ci_low": 0.45,
     "ci_high": 0.55, "n": 3, "unit": "relative", "mark": "measured"},
]


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
        claims=[CLAIMS[0], CLAIMS[1] | {"dataset": "mop", "measured": 0.05, "ci_low": 0.04, "ci_high": 0.06}],
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


def _answer(page: str) -> str:
    return _section(page, "## The answer").split("\n\n")[1]


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


def test_the_answer_is_the_verdicts_numbers(project):
    answer = _answer(_page(project))
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
    assert "Not run for this page: `make powered`" in answer


def test_effect_decision_and_detectable_are_columns_of_their_own(project):
    page = _page(project)
    toy = json.loads((project / "results/verdict.json").read_text())
    rec = next(r for ds in toy["datasets"] if ds["dataset"] == "toy" for r in ds["records"]
               if (r["variant"], r["reference"], r["metric"]) == ("gated_headwise", "linear", "knn_preservation"))
    section = _section(page, "## Each data set")
    toy_table = _tables(section[section.index("### toy"):])[0]
    assert toy_table[0] == ["contrast", "metric", "effect [95 % interval]", "p_Holm", "decision",
                            "smallest detectable"]
    row = next(r for r in toy_table if r[:2] == ["gated_headwise vs linear", "knn_preservation"])
    assert row[2:] == [fmt_rel_ci(rec), fmt_p(rec["holm_p"]), "better", fmt_mde(rec["mde_relative"])]
    # rows in the declared order: contrasts, then primary metrics
    assert [r[:2] for r in toy_table[1:3]] == [["gated_headwise vs linear", "knn_preservation"],
                                               ["gated_headwise vs linear", "distance_spearman"]]
    across = _section(page, "## Every contrast on every data set")
    for t in _tables(across):
        assert t[0] == ["data set", "kind", "seeds", "metric", "effect [95 % interval]", "decision",
                        "smallest detectable"]
        for r in t[1:]:
            assert "detected" not in r[4] and "%" not in r[5] and r[5] in ("better", "worse", "none detected",
                                                                             checks.NOT_INTERPRETED)
    # the question's contrasts come first, each gated variant against linear
    heads = re.findall(r"^### (.+)$", across, re.M)
    assert heads[:2] == ["gated_headwise vs linear", "gated_elementwise vs linear"]
    first = _tables(across)[0]
    assert [r[0] for r in first[1:]].count("toy") == 2 and "pooled: MOp, STARmap" in [r[0] for r in first]
    assert "not declared by make tissues: MOp, STARmap." in across  # make tissues declares no elementwise


def test_a_tissue_the_models_did_not_learn_shows_differences_without_words(project):
    section = _section(_page(project), "## Each data set")
    flat = section[section.index("### flat"):]
    flat = flat[:flat.index("\n### ")]
    msg = checks.NOT_LEARNED
    assert f"**{msg[:1].upper() + msg[1:]}.**" in flat
    (t,) = _tables(flat)
    assert t[0] == ["contrast", "metric", "difference [95 % interval] (metric's units)", "decision"]
    assert {r[3] for r in t[1:]} == {checks.NOT_INTERPRETED}
    for word in ("smallest detectable", "better", "worse", " %"):
        assert word not in flat.split("\n", 3)[3].replace("difference [95 % interval]", ""), word


def test_peers_of_every_data_set_in_one_table_and_the_untestable_in_one_sentence_each(project):
    page = _page(project)
    peers = _section(page, "## Peers")
    (t,) = _tables(peers)
    assert t[0] == ["data set", "variant", "peer", "metric", "sections", "effect [95 % interval]", "decision",
                    "smallest detectable"]
    verdicts = _verdicts(project)
    tested = [r for v in verdicts for ds in v["datasets"] for r in ds["peers"] if r["p_value"] is not None]
    assert len(t) - 1 == len(tested) and {r[0] for r in t[1:]} == {"MOp", "STARmap"}
    untested = [r for v in verdicts for ds in v["datasets"] for r in ds["peers"] if r["p_value"] is None]
    assert untested and {r["decision"] for r in untested} == {"too few sections to test (2 < 5)"}
    # one sentence for toy (the only data set with untestable peers), not one line per comparison
    assert page.count("too few sections to test") == 1
    line = next(x for x in peers.splitlines() if x.startswith("Not tested"))
    assert f"toy: {len(untested)} comparisons (" in line and line.count(" comparisons (") == 1


def test_the_power_plan_shows_only_each_gated_variant_against_linear(project):
    plan = _section(_page(project), "## Power plan of the question's contrasts")
    (t,) = _tables(plan)
    contrasts = [r[1] for r in t[1:]]
    assert contrasts and all(c.endswith(" vs linear") and c.startswith("gated_") for c in contrasts)
    expected = [r for v in _verdicts(project) for ds in v["datasets"] for r in ds["power_plan"]
                if r["reference"] == "linear" and r["variant"].startswith("gated")]
    assert len(contrasts) == len(expected)
    everything = sum(len(ds["power_plan"]) for v in _verdicts(project) for ds in v["datasets"])
    assert everything > len(expected)  # softmax vs linear and the contrasts against softmax are left out


def test_claims_from_the_claims_verdict_with_measured_rows_of_the_others(project):
    claims = _section(_page(project), "## The design note's claims")
    (t,) = _tables(claims)
    assert t[0][-1] == "from"
    rows = {(r[0], r[1]): r for r in t[1:]}
    assert ("kNN preservation", "toy (expr_to_pos)") in rows and rows[("kNN preservation", "mop (expr_to_pos)")][-1] \
        == "make tissues"
    # a claim measured somewhere loses its "not measured" rows only then: expression MSE is measured nowhere
    assert [r[0] for r in t[1:]].count("expression MSE") == 1


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
