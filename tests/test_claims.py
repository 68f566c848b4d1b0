"""The claims table (alphastomics.analysis.claims) on hand-made runs: the worst head, the gate over diffusion time,
the healthy gate range, the sweep's claims, and the rows a campaign cannot measure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from alphastomics.analysis import claims
from alphastomics.analysis.runs import Run, group_runs


def _run(variant: str, seed: int, diagnostics: dict, mode: str = "expr_to_pos", dataset: str = "d") -> Run:
    return Run(Path(f"/r/{dataset}/{variant}/seed{seed}"), dataset, variant, seed,
               metrics={"mode": mode, "overall": {}, "diagnostics": diagnostics})


def _views(runs: list[Run]) -> dict:
    return {v.name: v for v in group_runs(runs, "linear")}


def test_a_sink_in_one_head_is_found_though_the_mean_over_heads_hides_it() -> None:
    # gated_headwise_no_qknorm: head 3 of layer 1 gives 15 % of its attention to one cell on every seed; the
    # mean over heads (5.25 %) is below the 10 % threshold, the worst head is not
    hidden = {"attention_sink": [{"layer": 0, "share": 0.02, "share_per_head": [0.02] * 4},
                                 {"layer": 1, "share": 0.0525, "share_per_head": [0.02, 0.02, 0.02, 0.15]}]}
    control = {"attention_sink": [{"layer": 0, "share": 0.3, "share_per_head": [0.3, 0.1, 0.5, 0.3]},
                                  {"layer": 1, "share": 0.05, "share_per_head": [0.05] * 4}]}
    runs = [_run("gated_headwise_no_qknorm", s, hidden) for s in (0, 1)] + [_run("softmax", s, control) for s in (0, 1)]
    (row,) = claims.sink_rows(_views(runs))
    assert (row["layer"], row["head"], row["measured"]) == (1, 3, pytest.approx(0.15))
    assert row["mark"] == "not met"
    assert (row["control"], row["control_layer"], row["control_head"]) == (pytest.approx(0.5), 0, 2)
    # below the threshold in every head, and so is the control: says nothing about the gate
    calm = {"attention_sink": [{"layer": 0, "share": 0.03, "share_per_head": [0.03, 0.04]}]}
    runs = [_run("gated_headwise", s, calm) for s in (0, 1)] + [_run("softmax", s, calm) for s in (0, 1)]
    assert claims.sink_rows(_views(runs))[0]["mark"] == "met, but so does the ungated control"


def test_worst_head_is_the_largest_mean_over_seeds_not_the_largest_single_value() -> None:
    runs = [_run("g", 0, {"attention_sink": [{"layer": 0, "share_per_head": [0.30, 0.10]}]}),
            _run("g", 1, {"attention_sink": [{"layer": 0, "share_per_head": [0.00, 0.25]}]})]
    share, layer, head, seeds = claims._worst_head(runs)
    assert (share, layer, head, seeds) == (pytest.approx(0.175), 0, 1, [0.10, 0.25])


def _gates(means_by_t: dict[float, float], layer: int = 0) -> dict:
    return {"gate_over_t": [{"t": t, "step": int(1000 * t), "layer": layer, "mean": m, "std": 0.2,
                             "share_below": 0.1} for t, m in means_by_t.items()]}


def test_gate_over_time_met_when_it_moves_more_than_seeds_differ() -> None:
    times = [0.1, 0.3, 0.5, 0.7, 0.9]
    rng = np.random.default_rng(0)
    moving = [_run("gated_headwise", s, _gates({t: 0.2 + 0.5 * t + 0.01 * rng.normal() for t in times}))
              for s in range(4)]
    flat = [_run("gated_elementwise", s, _gates({t: 0.5 + 0.05 * rng.normal() for t in times}))
            for s in range(4)]
    rows = {r["variant"]: r for r in claims.gate_time_rows(_views(moving + flat))}
    assert rows["gated_headwise"]["mark"] == "met"
    assert rows["gated_headwise"]["measured"] == pytest.approx(0.4, abs=0.05)  # range over t of the mean
    assert rows["gated_headwise"]["times"] == times and rows["gated_headwise"]["n"] == 4
    assert rows["gated_elementwise"]["mark"] == "not detected"
    # Holm over the two tests: the adjusted p is at least the raw one
    assert all(r["holm_p"] >= r["p_value"] for r in rows.values())


def test_gate_range_healthy_or_sparse_as_in_the_paper() -> None:
    runs = [_run("gated_headwise", s, {"gate": [{"layer": 0, "mean": m, "std": 0.2, "share_below": 0.05}]})
            for s, m in enumerate([0.48, 0.52])]
    runs += [_run("gated_elementwise", s, {"gate": [{"layer": 0, "mean": m / 5, "std": 0.05, "share_below": 0.8}]})
             for s, m in enumerate([0.48, 0.52])]
    rows = {r["variant"]: r for r in claims.gate_range_rows(_views(runs))}
    assert rows["gated_headwise"]["mark"] == "met" and rows["gated_headwise"]["measured"] == pytest.approx(0.5)
    assert rows["gated_elementwise"]["mark"] == "not met: sparse, as in the paper"
    assert rows["gated_elementwise"]["share_below"] == pytest.approx(0.8)


def test_the_sweeps_claims_marked() -> None:
    sweep = {
        "claims": [
            {"claim": "supports larger learning rates", "dataset": "bdtnp", "variant": "gated_headwise",
             "reference": "linear", "variant_max_stable_lr": 0.03, "reference_max_stable_lr": 0.01,
             "variant_beyond_sweep": False, "reference_beyond_sweep": False},
            {"claim": "supports larger learning rates", "dataset": "bdtnp", "variant": "gated_headwise",
             "reference": "softmax", "variant_max_stable_lr": 0.1, "reference_max_stable_lr": 0.1,
             "variant_beyond_sweep": True, "reference_beyond_sweep": True},
            {"claim": "faster convergence", "dataset": "bdtnp", "variant": "gated_headwise",
             "reference": "linear", "learning_rate": 0.001, "metric": "steps_to_common", "n": 3,
             "mean_difference": -40.0, "ci_low": -70.0, "ci_high": -10.0},
        ],
        "convergence": [{"dataset": "bdtnp", "variant": "gated_headwise", "reference": "linear",
                         "learning_rate": 0.001, "metric": "steps_to_common", "sd_difference": 12.0}],
    }
    rows = [r for r in claims.stability_rows(sweep) if "spikes" not in r["claim"]]  # spikes: the next test
    assert [r["mark"] for r in rows] == ["met", "inconclusive (both train at every rate of the sweep)", "met"]
    assert rows[2]["mde"] > 0 and math.isfinite(rows[2]["mde"])
    absent = claims.stability_rows(None)
    assert {r["mark"] for r in absent} == {"not measured"} and "make stability" in absent[0]["why"]


def test_effects_come_from_the_data_set_whose_task_measures_them() -> None:
    """joint_consistency_error is expected to go down; a data set without it leaves the row 'not measured'."""
    rec = {"variant": "gated_headwise", "reference": "linear", "metric": "joint_consistency_error", "n": 5,
           "relative_change": -0.2, "relative_ci_low": -0.3, "relative_ci_high": -0.1, "sd_difference": 0.01,
           "reference_mean": 0.1, "mde_relative": 0.05}
    ds = {"dataset": "j", "records": [rec], "secondary": [], "learning_gate": {"outcome": "learned"}}
    family = {"contrasts": [["gated_headwise", "linear"]], "alpha": 0.05, "power": 0.8}
    runs = [_run("gated_headwise", 0, {}, mode="joint", dataset="j")]
    rows = {r["claim"]: r for r in claims.effect_rows([ds], _views(runs), family)}
    joint = rows["joint-mode expression-position consistency"]
    assert (joint["mark"], joint["task"], joint["mde_relative"]) == ("met", "joint", 0.05)
    assert rows["expression MSE"]["mark"] == "not measured" and "make claims" in rows["expression MSE"]["why"]
    # the learning gate says nothing was learned: the row is not read
    ds["learning_gate"] = {"outcome": "not learned"}
    rows = {r["claim"]: r for r in claims.effect_rows([ds], _views(runs), family)}
    assert rows["joint-mode expression-position consistency"]["mark"] == "not interpreted"


def test_loss_spikes_compared_at_the_first_rate_where_the_reference_spikes() -> None:
    runs = [{"dataset": "b", "variant": v, "learning_rate": lr, "seed": s, "spikes": n}
            for v, lr, per_seed in [("linear", 0.01, [0, 0, 0]), ("gated_headwise", 0.01, [0, 0, 0]),
                                    ("linear", 0.03, [10, 12, 11]), ("gated_headwise", 0.03, [1, 2, 3]),
                                    ("linear", 0.1, [30, 30, 30]), ("gated_headwise", 0.1, [40, 40, 40])]
            for s, n in enumerate(per_seed)]
    row = claims.spike_row({"runs": runs}, "b", "gated_headwise", "linear")
    # at 0.03 (linear's first spikes): differences -9, -10, -8, mean -9, t interval -9 -+ 4.303 * 1 / sqrt(3)
    assert row["learning_rate"] == 0.03 and row["measured"] == pytest.approx(-9.0)
    assert row["ci_high"] == pytest.approx(-9 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert row["mark"] == "met" and (row["variant_mean"], row["reference_mean"]) == (2.0, 11.0)
    calm = [r | {"spikes": 0} for r in runs]
    assert claims.spike_row({"runs": calm}, "b", "gated_headwise", "linear")["mark"] == "not measured"
