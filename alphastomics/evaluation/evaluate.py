"""The evaluate stage: score a samples file against the truth, per section and overall (DESIGN section 6).

``python -m alphastomics evaluate --samples RUN/samples.parquet --data_dir PROC [--checkpoint
RUN/train/final.pt] [--train-summary RUN/train/train_summary.json] --out RUN/eval`` writes
``metrics.json``, ``sections.csv`` and, with a checkpoint, ``attention_map.npz`` (docs/architecture.md,
"Evaluation"). Whatever wrote the samples (our sampler or a peer baseline) is scored alike. Every metric
also gets a random-placement reference (``metrics.random_placement``: a seeded permutation of the true
positions, averaged over ``evaluation.num_random_references`` draws) so numbers have a scale. Metric
definitions: docs/metrics.md. A little over 450 lines: the checks that name the user's file, field and fix
for every column a scorer reads sit beside the scoring they guard.

Long because scoring is one pass per section over every draw and its random references, with the
checks of a samples file and the model probes in one place.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alphastomics import AlphaSTomicsError
from alphastomics.artifacts import (
    atomic_dir,
    gene_std_floored,
    json_safe,
    read_json,
    read_manifest,
    read_samples,
    samples_code,
)
from alphastomics.config import Config, EvalConfig, generates_expression, generates_positions
from alphastomics.evaluation import metrics as M
from alphastomics.lifecycle import limit_threads
from alphastomics.provenance import code

MODES = ("expr_to_pos", "pos_to_expr", "joint")


class EvaluationError(AlphaSTomicsError, ValueError):
    """The samples file, the processed data or a checkpoint cannot be scored; the message says why."""


# ------------------------------------------------------------------------------------------------------
# Inputs


def samples_mode(path: Path, table: pa.Table, meta: dict[str, str]) -> str:
    mode = meta.get("mode")
    if mode is None:  # files written by hand: infer from what is there
        mode = "joint" if "expression_pred" in table.column_names else "expr_to_pos"
    if mode not in MODES:
        raise EvaluationError(
            f"{path}: metadata 'alphastomics.mode' is {mode!r}; use one of {', '.join(MODES)}"
        )
    if generates_expression(mode):
        for name in ("expression_true", "expression_pred"):
            if name not in table.column_names:
                raise EvaluationError(f"{path}: field '{name}' is missing but mode is {mode}; rerun sample")
    return mode


def _matrix(column: pa.ChunkedArray, width: int, where: str) -> np.ndarray:
    flat = pc.list_flatten(column.combine_chunks()) if len(column) else pa.array([], pa.float32())
    a = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64)
    if a.size != len(column) * width:
        raise EvaluationError(f"{where}: expected {width} values per cell (one per gene); regenerate it")
    return a.reshape(len(column), width)


def read_truth(data_dir: Path, manifest: dict[str, Any], sections: list[str]) -> dict[str, dict[str, Any]]:
    """Per section: cell_id -> row, model-space expression (N, G) and cell types from cells.parquet."""
    path = data_dir / "cells.parquet"
    if not path.is_file():
        raise EvaluationError(f"{path}: not found; rerun preprocess into --data_dir")
    table = pq.read_table(path, columns=["cell_id", "section", "cell_type", "expression"])
    section_col = table["section"].cast(pa.string())
    g = int(manifest["n_genes"])
    out = {}
    for s in sections:
        rows = table.filter(pc.equal(section_col, s))
        ids = rows["cell_id"].cast(pa.string()).to_pylist()
        out[s] = {
            "row": {cid: i for i, cid in enumerate(ids)},
            "expression": _matrix(rows["expression"], g, str(path)),
            "cell_type": rows["cell_type"].cast(pa.string()).to_pylist(),
        }
    return out


def _finite(a: np.ndarray, path: Path, field: str, section: str) -> np.ndarray:
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise EvaluationError(
            f"{path}: field '{field}' has {bad} NaN/inf values in section {section}; "
            "the sampler diverged: check the training run and rerun sample"
        )
    return a


# ------------------------------------------------------------------------------------------------------
# Scoring one section


def position_scores(pred: np.ndarray, truth: M.SectionTruth) -> dict[str, float]:
    """Every position metric of one section against its truth (``metrics.SectionTruth``: true positions,
    and ``truth.values`` (N, G), the expression used for Moran's I). The placement's kNN sets are found once,
    for its kNN preservation and its Moran's I."""
    neighbours = truth.neighbours(pred)
    return {
        **truth.distance_scores(pred),  # distance_mse, distance_pearson, distance_spearman
        "knn_preservation": truth.knn_preservation(pred, neighbours=neighbours),
        **M.procrustes_scores(pred, truth.true),  # procrustes_rmsd, _rssd, _rmsd_scaled, _rssd_scaled
        # morans_i_corr, morans_i_mean_pred, morans_i_mean_true
        **M.morans_i_scores(M.morans_i_knn(neighbours, truth.values), truth.morans),
    }


def expression_scores(pred: np.ndarray, truth: M.SectionTruth) -> dict[str, float]:
    """Expression metrics of one section (standardised units) and Moran's I of predicted vs true expression
    (``truth.values``) on the true coordinates."""
    return {
        "expression_mse": M.expression_mse(pred, truth.values),
        "expression_pearson": M.expression_pearson(pred, truth.values),
        # expr_morans_i_corr, expr_morans_i_mean_pred, expr_morans_i_mean_true
        **M.morans_i_scores(truth.morans_i(pred), truth.morans, prefix="expr_"),
    }


def section_scores(
    mode: str, pos_pred: np.ndarray, expr_pred: np.ndarray | None, truth: M.SectionTruth
) -> dict[str, float]:
    """The metrics the mode calls for: positions (expr_to_pos), expression (pos_to_expr), or the consistency
    of the generated tissue (joint). In joint mode nothing is given per cell (both modalities start from
    noise), so generated cell i is not true cell i: per-cell metrics would compare arbitrary pairs, and the
    generated expression is scored against the generated positions instead (``metrics.joint_consistency``)."""
    out: dict[str, float] = {}
    if mode == "joint":
        if expr_pred is not None:
            out.update(M.joint_consistency(pos_pred, expr_pred, truth.true, truth.values,
                                           max_pairs=truth.max_pairs, seed=truth.seed))
        return out
    if generates_positions(mode):
        out.update(position_scores(pos_pred, truth))
    if generates_expression(mode) and expr_pred is not None:
        out.update(expression_scores(expr_pred, truth))
    return out


def random_reference(mode: str, truth: M.SectionTruth, ecfg: EvalConfig, index: int) -> dict[str, float]:
    """Mean over ``num_random_references`` seeded draws of the scores of a random assignment of cells to
    the true positions (and, for expression, of true expression profiles to cells: the same permutation; in
    joint mode positions and expression permuted independently, a tissue whose expression ignores space)."""
    pos_true, expr_true = truth.true, truth.values
    rng = np.random.default_rng([ecfg.seed, index])
    draws = []
    for _ in range(ecfg.num_random_references):
        perm = rng.permutation(len(pos_true))
        expr_perm = rng.permutation(len(pos_true)) if mode == "joint" else perm
        draws.append(section_scores(mode, pos_true[perm], expr_true[expr_perm], truth))
    return {
        key: float(np.nanmean([d[key] for d in draws])) if draws else math.nan for key in (draws or [{}])[0]
    }


def neighborhood_reference(hood: M.NeighborhoodTruth, ecfg: EvalConfig, index: int) -> dict[str, float]:
    """neighborhood_ari and neighborhood_nmi of a random placement of a section's labelled cells: the mean
    over ``num_random_references`` seeded permutations of their true positions, scored against the section's
    clustering in true coordinates (``hood``, fitted once); NaN with fewer than 2 cell types."""
    nan = {"neighborhood_ari": math.nan, "neighborhood_nmi": math.nan}
    if hood.clusters is None:
        return nan
    rng = np.random.default_rng([ecfg.seed, index, 1])
    n = len(hood.true)
    draws = [hood.scores(hood.true[rng.permutation(n)]) for _ in range(ecfg.num_random_references)]
    return {key: float(np.mean([d[key] for d in draws])) for key in nan} if draws else nan


# ------------------------------------------------------------------------------------------------------
# Scoring a samples file


def _section_arrays(
    part: pa.Table, s: str, truth: dict[str, Any], mode: str, manifest: dict[str, Any], samples: Path,
    data_dir: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(pos_pred, pos_true, expr_pred, expr_true, labels) of one section of a samples file, rows matched to
    the truth by cell id, after checking what a scorer needs (2+ cells, known ids, finite values)."""
    n = part.num_rows
    if n < 2:
        raise EvaluationError(f"{samples}: section '{s}' (field 'section') has {n} cell; metrics need 2 or more")
    ids = part["cell_id"].cast(pa.string()).to_pylist()
    lookup = truth["row"]
    missing = [c for c in ids if c not in lookup]
    if missing:
        raise EvaluationError(
            f"{samples}: field 'cell_id' has '{missing[0]}' (+{len(missing) - 1} more) not in section "
            f"'{s}' of {data_dir / 'cells.parquet'}; evaluate with the --data_dir the samples came from"
        )
    order = np.array([lookup[c] for c in ids])
    axes = "xyz"[: int(manifest["dims"])]

    def positions(kind: str) -> np.ndarray:
        values = np.c_[tuple(part[f"{a}_{kind}"].to_numpy() for a in axes)].astype(np.float64)
        return _finite(values, samples, f"x_{kind}", s)

    pos_true = positions("true")
    pos_pred = positions("pred") if generates_positions(mode) else np.zeros_like(pos_true)
    expr_true = truth["expression"][order]  # model space (standardised) for every mode
    expr_pred = None
    if generates_expression(mode):
        # Samples hold log-normalised expression; score in the standardised units the model trains in,
        # so every gene weighs the same in the MSE.
        norm = manifest["normalization"]
        gene_mean = np.asarray(norm["gene_mean"], dtype=np.float64)
        gene_std = np.asarray(norm["gene_std"], dtype=np.float64)
        gene_std = gene_std_floored(gene_std)
        raw = _matrix(part["expression_pred"], int(manifest["n_genes"]), str(samples))
        expr_pred = _finite((raw - gene_mean) / gene_std, samples, "expression_pred", s)
    return pos_pred, pos_true, expr_pred, expr_true, _labels(part, truth, order)


def score(samples: Path, data_dir: Path, cfg: Config) -> dict[str, Any]:
    """metrics.json content without diagnostics/params/cost: overall, random reference, per section."""
    manifest = read_manifest(data_dir)
    table, meta = read_samples(samples)
    mode = samples_mode(samples, table, meta)
    dims = int(manifest["dims"])
    known = manifest["cells_per_section"]
    section_col = table["section"].cast(pa.string())
    sections = list(dict.fromkeys(section_col.to_pylist()))  # file order
    if not sections:
        raise EvaluationError(f"{samples}: field 'section' is empty (no cells); rerun sample")
    for s in sections:
        if s not in known:
            raise EvaluationError(
                f"{samples}: field 'section' holds '{s}', which {data_dir / 'manifest.json'} does not list; "
                "evaluate with the --data_dir the samples were generated from"
            )
    truth = read_truth(data_dir, manifest, sections)
    ecfg = cfg.evaluation

    draw_col = table["draw"] if "draw" in table.column_names else None
    rows, refs, per_draw = [], [], []
    for index, s in enumerate(sections):
        in_section = pc.equal(section_col, s)
        draws = [None] if draw_col is None else sorted(set(draw_col.filter(in_section).to_pylist()))
        scored, ref = [], None
        known: M.SectionTruth | None = None
        hood: M.NeighborhoodTruth | None = None
        hood_ref: dict[str, float] = {}
        for k in draws:
            part = table.filter(in_section if k is None else pc.and_(in_section, pc.equal(draw_col, k)))
            n = part.num_rows
            pos_pred, pos_true, expr_pred, expr_true, labels = _section_arrays(
                part, s, truth[s], mode, manifest, samples, data_dir
            )
            keep = np.ones(n, dtype=bool) if labels is None else labels != ""
            # The truth side of every metric (true distances and their ranks, kNN, Moran's I) depends on the
            # section only: computed once, for every draw and random reference (a draw holding other cells or
            # another order, which no writer here produces, gets its own).
            if known is None or not _same((known.true, known.values), (pos_true, expr_true)):
                known = M.SectionTruth(pos_true, expr_true, k=ecfg.knn_k, seed=ecfg.seed)
            scores = section_scores(mode, pos_pred, expr_pred, known)
            if ref is None:  # the random reference depends on the truth only: once per section
                ref = random_reference(mode, known, ecfg, index)
            if labels is not None and keep.sum() >= 2 and generates_positions(mode):
                # Cell-type neighbourhoods among labelled cells only (unlabelled: neither counted nor scored).
                if hood is None or not _same((hood.true, hood.labels), (pos_true[keep], labels[keep])):
                    hood = M.NeighborhoodTruth(pos_true[keep], labels[keep], k=ecfg.neighborhood_k,
                                               seed=ecfg.seed)
                    hood_ref = neighborhood_reference(hood, ecfg, index)  # once per section, like ``ref``
                scores.update(hood.scores(pos_pred[keep]))
                ref.update(hood_ref)
            scored.append(scores)
            per_draw.append({"section": s, "draw": 0 if k is None else int(k), **scores})
        # A section's value: the mean over its draws (one draw: that draw's value).
        keys = list(dict.fromkeys(key for d in scored for key in d))
        mean = {key: float(np.mean([d.get(key, math.nan) for d in scored])) for key in keys}
        rows.append({"section": s, "n_cells": n, "draws": len(scored), **mean})
        refs.append({"section": s, "n_cells": n, **ref})

    weights = [r["n_cells"] for r in rows]
    metric_keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("section", "n_cells", "draws")))
    overall = {k: M.weighted_mean([r.get(k, math.nan) for r in rows], weights) for k in metric_keys}
    reference = {k: M.weighted_mean([r.get(k, math.nan) for r in refs], weights) for k in metric_keys}
    per_section = [
        {**r, **{f"random_{k}": ref.get(k, math.nan) for k in metric_keys}} for r, ref in zip(rows, refs)
    ]
    return {
        "method": meta.get("method", samples.stem),
        # cross-validation: which fold of which data set these sections are (the verdict pools the folds)
        "fold": manifest.get("fold"),
        "mode": mode,
        "samples": str(samples),
        "data_dir": str(data_dir),
        "dims": dims,
        "n_sections": len(rows),
        "n_cells": int(sum(weights)),
        "overall": overall,
        "random_reference": reference,
        "per_section": per_section,
        # every (section, draw) scored: what docs/metrics.md's variance decomposition reads
        "per_draw": per_draw,
        "settings": {
            "knn_k": ecfg.knn_k,
            "neighborhood_k": ecfg.neighborhood_k,
            "num_random_references": ecfg.num_random_references,
            "seed": ecfg.seed,
            "max_pairs": M.MAX_PAIRS,
            "expression_units": "standardised (manifest gene_mean / gene_std)",
            "random_reference": "random permutation of the true positions within each section",
        },
    }


def _labels(part: pa.Table, truth: dict[str, Any], order: np.ndarray) -> np.ndarray | None:
    """Cell types ('' = unlabelled) from the samples file, else from the processed data; None if none."""
    if "cell_type" in part.column_names:
        labels = part["cell_type"].cast(pa.string()).to_pylist()
    else:
        labels = [truth["cell_type"][i] for i in order]
    if all(v is None for v in labels):
        return None
    return np.array(["" if v is None else v for v in labels])


def _same(built_from: tuple[np.ndarray, ...], arrays: tuple[np.ndarray, ...]) -> bool:
    """Whether a draw's truth arrays are the ones a section's cached truth was built from."""
    return all(np.array_equal(a, b) for a, b in zip(built_from, arrays))


# ------------------------------------------------------------------------------------------------------
# Model diagnostics (needs the checkpoint)


# ------------------------------------------------------------------------------------------------------
# Outputs


def write_outputs(out: Path, result: dict[str, Any], attention_map: dict[str, np.ndarray] | None) -> None:
    """metrics.json, sections.csv (+ attention_map.npz), all appearing at once (folder renamed into place)."""
    with atomic_dir(out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(json_safe(result), indent=1) + "\n")
        rows = result["per_section"]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(tmp / "sections.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            for r in rows:
                w.writerow(
                    {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                )
        if attention_map is not None:
            np.savez_compressed(tmp / "attention_map.npz", **attention_map)


def read_train_summary(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, cost) copied from train_summary.json."""
    if not path.is_file():
        raise EvaluationError(
            f"{path}: train summary not found; pass the file train wrote as --train-summary"
        )
    s = read_json(path, "rerun train or drop --train-summary", EvaluationError)
    params = {k: s[k] for k in ("params_total", "params_attention") if k in s}
    cost_keys = ("wall_time_s", "cells_per_s", "peak_mem_mb", "steps", "device", "best_val_loss")
    return params, {k: s[k] for k in cost_keys if k in s}


def evaluate(
    samples: Path,
    data_dir: Path,
    out: Path,
    cfg: Config,
    *,
    checkpoint: Path | None = None,
    train_summary: Path | None = None,
    run_id: tuple[str, str, int] | None = None,
) -> dict[str, Any]:
    """Score, add diagnostics/params/cost when given, write the outputs; returns metrics.json's content.
    ``run_id`` (dataset, variant, seed) is what the run is: written first, read by the report (``runs``)."""
    result = score(samples, data_dir, cfg)
    if run_id is not None:
        dataset, variant, seed = run_id
        result = {"dataset": str(dataset), "variant": str(variant), "seed": int(seed), **result}
    # the code of this job and of the job that wrote the samples (the verdict warns when runs differ)
    result["code"] = {"evaluate": code(), "sample": samples_code(samples)}
    result["diagnostics"] = {}
    result["params"], result["cost"] = {}, {}
    attention_map = None
    if checkpoint is not None:
        sections = [r["section"] for r in result["per_section"]]
        from alphastomics.evaluation.diagnostics import (
            model_diagnostics,  # torch, only when a model is probed
        )

        diag, attention_map, masked = model_diagnostics(checkpoint, data_dir, sections, cfg)
        result["diagnostics"] = diag
        if masked:  # per section (so seeds x sections can be paired), overall cell-weighted like the rest
            rows = result["per_section"]
            for r in rows:
                r["masked_reconstruction_mse"] = masked[r["section"]]
            result["overall"]["masked_reconstruction_mse"] = M.weighted_mean(
                [r["masked_reconstruction_mse"] for r in rows], [r["n_cells"] for r in rows]
            )
        if train_summary is None and (checkpoint.parent / "train_summary.json").is_file():
            train_summary = checkpoint.parent / "train_summary.json"
    if train_summary is not None:
        result["params"], result["cost"] = read_train_summary(train_summary)
    else:
        # Peer baselines have no training run: their samples file records fit + predict time.
        wall = (pq.read_schema(samples).metadata or {}).get(b"alphastomics.wall_time_s")
        if wall is not None:
            result["cost"]["wall_time_s"] = float(wall)
    write_outputs(out, result, attention_map)
    return result


def main(args: Any, cfg: Config) -> int:
    limit_threads(getattr(args, "threads", None))
    result = evaluate(
        args.samples,
        args.data_dir,
        args.out,
        cfg,
        checkpoint=args.checkpoint,
        train_summary=args.train_summary,
        run_id=getattr(args, "run_id", None),
    )
    o, r = result["overall"], result["random_reference"]
    shown = [
        k for k in ("knn_preservation", "distance_pearson", "procrustes_rmsd", "expression_pearson") if k in o
    ]
    text = ", ".join(f"{k} {o[k]:.4g} (random {r.get(k, math.nan):.4g})" for k in shown)
    print(
        f"evaluate: {result['method']} ({result['mode']}), {result['n_sections']} sections, "
        f"{result['n_cells']} cells: {text} -> {args.out}",
        file=sys.stderr,
    )
    return 0
