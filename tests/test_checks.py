"""The checks before any verdict (alphastomics/analysis/checks.py): the learning gate against random placement and the
best peer, hand-computed; a data set that fails it gets no decision word anywhere (verdict.json, the page,
report --markdown); the warnings for too few seeds and an early best validation loss."""

from __future__ import annotations

import json
import math
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from report_helpers import build_report
from scipy import stats as st

from alphastomics.analysis import checks, markdown, tables
from alphastomics.analysis import verdict as V
from alphastomics.analysis.runs import load_run
from alphastomics.evaluation.metrics import UndeclaredMetricError

PRIMARY = ("knn_preservation", "distance_spearman", "procrustes_rmsd_scaled")
RANDOM = {"knn_preservation": 0.1, "distance_spearman": 0.0, "procrustes_rmsd_scaled": 50.0}
FAMILY = V.Family(contrasts=(("gated_headwise", "linear"),), primary_metrics=PRIMARY)


def _run(root: Path, dataset: str, variant: str, seed: int, values: dict[str, float], *,
         summary: dict | None = None, log: list[dict] | None = None) -> Path:
    run = root / dataset / variant / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    row = {"section": "s0", "n_cells": 50, **values}
    (run / "eval" / "metrics.json").write_text(json.dumps(
        {"overall": values, "random_reference": RANDOM, "per_section": [row]}))
    if summary is not None or log is not None:
        (run / "train").mkdir()
        if summary is not None:
            (run / "train" / "train_summary.json").write_text(json.dumps(summary))
        if log is not None:
            (run / "train" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in log) + "\n")
    return run


def _values(knn: float, spearman: float, rmsd: float) -> dict[str, float]:
    return {"knn_preservation": knn, "distance_spearman": spearman, "procrustes_rmsd_scaled": rmsd}


# Seed values: "at random" is a tissue whose variants sit at the random level; "learned" one whose linear
# variant clears the gate on distance Spearman only (its kNN preservation and scaled RMSD have a mean skill
# above the margin but an interval whose worse end is below it).
AT_RANDOM = {
    "linear": [_values(0.10, 0.01, 50.5), _values(0.11, -0.01, 49.5), _values(0.10, 0.02, 50.0)],
    "gated_headwise": [_values(0.11, 0.00, 50.2), _values(0.10, 0.03, 49.9), _values(0.12, 0.01, 49.0)],
    "peer_knn": [_values(0.105, 0.04, 49.0)],
}
LEARNED = {
    "linear": [_values(0.20, 0.50, 45.0), _values(0.22, 0.55, 48.0), _values(0.24, 0.60, 47.0)],
    "gated_headwise": [_values(0.11, 0.01, 50.0), _values(0.10, 0.02, 50.0), _values(0.10, 0.00, 50.0)],
    "peer_knn": [_values(0.30, 0.80, 20.0)],
}


def _build(root: Path, tissues: dict[str, dict[str, list[dict[str, float]]]]) -> dict:
    runs = [_run(root, ds, v, seed, vals) for ds, methods in tissues.items() for v, seeds in methods.items()
            for seed, vals in enumerate(seeds)]
    verdict = V.build([load_run(r) for r in runs], FAMILY)
    V.write(verdict, root / "verdict.json")
    return verdict


def _dataset(verdict: dict, name: str) -> dict:
    return next(d for d in verdict["datasets"] if d["dataset"] == name)


def test_skill_is_the_way_from_random_to_perfect():
    assert checks.skill("knn_preservation", 0.55, 0.1) == pytest.approx(0.45 / 0.9)  # perfect 1
    assert checks.skill("procrustes_rmsd_scaled", 20.0, 50.0) == pytest.approx(0.6)  # perfect 0
    assert checks.skill("distance_spearman", -0.1, 0.0) == pytest.approx(-0.1)  # worse than random
    assert math.isnan(checks.skill("morans_i_mean_pred", 1.0, 0.5))  # a description, no side better: no skill
    with pytest.raises(UndeclaredMetricError, match="'mystery' has no declared direction"):
        checks.skill("mystery", 1.0, 0.5)  # never guessed
    assert math.isnan(checks.skill("knn_preservation", 0.5, 1.0))  # random already perfect


