"""The learning-curve study: budget choice by hand, the workflow's override order, the tables collected from
scored runs (runs that stop early or were cut record where), and the Snakemake target that runs its jobs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alphastomics import plan as plan_module
from alphastomics.__main__ import main as cli
from alphastomics.analysis import study as STUDY
from alphastomics.analysis.study import choose_budget
from alphastomics.config import load_config
from alphastomics.variants import VARIANTS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_chosen_budget_is_the_smallest_within_two_percent_of_the_top():
    knn = {("a", 100): [0.30, 0.32], ("a", 300): [0.395, 0.397], ("a", 1000): [0.40, 0.40],
           ("b", 100): [0.20, 0.20], ("b", 300): [0.20, 0.20], ("b", 1000): [0.204, 0.204]}
    rows = [{"dataset": ds, "variant": "v", "budget": b, "knn_preservation": v}
            for (ds, b), vals in knn.items() for v in vals]
    # a: 0.396 >= 0.98 * 0.40 = 0.392 at 300, not 0.31 at 100; b: 0.20 >= 0.98 * 0.204 = 0.19992 at 100.
    assert choose_budget(rows, (100, 300, 1000)) == {"a": 300, "b": 100, "all": 300}
    # A variant that reached a longer budget alone does not move the top: 3000 is not common to both.
    rows2 = [{"dataset": "c", "variant": v, "budget": b, "knn_preservation": k}
             for v, b, k in [("x", 100, 0.30), ("y", 100, 0.30), ("x", 300, 0.40), ("y", 300, 0.40),
                             ("x", 3000, 0.90)]]
    assert choose_budget(rows2, (100, 300, 3000)) == {"c": 300, "all": 300}


def run_overrides(plan, dataset, variant, seed=None):
    """The --set items of one run as the workflow gives them (common.smk stage_args -> alphastomics.plan)."""
    return plan_module.set_items(*plan_module.run_blocks(plan, dataset, variant, seed))


def test_run_overrides_follow_the_workflow_order():
    plan = {
        "overrides": {"training": {"batch_size": 8, "learning_rate": 1e-3}},
        "datasets": {"d": {"dataset": {"source": "synthetic"}, "overrides": {"training": {"batch_size": 1}}}},
        "variants": {"v": {"overrides": {"TransformerLayer_setting": {"use_gated_attention": False}}}},
    }
    assert run_overrides(plan, "d", "v", 3) == [
        "TransformerLayer_setting.use_gated_attention=false", "dataset.name=d", "dataset.source=synthetic",
        "training.batch_size=1", "training.learning_rate=0.001", "training.seed=3"]
    assert "TransformerLayer_setting.use_gated_attention=false" not in run_overrides(plan, "d", None)


def test_study_runs_of_the_shipped_config_train_the_variants_they_are_named_after():
    """config/config.yaml lists variants as `linear: {}`: their attention settings come from the variant
    table, and a study run must get them as the workflow's run of that name does."""
    plan = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = {}
    for variant in plan["variants"]:
        cfg = load_config([REPO / plan["model_config"]], run_overrides(plan, "bdtnp", variant, 0))
        settings[variant] = (cfg.model.attention, cfg.model.gate, cfg.model.qk_norm)
        assert settings[variant] == tuple(VARIANTS[variant].settings().values()), variant
    assert len(set(settings.values())) == len(settings)  # five variants, five different models


def _scored(run: Path, budget: int, knn: float) -> None:
    ev = run / f"step{budget}" / "eval"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps({"overall": {m: 0.5 for m in STUDY.METRICS} | {"knn_preservation": knn}}))


