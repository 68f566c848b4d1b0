"""The learning-curve study: budget choice by hand, the workflow's override order, a tiny study end to end
(runs that stop early record where), and the Snakemake target (dry run)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alphastomics.__main__ import main as cli
from alphastomics.analysis import study as STUDY
from alphastomics.analysis.study import choose_budget, run_overrides
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


TINY_MODEL = {
    "TransformerLayer_setting": {"d_model": 16, "num_layers": 1, "num_heads": 2, "time_embed_dim": 16,
                                 "num_position_frequencies": 2},
    "data": {"max_cells": 32},
    "diffusion": {"sampling_steps": 2},
    # learning rate 0: the validation loss never improves, so with patience 1 every run stops at step 2
    "training": {"batch_size": 1, "warmup_steps": 1, "learning_rate": 0.0, "val_every": 1, "val_batches": 1,
                 "checkpoint_every": 100, "log_every": 1},
    "evaluation": {"num_random_references": 1},
}


def test_tiny_study_scores_every_budget_and_records_where_runs_stopped(tiny_processed, tmp_path, capsys):
    (tmp_path / "data" / "tiny").mkdir(parents=True)
    (tmp_path / "data" / "tiny" / "processed").symlink_to(tiny_processed)
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump(TINY_MODEL))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "model_config": str(model),
        "datasets": {"tiny": {"dataset": {"source": "synthetic"}}},
        "variants": {"linear": {"overrides": {"TransformerLayer_setting": {"use_gated_attention": False}}}},
    }))
    out = tmp_path / "study"
    args = ["learning-curve", "--config", str(model), "--plan", str(plan), "--data-root",
            str(tmp_path / "data"), "--out", str(out), "--variants", "linear", "--seeds", "0",
            "--budgets", "1", "4", "--patience", "1", "--jobs", "1"]
    # As the workflow runs it (workflow/rules/study.smk): the runs, the peer, then the tables alone.
    assert cli(args + ["--only", "runs"]) == 0
    assert (out / "runs/tiny/linear/seed0/step4/eval/metrics.json").exists()
    assert not (out / "runs/tiny/peer_knn").exists() and not (out / "learning_curve.tsv").exists()
    assert cli(args + ["--only", "peers"]) == 0
    assert (out / "runs/tiny/peer_knn/seed0/eval/metrics.json").exists() and not (out / "learning_curve.tsv").exists()
    assert cli(args + ["--no-train"]) == 0
    rows = list(csv.DictReader((out / "learning_curve.tsv").open(), delimiter="\t"))
    assert [(r["dataset"], r["variant"], r["budget"]) for r in rows] == [
        ("tiny", "linear", "1"), ("tiny", "linear", "4")]
    assert all(r["stopped_at"] == "2" and r["best_val_step"] == "1" for r in rows)
    # Budget 4 lies past the stop: it is scored from the stopped run's final weights, budget 1 from step 1's.
    run = out / "runs" / "tiny" / "linear" / "seed0"
    assert (run / "train" / "checkpoints" / "step000001.pt").exists()
    assert not (run / "train" / "checkpoints" / "step000004.pt").exists()
    assert "step000001.pt" in (run / "study.log").read_text()
    summary = (out / "learning_curve_summary.md").read_text()
    assert "kNN-regression peer" in summary and "chosen budget (tiny)" in summary
    assert (out / "learning_curve.png").stat().st_size > 0
    # A second call redoes nothing: every piece is there.
    before = (run / "study.log").read_text()
    assert cli(args) == 0
    assert (run / "study.log").read_text() == before


def test_unknown_variant_is_one_line_error(tmp_path, capsys):
    rc = cli(["learning-curve", "--plan", str(REPO / "config" / "config.yaml"), "--variants", "nope",
              "--out", str(tmp_path / "s")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "variants has no ['nope']" in err and "\n" not in err


@pytest.mark.workflow
def test_snakemake_learning_curve_target_dry_run(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("workflow", "config"):
        shutil.copytree(REPO / name, repo / name, symlinks=True)
    shutil.copy(REPO / "environment.yml", repo)
    if (REPO.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "2", "learning_curve"], cwd=repo,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # one job per (data set, variant, seed) and per data set's peer, then the tables from what they scored
    counts = dict(re.findall(r"^(study_run|study_peer|learning_curve)\s+(\d+)$", out, re.M))
    assert counts == {"study_run": "12", "study_peer": "2", "learning_curve": "1"}  # 2 data sets x 3 x 2 seeds
    assert "--only runs --datasets bdtnp --variants gated_headwise --seeds 1 --jobs 1" in out
    assert "--only peers --datasets synthetic --jobs 1" in out
    assert "--variants linear softmax gated_headwise --seeds 0 1 --no-train" in out


def test_stop_after_ends_a_stage_once_its_checkpoint_exists(tmp_path):
    # --stop-after: the stage is sent SIGTERM once the file appears; train answers by checkpointing and
    # exiting 143, which counts as done. Here a stand-in process writes the file, then waits to be stopped.
    from alphastomics.analysis.study import StudyError, _run

    flag = tmp_path / "step000002.pt"
    body = ("import pathlib, signal, sys, time; "
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
            f"pathlib.Path({str(flag)!r}).write_text('x'); time.sleep(60)")
    _run([sys.executable, "-c", body], tmp_path / "log", stop_when=flag)  # returns, no error
    assert flag.exists()
    # Without the file, a 143 is a failure like any other exit status.
    with pytest.raises(StudyError, match="exited 143"):
        _run([sys.executable, "-c", "import sys; sys.exit(143)"], tmp_path / "log2",
             stop_when=tmp_path / "none")


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