def test_gate_hand_computed(tmp_path):
    gate = _dataset(_build(tmp_path, {"learned": LEARNED}), "learned")["learning_gate"]
    assert gate["outcome"] == "learned"
    by = {e["metric"]: e for e in gate["metrics"]}
    knn = next(r for r in by["knn_preservation"]["variants"] if r["variant"] == "linear")
    # mean 0.22, sd 0.02, 3 seeds: worse end 0.22 - t(0.975, 2) 0.02 / sqrt 3; skill = (x - 0.1) / 0.9
    low = 0.22 - st.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert knn["ci_low"] == pytest.approx(low)
    assert knn["skill"] == pytest.approx(0.12 / 0.9) and knn["skill"] > checks.MIN_SKILL
    assert knn["skill_worse_end"] == pytest.approx((low - 0.1) / 0.9)
    assert knn["skill_worse_end"] < checks.MIN_SKILL
    assert knn["vs_random"] == "at"  # the mean clears the margin, the interval does not
    assert by["knn_preservation"]["outcome"] == "not learned"
    spearman = {r["variant"]: r for r in by["distance_spearman"]["variants"]}
    assert spearman["linear"]["vs_random"] == "above" and spearman["gated_headwise"]["vs_random"] == "at"
    assert by["distance_spearman"]["outcome"] == "learned"
    # lower is better: the worse end is the interval's upper end
    rmsd = next(r for r in by["procrustes_rmsd_scaled"]["variants"] if r["variant"] == "linear")
    high = 140 / 3 + st.t.ppf(0.975, 2) * np.std([45, 48, 47], ddof=1) / math.sqrt(3)
    assert rmsd["skill_worse_end"] == pytest.approx((50 - high) / 50) and rmsd["vs_random"] == "at"
    # the best peer: its one value, better than every variant's whole interval
    assert by["distance_spearman"]["best_peer"] == {"peer": "knn", "value": 0.8, "skill": pytest.approx(0.8)}
    assert spearman["linear"]["vs_best_peer"] == "worse"
    assert by["distance_spearman"]["peers_above"] == ["knn"]
    assert gate["message"] == (
        "the models learned this tissue: better than random placement by at least 10% of the way to a "
        "perfect score (worse end of the 95 % interval over seeds) on distance_spearman (linear)"
    )


def test_a_tissue_at_the_random_level_is_not_interpreted_anywhere(tmp_path):
    verdict = _build(tmp_path, {"at_random": AT_RANDOM, "learned": LEARNED})
    ds = _dataset(verdict, "at_random")
    assert ds["learning_gate"]["outcome"] == "not learned"
    assert ds["learning_gate"]["message"] == checks.NOT_LEARNED
    assert {r["decision"] for r in ds["records"] + ds["secondary"]} == {checks.NOT_INTERPRETED}
    assert {r["decision"] for r in ds["peers"]} == {checks.NOT_INTERPRETED}
    assert verdict["learning_gate"]["min_skill"] == checks.MIN_SKILL  # the rule is written with the verdict
    # the learned tissue keeps its decisions
    assert all(r["decision"] != checks.NOT_INTERPRETED for r in _dataset(verdict, "learned")["records"])

    md = markdown.markdown_summary(tmp_path / "verdict.json")
    part = md[md.index("**at_random**"):]
    part = part[: part.index("\n**learned**")] if "\n**learned**" in part else part
    msg = checks.NOT_LEARNED.removeprefix("the models did not learn this tissue: ")
    assert part.startswith(f"**at_random**: 3 seeds; **the models did not learn it** ({msg}): every contrast is not "
                           "interpreted")
    row = next(line for line in part.splitlines() if line.startswith("| gated_headwise vs linear"))
    assert row.rstrip(" |").endswith(checks.NOT_INTERPRETED) and "difference [95 % interval]" in part
    for word in ("smallest detectable", "no difference detected", "better", "worse", " %"):
        assert word not in part.split("\n", 2)[2].replace("difference [95 % interval]", ""), word
    # the answer counts no test of a tissue the models did not learn
    assert "not learned, so not interpreted: at_random" in md[:md.index("## Each data set")]


def test_a_peer_that_beats_random_keeps_its_word_and_changes_the_message(tmp_path):
    tissue = dict(AT_RANDOM, peer_knn=[_values(0.5, 0.7, 30.0)])
    ds = _dataset(_build(tmp_path, {"t": tissue}), "t")
    assert ds["learning_gate"]["outcome"] == "not learned"
    assert "every variant is at the random level, but peer knn is not" in ds["learning_gate"]["message"]
    assert all(r["decision"] != checks.NOT_INTERPRETED for r in ds["peers"])  # too few sections to test
    assert all(r["decision"] == checks.NOT_INTERPRETED for r in ds["records"])


def test_one_seed_decides_only_when_it_falls_short(tmp_path):
    short = {"linear": AT_RANDOM["linear"][:1], "gated_headwise": AT_RANDOM["gated_headwise"][:1]}
    beyond = {"linear": LEARNED["linear"][:1], "gated_headwise": LEARNED["gated_headwise"][:1]}
    verdict = _build(tmp_path, {"short": short, "beyond": beyond})
    assert _dataset(verdict, "short")["learning_gate"]["outcome"] == "not learned"
    gate = _dataset(verdict, "beyond")["learning_gate"]
    assert gate["outcome"] == "not assessed" and "one seed" in gate["message"]
    assert _dataset(verdict, "beyond")["records"][0]["decision"].startswith("no test")


