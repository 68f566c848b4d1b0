"""The plan (alphastomics.plan): one owner of a run's overrides for the workflow and the study, and the
cross-validation folds it expands a data set into."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alphastomics import plan
from alphastomics.config import load_config

REPO = Path(__file__).resolve().parents[1]


def shipped() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_blocks_in_priority_order_and_seed_last():
    p = {
        "overrides": {"training": {"learning_rate": 1.0}},
        "datasets": {"d": {"dataset": {"source": "synthetic"}, "overrides": {"training": {"learning_rate": 2.0}}}},
        "variants": {"gated_headwise": {"overrides": {"TransformerLayer_setting": {"qk_norm": False}}}},
    }
    merged = plan.resolved(p, "d", "gated_headwise", 7, base={"training": {"learning_rate": 0.5, "max_steps": 9}})
    assert merged["training"] == {"learning_rate": 2.0, "max_steps": 9, "seed": 7}
    # the variant's own overrides win over its name's settings
    assert merged["TransformerLayer_setting"] == {"attention": "softmax", "gate": "headwise", "qk_norm": False}
    assert merged["dataset"] == {"source": "synthetic", "name": "d"}
    # peers: no variant settings, no seed
    assert "TransformerLayer_setting" not in plan.resolved(p, "d", "peer_knn")


def test_set_items_are_sorted_and_later_blocks_win():
    assert plan.set_items({"b": {"x": 1}, "a": "text"}, {"b": {"x": [1, 2]}}) == ["a=text", "b.x=[1, 2]"]


def test_shipped_config_variants_differ_in_attention_settings():
    p = shipped()
    seen = set()
    for variant in p["variants"]:
        cfg = load_config([REPO / p["model_config"]], plan.set_items(*plan.run_blocks(p, "bdtnp", variant, 0)))
        seen.add((cfg.model.attention, cfg.model.gate, cfg.model.qk_norm))
    assert len(seen) == len(p["variants"]) == 5


def test_folds_expand_into_one_data_set_each_naming_its_parent():
    entries = plan.expand_datasets({"a": {"dataset": {"source": "bdtnp"}, "folds": 3}, "b": {"dataset": {}}})
    assert list(entries) == ["a_fold1", "a_fold2", "a_fold3", "b"]
    assert entries["a_fold2"]["dataset"] == {"source": "bdtnp", "fold": 2, "num_folds": 3, "fold_of": "a"}
    assert plan.dataset_block({"datasets": {"a": {"dataset": {"source": "bdtnp"}, "folds": 3}}}, "a_fold3") == {
        "dataset": {"source": "bdtnp", "fold": 3, "num_folds": 3, "fold_of": "a", "name": "a_fold3"}}


def test_a_data_set_s_own_seeds_replace_the_campaign_s_and_reach_its_folds():
    p = {"seeds": [0, 1], "datasets": {"a": {"seeds": [3, 4, 5], "folds": 2}, "b": {}}}
    assert plan.dataset_seeds(p, "a_fold2") == [3, 4, 5]
    assert plan.dataset_seeds(p, "b") == [0, 1]
    # the shipped default: the question's tissue (bdtnp) runs more seeds, at the same budget (the study's
    # pick on bdtnp; a shorter one would leave the variants short of their plateau by different amounts)
    cfg = shipped()
    assert len(plan.dataset_seeds(cfg, "bdtnp")) > len(plan.dataset_seeds(cfg, "synthetic")) == 5
    bdtnp = load_config([REPO / cfg["model_config"]], plan.set_items(*plan.run_blocks(cfg, "bdtnp", "linear", 0)))
    synthetic = load_config([REPO / cfg["model_config"]],
                            plan.set_items(*plan.run_blocks(cfg, "synthetic", "linear", 0)))
    assert bdtnp.training.max_steps == synthetic.training.max_steps == 400


def test_learning_rates_make_each_variant_one_variant_per_rate():
    tags = [plan.lr_tag(r) for r in (1e-3, 3e-2, 0.1, 2.5e-3, 1.0)]
    assert tags == ["1e-3", "3e-2", "1e-1", "2p5e-3", "1e0"]  # no '.': a regex wildcard in Snakemake
    p = {"datasets": {"d": {"dataset": {"source": "synthetic"}}}, "learning_rates": [1e-3, 1e-1],
         "variants": {"gated_headwise": {"overrides": {"training": {"learning_rate": 5.0, "max_steps": 9}}}}}
    assert list(plan.expand_variants(p)) == ["gated_headwise_lr1e-3", "gated_headwise_lr1e-1"]
    merged = plan.resolved(p, "d", "gated_headwise_lr1e-1", 2)
    # the named variant's attention settings, its own overrides, the sweep's rate over its own, the seed
    assert merged["TransformerLayer_setting"] == {"attention": "softmax", "gate": "headwise", "qk_norm": True}
    assert merged["training"] == {"learning_rate": 0.1, "max_steps": 9, "seed": 2}
    # without rates, the variants as written
    assert list(plan.expand_variants({**p, "learning_rates": []})) == ["gated_headwise"]


def test_a_data_set_trains_the_variants_it_names_and_its_folds_inherit_them():
    p = {"seeds": [0], "variants": {"linear": {}, "softmax": {}, "gated_headwise": {}},
         "datasets": {"a": {"variants": ["linear", "gated_headwise"], "folds": 2}, "b": {}}}
    assert plan.dataset_variants(p, "a_fold2") == ["linear", "gated_headwise"]  # campaign order, not the list's
    assert plan.dataset_variants(p, "b") == ["linear", "softmax", "gated_headwise"]
    # a sweep: the data set's variant brings every rate of it
    sweep = {**p, "learning_rates": [1e-3, 1e-2], "datasets": {"a": {"variants": ["softmax"]}}}
    assert plan.dataset_variants(sweep, "a") == ["softmax_lr1e-3", "softmax_lr1e-2"]
    with pytest.raises(ValueError, match=r"datasets\.a\.variants names 'gated'.*use some of linear, softmax"):
        plan.dataset_variants({**p, "datasets": {"a": {"variants": ["gated"], "folds": 2}}}, "a_fold1")