def test_tables_from_the_scored_runs_record_where_runs_stopped_or_were_cut(tmp_path, capsys):
    out = tmp_path / "study"
    stopped = out / "runs/tiny/linear/seed0"  # stopped early at step 2: budget 4 scored from its final weights
    (stopped / "train").mkdir(parents=True)
    (stopped / "train/train_summary.json").write_text(json.dumps({"steps": 2, "stopped_early": True,
                                                                   "best_val_step": 1}))
    log = [{"step": 1, "val_loss": 0.9, "elapsed_s": 1.0}, {"step": 2, "val_loss": 1.1, "elapsed_s": 2.0}]
    (stopped / "train/metrics.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    cut = out / "runs/tiny/linear/seed1"  # cut (no summary): where it stopped and its best step from the log
    (cut / "train/checkpoints").mkdir(parents=True)
    (cut / "train/checkpoints/latest.pt").write_bytes(b"")
    (cut / "train/metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "val_loss": 0.8, "elapsed_s": 1.0}, {"step": 3, "val_loss": 0.7, "elapsed_s": 3.0},
        {"step": 4, "loss": 0.5, "elapsed_s": 4.0}]) + "\n")
    for run, knn in ((stopped, 0.40), (cut, 0.44)):
        _scored(run, 1, knn - 0.1)
        _scored(run, 4, knn)
    peer = out / "runs/tiny/peer_knn/seed0/eval"
    peer.mkdir(parents=True)
    (peer / "metrics.json").write_text(json.dumps({"overall": {m: 0.6 for m in STUDY.METRICS}}))
    assert cli(["learning-curve", "--out", str(out), "--variants", "linear", "--seeds", "0", "1",
                "--budgets", "1", "4"]) == 0
    rows = list(csv.DictReader((out / "learning_curve.tsv").open(), delimiter="\t"))
    got = {(r["seed"], r["budget"]): (r["stopped_at"], r["best_val_step"], r["val_loss"]) for r in rows}
    assert got == {("0", "1"): ("2", "1", "0.9"), ("0", "4"): ("2", "1", "1.1"),
                   ("1", "1"): ("cut 4", "3", "0.8"), ("1", "4"): ("cut 4", "3", "0.7")}
    summary = (out / "learning_curve_summary.md").read_text()
    assert "kNN-regression peer" in summary and "chosen budget (tiny)" in summary
    assert "| tiny | linear | 4 | 2 | 0.900 | 0.420 |" in summary  # (1.1 + 0.7) / 2, (0.40 + 0.44) / 2
    assert (out / "learning_curve.png").stat().st_size > 0


def test_no_scored_runs_is_a_one_line_error(tmp_path, capsys):
    assert cli(["learning-curve", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no study runs; run make learning-curve" in err and "\n" not in err


@pytest.mark.workflow
def test_snakemake_learning_curve_target_runs_every_job(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("workflow", "config"):
        shutil.copytree(REPO / name, repo / name, symlinks=True)
    shutil.copy(REPO / "environment.yml", repo)
    if (REPO.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--cores", "2", "learning_curve"], cwd=repo,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # the workflow runs the jobs: per (data set, variant, seed) one training run, per kept checkpoint one
    # sample and one evaluate, the peer per data set, then the tables from what they scored
    counts = dict(re.findall(r"^(study_\w+|learning_curve)\s+(\d+)$", out, re.M))
    runs, budgets = 2 * 3 * 2, len(STUDY.DEFAULT_BUDGETS)
    assert counts == {"study_train": str(runs), "study_sample": str(runs * budgets),
                      "study_evaluate": str(runs * budgets), "study_peer": "2", "learning_curve": "1"}
    top = max(STUDY.DEFAULT_BUDGETS)
    kept = ",".join(map(str, sorted(STUDY.DEFAULT_BUDGETS)))
    assert f"--set training.max_steps={top}" in out and f"'training.keep_checkpoints=[{kept}]'" in out
    assert "--set TransformerLayer_setting.attention=linear" in out  # the workflow's own run overrides
    # a budget a run stopped before: sampled from the run's final weights
    assert "results/study/runs/bdtnp/softmax/seed1/train/checkpoints/step000250.pt" in out
    assert '[ -f "$ckpt" ] || ckpt=results/study/runs/bdtnp/softmax/seed1/train/final.pt' in out
    assert "--variants linear softmax gated_headwise --seeds 0 1" in out


def test_summary_rows_of_all_variants_are_the_means_the_budget_is_chosen_from(tmp_path):
    """The summary's "all variants" row of a budget is the mean over every run of it (values by hand)."""
    def row(variant, seed, budget, knn):
        return {"dataset": "d", "variant": variant, "seed": seed, "budget": budget, "val_loss": 1.0,
                **{m: 0.5 for m in STUDY.METRICS}, "knn_preservation": knn, "train_s": 10.0,
                "stopped_at": None, "best_val_step": budget}

    rows = [row("a", 0, 100, 0.40), row("a", 1, 100, 0.44), row("b", 0, 100, 0.30), row("b", 1, 100, 0.34),
            row("a", 0, 200, 0.50), row("a", 1, 200, 0.50), row("b", 0, 200, 0.36), row("b", 1, 200, 0.38)]
    chosen = STUDY.write_tables(tmp_path, rows, (100, 200), {})
    summary = (tmp_path / "learning_curve_summary.md").read_text()
    assert "| d | all variants | 100 | 4 | 1.000 | 0.370 |" in summary  # (0.40 + 0.44 + 0.30 + 0.34) / 4
    assert "| d | all variants | 200 | 4 | 1.000 | 0.435 |" in summary  # (0.50 + 0.50 + 0.36 + 0.38) / 4
    assert chosen == {"d": 200, "all": 200}  # 0.370 < 0.98 x 0.435