def test_no_random_reference_leaves_the_gate_unassessed(tmp_path):
    run = _run(tmp_path, "t", "linear", 0, _values(0.1, 0.0, 50.0))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    del metrics["random_reference"]
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    gate = V.build([load_run(run)], FAMILY)["datasets"][0]["learning_gate"]
    assert gate["outcome"] == "not assessed"
    assert {e["outcome"] for e in gate["metrics"]} == {"no random reference"}


def test_warnings_few_seeds_and_early_best_validation(tmp_path):
    vals = _values(0.5, 0.5, 20.0)
    runs = [
        # best at step 100 of 400 (train_summary.json): flagged; at 200 of 400: not
        _run(tmp_path, "t", "linear", 0, vals,
             summary={"best_val_step": 100, "best_val_loss": 0.5, "steps": 400}),
        _run(tmp_path, "t", "linear", 1, vals,
             summary={"best_val_step": 200, "best_val_loss": 0.5, "steps": 400}),
        # no summary: from metrics.jsonl, best val_loss at step 10 of 50
        _run(tmp_path, "t", "softmax", 0, vals,
             log=[{"step": 10, "val_loss": 0.4}, {"step": 50, "val_loss": 0.6}, {"step": 50, "loss": 0.3}]),
    ]
    warnings = {w["kind"]: w for w in V.build([load_run(r) for r in runs], FAMILY)["datasets"][0]["warnings"]}
    assert warnings["few seeds"]["variants"] == ["linear", "softmax"]
    assert warnings["few seeds"]["message"].startswith("1 or 2 seed(s) for linear, softmax, fewer than the 5")
    early = warnings["early best validation"]
    assert early["runs"] == [{"variant": "linear", "seed": 0, "best_val_step": 100, "last_step": 400},
                             {"variant": "softmax", "seed": 0, "best_val_step": 10, "last_step": 50}]
    assert early["message"].startswith(
        "2 of 3 runs had their best validation loss in the first 50% of training (step 10 of 50, 100 of 400)"
    )


def test_page_says_it_first_and_shows_no_forest_plot(tmp_path):
    runs = [_run(tmp_path, "t", v, seed, vals)
            for v, seeds in AT_RANDOM.items() for seed, vals in enumerate(seeds)]
    out = build_report(runs, tmp_path / "report.html", family=FAMILY)
    html = out.read_text()
    section = html[html.index('id="verdict-t"'):html.index('id="expectations"')]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", section))
    first = text.split(" t ", 1)[1].strip()
    assert first.startswith("The models did not learn this tissue: every method is at the random level")
    assert "forest plot" not in section and "smallest detectable" not in section
    assert "no difference detected" not in section and "Holm p" not in section
    assert text.count("not interpreted") >= 3  # one cell per primary metric of the one contrast
    assert "Warning: 3 seed(s) for gated_headwise, linear" in text


def test_page_shows_the_notes_of_the_data_sets_manifest(tmp_path):
    runs = [_run(tmp_path, "t", v, seed, vals)
            for v, seeds in LEARNED.items() for seed, vals in enumerate(seeds)]
    data = tmp_path / "data" / "t" / "processed"
    data.mkdir(parents=True)
    note = "no cell-type column 'cell_type' (dataset.cell_type_key): cell-type metrics not measured"
    (data / "manifest.json").write_text(json.dumps({"dataset": "t", "notes": [note]}))
    html = build_report(runs, tmp_path / "report.html", family=FAMILY).read_text()  # found beside the runs
    section = html[html.index('id="verdict-t"'):html.index('id="expectations"')]
    assert f"Data note (preprocess, manifest.json): {note}." in unescape(re.sub(r"\s+", " ", section))


