"""The plan of a campaign (``config/config.yaml``): which runs exist and the package overrides of each.

One owner for "the overrides of a (data set, variant, seed) run": the workflow (``workflow/rules/common.smk``,
whose stage arguments the learning-curve study's rules reuse) calls ``run_blocks`` and ``set_items``, so a
study run of ``gated_headwise`` trains what the workflow's ``gated_headwise`` trains. Plain Python (json, shlex, yaml):
Snakemake imports it outside the package's environment too.

Priority, lowest first: the data set's ``dataset`` block (its ``name`` is the key, or the fold's name) < global
``overrides`` < the data set's ``overrides`` < the named variant's attention settings
(``alphastomics.variants.VARIANTS``) < the variant's own ``overrides`` < a sweep's learning rate <
``training.seed``. Peers take the first three only.

Cross-validation folds (``folds: K`` on a data set): the data set becomes K data sets ``{name}_fold{i}``
(i = 1..K), each holding out another group of sections for testing (``alphastomics.data.splits.fold_splits``
with ``dataset.fold`` / ``dataset.num_folds``), so every section is tested once per seed; the verdict pools
the folds of a seed back into one observation (``dataset.fold_of`` names the data set they belong to).

A learning-rate sweep (``learning_rates: [r, ...]``, config/stability.yaml): every variant V runs once per
rate as the variant ``V_lr{tag}`` (``lr_tag``: 0.001 -> ``1e-3``) with V's attention settings and overrides
plus ``training.learning_rate: r`` (``expand_variants``), the way folds expand a data set: the sweep is
runs of the ordinary workflow in folders of their own, and their overrides are still this module's.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from alphastomics.layout import is_peer
from alphastomics.variants import VARIANTS


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Nested merge of mappings, ``update`` wins (also ``alphastomics.config.load_config``'s rule)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _reads_back(text: str) -> bool:
    try:
        return yaml.safe_load(text) == text
    except yaml.YAMLError:
        return False


def flatten(block: dict[str, Any], prefix: str = "") -> list[str]:
    """{'training': {'lr': 1e-4}} -> ['training.lr=0.0001'] (values as JSON, which ``--set`` reads as YAML;
    plain strings stay bare so logs read well)."""
    out = []
    for key, value in block.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.extend(flatten(value, path))
        elif isinstance(value, str) and _reads_back(value):
            out.append(f"{path}={value}")
        else:
            out.append(f"{path}={json.dumps(value)}")
    return out


def set_items(*blocks: dict[str, Any]) -> list[str]:
    """``key=value`` items of the merged blocks (later blocks win), sorted by key: the command line, a rerun
    trigger of the workflow, must not depend on key order in YAML."""
    merged: dict[str, str] = {}
    for block in blocks:
        for item in flatten(block):
            merged[item.split("=", 1)[0]] = item
    return [merged[key] for key in sorted(merged)]


def set_args(*blocks: dict[str, Any]) -> str:
    """Shell-quoted ``--set k=v ...`` of ``set_items``."""
    return " ".join(f"--set {shlex.quote(item)}" for item in set_items(*blocks))


# --- data sets and folds --------------------------------------------------------------------------------


def fold_name(dataset: str, fold: int) -> str:
    return f"{dataset}_fold{fold}"


def expand_datasets(datasets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Config ``datasets`` with every ``folds: K`` (K >= 2) entry replaced by its K fold data sets, each a
    plain entry whose ``dataset`` block says which fold it is; order kept."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in datasets.items():
        k = int(entry.get("folds") or 1)
        if k < 2:
            out[name] = entry
            continue
        for i in range(1, k + 1):
            block = {**(entry.get("dataset") or {}), "fold": i, "num_folds": k, "fold_of": name}
            out[fold_name(name, i)] = {**entry, "dataset": block, "folds": 1}
    return out


def dataset_seeds(plan: dict[str, Any], dataset: str) -> list[int]:
    """The training seeds of a data set (or fold): its own ``seeds``, else the campaign's."""
    entry = expand_datasets(plan["datasets"]).get(dataset) or plan["datasets"][dataset]
    return [int(s) for s in (entry.get("seeds") or plan["seeds"])]


