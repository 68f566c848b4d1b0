"""The learning-rate sweep (alphastomics.analysis.stability, config/stability.yaml): the divergence and spike rules and
steps to a plateau on hand-made series, the per-variant and paired summaries on hand-made runs, that the
sweep's logging changes no weight, and a sweep of two learning rates through the workflow to its table."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from workflow_helpers import REPO, make_copy, same_weights, snakemake, write_config

from alphastomics.__main__ import main as cli
from alphastomics.analysis import stability as S
from alphastomics.config import load_config
from alphastomics.training.train import train
from alphastomics.variants import VARIANTS

NAN = math.nan


# --------------------------------------------------------------------------------------------------------
# Spikes: loss > 2 x the median of the previous 20 steps, once 5 of them are finite


def test_two_spikes_of_known_size_are_found_and_a_doubling_exactly_is_not():
    losses = [1.0] * 30
    losses[10], losses[20], losses[25] = 3.0, 2.5, 2.0  # 3x and 2.5x the median 1; 2.0 is not > 2 x 1
    assert S.spike_positions(losses) == [10, 20]


def test_spikes_at_the_start_need_five_earlier_losses():
    assert S.spike_positions([1.0, 1.0, 1.0, 1.0, 10.0, 1.0]) == []  # 4 earlier losses: not tested
    assert S.spike_positions([1.0] * 5 + [10.0]) == [5]  # 5 earlier: tested
    # A huge first loss is never tested and does not lift the median of what follows (100, 1, 1, 1, 1: 1).
    assert S.spike_positions([100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.9]) == []
    # A non-finite loss is no spike and no part of a later baseline.
    assert S.spike_positions([1.0, 1.0, 1.0, 1.0, NAN, 3.0]) == []
    assert S.spike_positions([1.0] * 5 + [NAN, 3.0]) == [6]


def test_a_level_shift_counts_until_it_fills_half_the_window():
    # 25 steps at 1, then 3: the median of the previous 20 stays 1 while fewer than 10 of them are 3, and is
    # (1 + 3) / 2 = 2 at 10 (3 > 4 is false): steps 25-34 are spikes.
    assert S.spike_positions([1.0] * 25 + [3.0] * 30) == list(range(25, 35))


# --------------------------------------------------------------------------------------------------------
# Divergence: non-finite, or never below the end-of-warm-up value (medians of 20 steps)


def test_a_nan_series_diverges():
    diverged, why = S.divergence([NAN] * 50, warmup_end=9)
    assert diverged is True and "non-finite" in why
    # one skipped step (train logs it as non-finite) is enough, whatever the losses
    assert S.divergence([2.0] * 10 + [1.0] * 40, 9, nonfinite=1)[0] is True


def test_a_flat_series_never_falls_below_its_warm_up_value():
    diverged, why = S.divergence([1.5] * 100, warmup_end=29)
    assert diverged is True and "never fell below" in why and "1.5" in why


def test_falling_below_is_judged_on_medians_not_on_one_lucky_step():
    warm = [2.0] * 10  # warm-up ends at position 9: the reference is the median 2.0
    assert S.divergence(warm + [2.0] * 19 + [1.0], 9)[0] is True  # one step below: the median is still 2.0
    # 11 of 20 steps at 1.9: the window's median (10th and 11th of the sorted 20) is 1.9 < 2.0
    assert S.divergence(warm + [1.9] * 11 + [2.0] * 9, 9) == (False, None)
    # falls during warm-up, then climbs back above its end-of-warm-up value and stays
    assert S.divergence([3.0, 2.5, 2.0, 2.0] + [2.4] * 40, 3)[0] is True


def test_a_run_that_ends_with_its_warm_up_cannot_be_judged():
    assert S.divergence([3.0, 2.0, 1.0], warmup_end=2) == (None, "no step after warm-up")


# --------------------------------------------------------------------------------------------------------
# Convergence: steps to 95 % of the fall from the first validation to a level


STEPS = list(range(20, 201, 20))
CURVE = [2.0, 1.5, 1.2, 1.1, 1.04, 1.01, 1.0, 1.0, 1.0, 1.0]


def test_steps_to_ninety_five_percent_of_the_plateau():
    assert S.plateau(CURVE) == 1.0  # the mean of the last 3 validations
    # fall 2.0 - 1.0 = 1.0; 95 % of it needs a value <= 1.05: 1.1 (step 80) is short, 1.04 (step 100) is there
    assert S.steps_to_level(STEPS, CURVE, 1.0) == 100
    # a common target above the plateau: 95 % of 2.0 - 1.2 = 0.76 needs <= 1.24: step 60 (1.2)
    assert S.steps_to_level(STEPS, CURVE, 1.2) == 60
    assert S.steps_to_level(STEPS, CURVE, 2.5) is None  # a level above the first value: no fall to make
    assert S.steps_to_level(STEPS, CURVE, 0.5) is None  # never gets there


# --------------------------------------------------------------------------------------------------------
# Per variant and paired over seeds, on hand-made runs


def curves(variant: str, lr: float, seed: int, losses: list[float], val: list[float],
           knn: float) -> S.RunCurves:
    return S.RunCurves("d", variant, f"{variant}_lr{lr}", lr, seed, steps=list(range(1, len(losses) + 1)),
                       losses=losses, grad_norms=[0.5] * len(losses), warmup_end=4,
                       val_steps=[20, 40, 60, 80, 100, 120], val_losses=val,
                       placement={"knn_preservation": knn, "distance_spearman": 0.9,
                                  "procrustes_rmsd_scaled": 1.0})


def test_largest_stable_rate_paired_placement_and_convergence():
    falling = [2.0] * 5 + [1.0] * 35
    fast, slow = [2.0] + [1.0] * 5, [2.0, 1.5, 1.02, 1.0, 1.0, 1.0]  # plateau 1.0: 95 % at steps 40 and 60
    runs = [curves("gated_headwise", 1e-3, 0, falling, fast, 0.5),
            curves("gated_headwise", 1e-3, 1, falling, fast, 0.6),
            curves("linear", 1e-3, 0, falling, slow, 0.4),
            curves("linear", 1e-3, 1, falling, slow, 0.4),
            curves("gated_headwise", 1e-2, 0, falling, fast, 0.5),
            curves("gated_headwise", 1e-2, 1, falling, fast, 0.5),
            curves("linear", 1e-2, 0, falling, slow, 0.3),
            curves("linear", 1e-2, 1, [2.0] * 40, slow, 0.1)]  # seed 1 never falls: diverged
    doc = S.analyse(runs, {"d": 2})
    assert doc["max_stable_lr"]["d"] == {
        "gated_headwise": {"learning_rate": 1e-2, "beyond_sweep": True},
        "linear": {"learning_rate": 1e-3, "beyond_sweep": False}}
    row = {(s["variant"], s["learning_rate"]): s for s in doc["summary"]}
    assert row[("linear", 1e-2)]["diverged"] == 1 and row[("linear", 1e-3)]["diverged"] == 0
    knn = [r for r in doc["placement"] if r["learning_rate"] == 1e-3 and r["metric"] == "knn_preservation"]
    assert len(knn) == 1 and knn[0]["reference"] == "linear" and knn[0]["n"] == 2
    # differences 0.1 and 0.2: mean 0.15, sd 0.0707, t(0.975, 1) = 12.706: 0.15 -+ 0.635
    assert knn[0]["mean_difference"] == pytest.approx(0.15)
    assert knn[0]["ci_low"] == pytest.approx(0.15 - 12.706 * 0.1 / 2, abs=1e-3)
    steps = {(r["variant"], r["learning_rate"], r["seed"]): r["steps_to_plateau"] for r in doc["runs"]}
    assert steps[("gated_headwise", 1e-3, 0)] == 40 and steps[("linear", 1e-3, 0)] == 60
    assert steps[("linear", 1e-2, 1)] is None  # diverged: no plateau to reach
    claim = [c for c in doc["claims"] if c["claim"] == "faster convergence"]
    assert claim[0]["learning_rate"] == 1e-3 and claim[0]["mean_difference"] == -20  # 40 - 60 steps
    larger = [c for c in doc["claims"] if c["claim"] == "supports larger learning rates"]
    assert larger[0]["ratio"] == pytest.approx(10.0) and larger[0]["variant_beyond_sweep"] is True
    # the JSON is plain JSON (no NaN) and its tables render
    json.loads(json.dumps(doc), parse_constant=lambda c: pytest.fail(f"{c} in stability.json"))
    assert "| d | linear | 1e-2 | 1 / 2 |" in S.markdown(doc)


def test_the_analysis_imports_no_torch():
    code = "import sys, alphastomics.analysis.stability; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# --------------------------------------------------------------------------------------------------------
# The sweep's logging (every step, validation every 20) changes no weight


TINY = {
    "TransformerLayer_setting": {"d_model": 16, "num_layers": 1, "num_heads": 2, "time_embed_dim": 16,
                                 "num_position_frequencies": 2},
    "data": {"max_cells": 32},
    "training": {"batch_size": 1, "max_steps": 6, "warmup_steps": 2, "val_batches": 1, "checkpoint_every": 3},
}


def test_logging_every_step_and_validating_often_change_no_weight(tiny_processed, tmp_path):
    runs = {}
    for name, logging in (("plain", {"log_every": 10, "val_every": 100}),
                          ("sweep", {"log_every": 1, "val_every": 1, "max_nonfinite_steps": 1000000})):
        cfg = {**TINY, "training": {**TINY["training"], **logging}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        train(load_config([tmp_path / f"{name}.yaml"]), tiny_processed, tmp_path / name)
        runs[name] = tmp_path / name
    assert same_weights(runs["plain"] / "final.pt", runs["sweep"] / "final.pt")
    logged = [json.loads(x) for x in (runs["sweep"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "grad_norm" in r] == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------------------------------------
# The workflow: `make stability` plans its grid; two learning rates on a tiny config end in the table


@pytest.mark.workflow
def test_make_stability_plans_variants_x_rates_x_seeds(tmp_path):
    from test_workflow_dry import make_dry_run

    sweep = yaml.safe_load((REPO / "config" / "stability.yaml").read_text())
    runs = len(sweep["variants"]) * len(sweep["learning_rates"]) * len(sweep["seeds"])
    assert runs == 75  # the budget of config/stability.yaml's header
    counts, out = make_dry_run(make_copy(tmp_path), "stability")
    assert counts["train"] == counts["sample"] == counts["evaluate"] == runs
    assert counts["stability"] == 1 and "baseline" not in counts and "report" not in counts
    assert "results/bdtnp/gated_headwise_lr1e-1/seed2/train/final.pt" in out
    assert "results/stability/stability.json" in out


@pytest.mark.workflow
def test_a_sweep_of_two_learning_rates_runs_through_the_workflow_to_its_table(tmp_path):
    repo = make_copy(tmp_path)

    def edit(c):
        c.update(report_dir="results/stability", learning_rates=[1.0e-3, 1.0e-2], seeds=[0, 1], baselines=[])

    config = write_config(repo, "sweep.yaml", edit)
    snakemake(repo, "stability", "--profile", "workflow/profiles/default", "--cores", "2",
              "--configfile", config)
    out = repo / "results" / "stability"
    doc = json.loads((out / "stability.json").read_text())
    assert doc["learning_rates"] == [1e-3, 1e-2] and doc["variants"] == ["linear", "gated_headwise"]
    assert sorted((r["name"], r["seed"]) for r in doc["runs"]) == sorted(
        (f"{v}_lr{lr}", s) for v in ("linear", "gated_headwise") for lr in ("1e-3", "1e-2") for s in (0, 1))
    run = next(r for r in doc["runs"] if r["name"] == "gated_headwise_lr1e-2")
    assert run["steps"] == 4 and run["max_grad_norm"] > 0 and run["knn_preservation"] is not None
    # the rate reached training: the run's log says so at every step after warm-up
    log = repo / "results/synthetic/gated_headwise_lr1e-2/seed0/train/metrics.jsonl"
    assert {json.loads(x).get("lr") for x in log.read_text().splitlines()} >= {0.01}
    placement = [r for r in doc["placement"] if r["metric"] == "knn_preservation"]
    assert {(r["learning_rate"], r["variant"], r["reference"], r["n"]) for r in placement} == {
        (1e-3, "gated_headwise", "linear", 2), (1e-2, "gated_headwise", "linear", 2)}
    table = (out / "stability.md").read_text()
    for v in ("linear", "gated_headwise"):
        for lr in ("1e-3", "1e-2"):
            assert f"| synthetic | {v} | {lr} | " in table
    assert (out / "stability.png").stat().st_size > 0
    # the Markdown of a written JSON is the same table
    assert cli(["stability", "--markdown", str(out), "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text() == table


def test_the_shipped_sweep_trains_each_variant_at_each_rate():
    from alphastomics import plan

    sweep = yaml.safe_load((REPO / "config" / "stability.yaml").read_text())
    seen = {}
    for name, entry in plan.expand_variants(sweep).items():
        sets = plan.set_items(*plan.run_blocks(sweep, "bdtnp", name, 0))
        cfg = load_config([REPO / sweep["model_config"]], sets)
        assert (cfg.model.attention, cfg.model.gate, cfg.model.qk_norm) == tuple(
            VARIANTS[entry["base"]].settings().values()), name
        assert cfg.training.learning_rate == entry["learning_rate"] and cfg.training.log_every == 1
        seen[name] = (cfg.training.warmup_steps, cfg.training.min_lr_ratio, cfg.training.max_steps)
    assert set(seen.values()) == {(30, 1.0, 400)}  # the same warm-up and constant rate at every rate
    rates = sorted({e["learning_rate"] for e in plan.expand_variants(sweep).values()})
    assert rates == [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