def test_with_an_expression_ceiling_the_margin_is_a_share_of_the_way_to_it(tmp_path):
    # kNN preservation: random 0.1, ceiling 0.19 (skill 0.1): the margin is 10 % of that, skill 0.01.
    # linear's worse end (0.2 - t 0.01/sqrt 3 ~ 0.175, skill ~0.083) misses 10 % of the way to perfect but
    # clears 10 % of the way to the ceiling; the ceiling is no best peer and no peer above random.
    tissue = {
        "linear": [_values(0.19, 0.0, 50.0), _values(0.20, 0.01, 50.0), _values(0.21, -0.01, 50.0)],
        "peer_knn": [_values(0.15, 0.0, 50.0)],
        "peer_ceiling": [_values(0.19, 0.3, 40.0)],
    }
    gate = _dataset(_build(tmp_path, {"cortex": tissue}), "cortex")["learning_gate"]
    knn = next(e for e in gate["metrics"] if e["metric"] == "knn_preservation")
    assert knn["ceiling"] == {"peer": "ceiling", "value": 0.19, "skill": pytest.approx(0.1)}
    assert knn["margin"] == pytest.approx(0.01) and knn["best_peer"]["peer"] == "knn"
    row = knn["variants"][0]
    assert row["skill_worse_end"] < checks.MIN_SKILL and row["vs_random"] == "above"
    assert row["of_ceiling"] == pytest.approx((0.1 / 0.9) / 0.1)  # the mean passes the ceiling: 111 %
    assert gate["outcome"] == "learned"
    assert "of the way to the attainable score" in gate["message"]
    assert "knn_preservation 0.19 (random 0.1), the best variant at 111% of its way from random" in gate["message"]
    cols, rows = tables.gate_table({"learning_gate": gate})
    assert [r["name"] for r in rows][-2:] == ["expression ceiling", "random placement"]


# --------------------------------------------------------------------------------------------------------
# Which code the runs come from


def _with_code(run: Path, train: dict | None, sample: dict | None, evaluate: dict | None) -> Path:
    m = json.loads((run / "eval" / "metrics.json").read_text())
    m["code"] = {"sample": sample, "evaluate": evaluate}
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    if train is not None:
        (run / "train").mkdir(exist_ok=True)
        (run / "train" / "train_summary.json").write_text(json.dumps({"code": train}))
    return run


A, B = {"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": False}


def test_one_clean_commit_gives_no_code_warning(tmp_path):
    runs = [_with_code(_run(tmp_path, "d", v, s, _values(0.2, 0.5, 40.0)), A, A, A)
            for v in ("linear", "gated_headwise") for s in range(2)]
    c = checks.code_versions([load_run(r) for r in runs])
    assert c == {"commits": [{"commit": "a" * 40, "dirty": False, "outputs": 12}], "unrecorded": 0,
                 "mixed": False, "message": None}


def test_a_verdict_over_runs_of_two_commits_warns_on_the_first_screen(tmp_path):
    runs = [_with_code(_run(tmp_path, "d", "linear", s, _values(0.2, 0.5, 40.0)), A, A, A) for s in range(3)]
    runs += [_with_code(_run(tmp_path, "d", "gated_headwise", s, _values(0.2, 0.5, 40.0)), B, B, A)
             for s in range(3)]
    runs.append(_with_code(_run(tmp_path, "d", "peer_knn", 0, _values(0.3, 0.8, 20.0)), None, A, A))
    out = build_report(runs, tmp_path / "report.html", family=FAMILY)
    v = json.loads((tmp_path / "verdict.json").read_text())
    assert v["code"]["mixed"] is True
    assert {c["commit"]: c["outputs"] for c in v["code"]["commits"]} == {"a" * 40: 14, "b" * 40: 6}
    assert "different code" in v["code"]["message"] and "aaaaaaaaaa (14 outputs)" in v["code"]["message"]
    html = out.read_text()
    warning = html.index('id="code-warning"')
    assert warning < html.index('id="across"') and "different code" in unescape(html[warning:warning + 400])
    provenance = unescape(html[html.index('id="provenance"'):])
    runs_row = provenance[provenance.index("code of the runs"):provenance.index("report rendered by")]
    assert "aaaaaaaaaa</code> (14 outputs)" in runs_row and "bbbbbbbbbb</code> (6 outputs)" in runs_row


def test_the_provenance_block_says_when_the_runs_record_no_commit(tmp_path):
    runs = [_run(tmp_path, "d", v, 0, _values(0.2, 0.5, 40.0)) for v in ("linear", "gated_headwise")]
    html = unescape(build_report(runs, tmp_path / "report.html", family=FAMILY).read_text())
    provenance = html[html.index('id="provenance"'):]
    assert "not recorded" in provenance[provenance.index("code of the runs"):provenance.index("report rendered by")]


def test_uncommitted_changes_and_unrecorded_outputs_are_said(tmp_path):
    dirty = {"commit": "a" * 40, "dirty": True}
    runs = [_with_code(_run(tmp_path, "d", "linear", 0, _values(0.2, 0.5, 40.0)), dirty, A, A),
            _run(tmp_path, "d", "gated_headwise", 0, _values(0.2, 0.5, 40.0))]  # records no code at all
    c = checks.code_versions([load_run(r) for r in runs])
    assert c["mixed"] and "with uncommitted changes (1 outputs)" in c["message"]
    assert c["unrecorded"] == 3 and "3 train/sample/evaluate outputs record no commit" in c["message"]