def dataset_variants(plan: dict[str, Any], dataset: str) -> list[str]:
    """The variants a data set (or fold) trains: the campaign's variants (after a sweep's expansion) that its
    own ``variants`` list names (a swept variant V names every ``V_lr{tag}``), else all of them. One campaign
    can then run several tasks (``diffusion.mode`` per data set) without every variant on every task.
    Unknown names raise ValueError naming the data set and the key."""
    expanded = expand_variants(plan)
    entry = expand_datasets(plan["datasets"]).get(dataset) or plan["datasets"][dataset]
    wanted = entry.get("variants")
    if not wanted:
        return list(expanded)
    unknown = [v for v in wanted if v not in plan["variants"]]
    if unknown:
        raise ValueError(
            f"datasets.{(entry.get('dataset') or {}).get('fold_of', dataset)}.variants names {unknown[0]!r}, which "
            f"is not a key of variants; use some of {', '.join(plan['variants'])}"
        )
    return [name for name, e in expanded.items() if e.get("base", name) in wanted]


def dataset_block(plan: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The ``dataset`` overrides of a data set (or fold) of the plan; its name is the key, whatever the
    block says (the results folder is named after it)."""
    entry = expand_datasets(plan["datasets"]).get(dataset) or plan["datasets"][dataset]  # or a folded one's
    return {"dataset": {**(entry.get("dataset") or {}), "name": dataset}}


# --- variants and learning-rate sweeps -------------------------------------------------------------------


def lr_tag(lr: float) -> str:
    """A learning rate as a folder-safe name part: 0.001 -> '1e-3', 0.0025 -> '2p5e-3' (no '.', which would
    be a regex wildcard in Snakemake's wildcard constraints)."""
    mantissa, exponent = f"{float(lr):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".").replace(".", "p")
    return f"{mantissa}e{int(exponent)}"


def expand_variants(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Config ``variants``, each crossed with ``learning_rates`` when the config has them: ``V_lr{tag}`` for
    every rate (variant-major order), an entry with ``base: V``, ``learning_rate: r`` and V's overrides plus
    ``training.learning_rate: r`` (the sweep's rate wins over V's own). Without rates: the variants as
    given."""
    variants = plan["variants"]
    rates = [float(r) for r in plan.get("learning_rates") or []]
    if not rates:
        return {name: entry or {} for name, entry in variants.items()}
    tags = [lr_tag(r) for r in rates]
    if len(set(tags)) < len(tags):
        raise ValueError(f"learning_rates {rates}: two rates share a name ({tags}); make them differ")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in variants.items():
        entry = entry or {}
        for rate, tag in zip(rates, tags):
            overrides = merge(entry.get("overrides") or {}, {"training": {"learning_rate": rate}})
            out[f"{name}_lr{tag}"] = {**entry, "overrides": overrides, "base": name, "learning_rate": rate}
    return out


# --- the overrides of one run ---------------------------------------------------------------------------


def run_blocks(plan: dict[str, Any], dataset: str, variant: str | None, seed: int | None = None) -> list[dict]:
    """Every override block of one run, lowest priority first (module docstring); ``variant`` None or a
    ``peer_`` name: a peer's blocks (no variant settings, no seed)."""
    entry = expand_datasets(plan["datasets"])[dataset]
    blocks = [dataset_block(plan, dataset), plan.get("overrides") or {}, entry.get("overrides") or {}]
    if variant is None or is_peer(variant):
        return blocks
    own = expand_variants(plan)[variant]
    named = VARIANTS.get(own.get("base", variant))
    blocks.append({"TransformerLayer_setting": named.settings()} if named else {})
    blocks.append(own.get("overrides") or {})
    if seed is not None:
        blocks.append({"training": {"seed": int(seed)}})
    return blocks


def resolved(plan: dict[str, Any], dataset: str, variant: str | None, seed: int | None = None,
             base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's settings as one mapping: ``base`` (model.yaml's content) merged with its blocks."""
    out = dict(base or {})
    for block in run_blocks(plan, dataset, variant, seed):
        out = merge(out, block)
    return out
