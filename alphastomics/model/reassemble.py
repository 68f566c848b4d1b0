"""The reassemble stage: a trained model places a lab's dissociated cells (expression, no coordinates).

``python -m alphastomics reassemble --checkpoint RUN/train/final.pt --h5ad cells.h5ad --out placed.h5ad``
``[--group-key OBS] [--draws K] [--layer L] [--min-gene-share 0.8]``.

The cells are read from any AnnData layout preprocess accepts (X or a layer, dense or sparse); genes are
matched to the model's panel **by name** (the manifest the checkpoint carries); a missing panel gene is
imputed as the training mean (0 after standardisation), and below ``--min-gene-share`` of the panel the
stage refuses. Expression is normalised as the training data were (the manifest's ``normalization``, with
preprocess's own functions), so a placement here is the one the sample stage makes of the same cells: each
group of cells (``--group-key``; default all cells) is one tissue, generated whole ``--draws`` times with
the sample stage's seeds (draw k of the i-th group in sorted order = draw k of the i-th held-out section)
and averaged by ``placement.mean_placement``. Sharing those stages' code (modules ``normalization`` and
``placement``), not a copy of it, keeps the equality true (tests/test_reassemble.py checks it on a
withheld section).

Written to ``--out``: the input AnnData plus ``obsm["X_spatial_pred"]`` (the aligned mean, training units,
centred at 0: a new tissue has no section centre), ``obsm["X_spatial_draws"]`` (cells x K x D, each draw
aligned to the mean), ``obs["placement_spread"]`` (RMS distance of a cell's draws from its mean) and
``uns["alphastomics_reassemble"]`` (provenance). docs/data.md, "Reassemble your own cells".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alphastomics import __version__
from alphastomics.artifacts import DataError, atomic_file, gene_std_floored
from alphastomics.config import Config, DatasetConfig

UNS_KEY = "alphastomics_reassemble"
DEFAULT_GROUP = "all"  # the one tissue when no --group-key is given


class ReassembleError(DataError):
    """The cells, the checkpoint or the options cannot give a placement; the message names the fix."""


# --------------------------------------------------------------------------------------------------------
# Which checkpoint


def pick_checkpoint(checkpoints: list[Path]) -> tuple[Path, str]:
    """One checkpoint: itself. Several (the seeds of one variant): the one whose ``train_summary.json``
    beside it has the lowest ``best_val_loss``, chosen on validation data only, never on the cells placed
    here -> (checkpoint, how it was picked)."""
    if len(checkpoints) == 1:
        return checkpoints[0], "given"
    losses = []
    for ckpt in checkpoints:
        path = ckpt.parent / "train_summary.json"
        try:
            loss = json.loads(path.read_text()).get("best_val_loss")
        except (OSError, json.JSONDecodeError):
            raise ReassembleError(f"{path}: missing or not JSON; each --checkpoint needs the "
                                  "train_summary.json its training wrote beside it (or pass one --checkpoint)"
                                  ) from None
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise ReassembleError(f"{path}: best_val_loss is {loss}; that run never validated, so seeds "
                                  "cannot be compared: pass one --checkpoint")
        losses.append(float(loss))
    best = int(np.argmin(losses))
    return checkpoints[best], f"lowest best_val_loss ({losses[best]:.6g}) of {len(checkpoints)} checkpoints"


def config_sha256(config: dict[str, Any]) -> str:
    """A stable hash of a checkpoint's config (sorted JSON): the same settings give the same hash."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------
# The cells: genes by name, groups, normalisation as in training


def _read_cells(path: Path, layer: str | None) -> tuple[Any, Any, str]:
    """(AnnData, its expression matrix, the field's name) of the user's file."""
    import anndata as ad

    if not path.is_file():
        raise ReassembleError(f"{path}: not found; pass the .h5ad of your cells (--h5ad)")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - anndata raises many types on files it did not write
        raise ReassembleError(f"{path}: not a readable .h5ad file ({type(err).__name__}); re-export it with "
                              "anndata (adata.write_h5ad)") from None
    if adata.n_obs == 0:
        raise ReassembleError(f"{path}: the file has no cells; give a file with cells")
    if layer is not None and layer not in adata.layers:
        have = ", ".join(adata.layers) or "none"
        raise ReassembleError(f"{path}: layers['{layer}'] not found (layers: {have}); set --layer to an "
                              "existing layer, or leave it out for X")
    field = "X" if layer is None else f"layers['{layer}']"
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        raise ReassembleError(f"{path}: X is empty (no matrix); set --layer to the layer holding expression")
    return adata, matrix, field


def match_genes(names: list[str], panel: list[str], where: str, min_share: float
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Columns of the panel's genes in the file -> (file columns, their panel indices, missing genes).

    By name, so gene order and extra genes do not matter; below ``min_share`` of the panel present the
    placement would rest mostly on imputed values, so it is refused."""
    col = {g: i for i, g in enumerate(names)}
    present = [j for j, g in enumerate(panel) if g in col]
    missing = [g for g in panel if g not in col]
    if not present:
        raise ReassembleError(
            f"{where}: none of the model's {len(panel)} genes is in var_names (file: {', '.join(names[:4])} "
            f"...; model: {', '.join(panel[:4])} ...); set var_names to the gene symbols it was trained on")
    if len(present) < min_share * len(panel):
        raise ReassembleError(
            f"{where}: {len(missing)} of the model's {len(panel)} genes are missing ({', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}), {len(present) / len(panel):.0%} present, below "
            f"--min-gene-share {min_share:g}; add those genes (by these names) or lower --min-gene-share")
    return np.array([col[panel[j]] for j in present]), np.array(present), missing


def _groups(obs: Any, key: str | None, where: str) -> dict[str, np.ndarray]:
    """Group name -> row indices (file order), in sorted name order: the order that gives each its seed."""
    import pandas as pd

    from alphastomics.data.raw import label_column

    if key is None:
        return {DEFAULT_GROUP: np.arange(len(obs))}
    labels = label_column(obs, key, where, "--group-key", "tissue")
    col = obs[key]
    names = sorted(set(labels) | ({str(c) for c in col.cat.categories}
                                  if isinstance(col.dtype, pd.CategoricalDtype) else set()))
    groups = {name: np.flatnonzero(labels == name) for name in names}
    for name, rows in groups.items():
        if len(rows) < 2:
            raise ReassembleError(
                f"{where}: group '{name}' of obs['{key}'] has {len(rows)} cell(s); a tissue needs >= 2: drop "
                f"or merge it (unused categories: adata.obs['{key}'].cat.remove_unused_categories())")
    return groups


def plan_normalisation(found: str, nonneg: bool, norm: dict[str, Any], where: str, checkpoint: Path
                       ) -> tuple[str, bool]:
    """How to bring the user's values (``found``, preprocess's detection) to the training scale ->
    (``normalization.normalise`` step, whether to undo a log first).

    Counts given to a model trained on counts: the same library-size normalisation + log1p. Log-normalised
    values given to it: expm1, then the same normalisation; exact whatever target sum they were made with,
    since library-size normalisation is per-cell scale-free. Values the training pipeline cannot reproduce
    (counts for a model trained on values normalised before preprocess, z-scores for one trained on
    counts) are refused: a placement from wrongly scaled input would look as plausible as a right one."""
    trained, trained_input = norm["applied"], norm.get("input", "?")
    told = f"{checkpoint} was trained on {trained_input} values (preprocess applied {trained})"
    if not nonneg and trained != "none":
        raise ReassembleError(f"{where} has negative values (scaled or z-scored?) but {told}; give counts "
                              "or log-normalised values (--layer, e.g. the layer holding counts)")
    if trained == "library_size_log1p":
        return trained, found == "normalized"
    if trained == "log1p" and found != "counts":
        return ("log1p" if found == "scaled" else "none"), False
    if trained == "none" and found == "normalized":
        return "none", False
    fix = ("divide them by the same per-cell size (e.g. cell volume) first" if trained == "log1p"
           else "normalise them as the training data were and pass those (--layer)")
    raise ReassembleError(f"{where} holds {found} values but {told}, which this stage cannot redo; {fix}")


def library_genes(manifest: dict[str, Any]) -> str:
    """Which genes a cell's library size counts: those the training data's counted. Preprocess counts every
    gene of its file; when it kept them all (gene_selection "all") that is the panel, so here too only the
    panel genes count and extra genes of the file change nothing; after a gene selection the training
    files had more genes than the panel, and every gene of this file counts, the nearest equivalent."""
    return "panel" if (manifest.get("gene_selection") or {}).get("method") == "all" else "file"


def _model_input(x: np.ndarray, cols: np.ndarray, present: np.ndarray, n_genes: int, steps: tuple[str, bool],
                 norm: dict[str, Any], library: str) -> np.ndarray:
    """(cells, file genes) values -> (cells, panel) standardised as preprocess writes cells.parquet; a
    missing gene stays 0, the training mean."""
    from alphastomics.data.normalization import normalise

    applied, undo_log = steps
    if library == "panel":
        x, cols = np.ascontiguousarray(x[:, cols]), np.arange(len(cols))
    if undo_log:
        np.expm1(x, out=x)
    x = normalise(x, applied, float(norm.get("target_sum") or 0.0), cols)
    mean = np.asarray(norm["gene_mean"], np.float64)[present].astype(np.float32)
    inv_std = (1.0 / gene_std_floored(np.asarray(norm["gene_std"], np.float64)[present])).astype(np.float32)
    x -= mean
    x *= inv_std
    out = np.zeros((len(x), n_genes), np.float32)
    out[:, present] = x
    return out


def _align_to(draw: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``draw`` centred and rotated/reflected onto ``ref`` (orthogonal Procrustes, as mean_placement does)."""
    d = draw - draw.mean(axis=0)
    u, _, vt = np.linalg.svd(d.T @ ref)
    return d @ (u @ vt)


# --------------------------------------------------------------------------------------------------------
# The stage


@dataclass
class Cells:
    """The user's cells, checked and brought to the model's input: standardised panel genes per group."""

    adata: Any
    groups: dict[str, np.ndarray]  # group -> rows (file order), by sorted name: group i has section i's seeds
    inputs: dict[str, np.ndarray]  # group -> (cells, panel genes) float32, standardised, missing genes 0
    field: str
    found: str  # preprocess's detection: counts, scaled or normalized
    normalization: str  # what was done to them, in words
    genes_used: list[str]
    genes_missing: list[str]
    genes_ignored: int


def read_cells(h5ad: Path, layer: str | None, group_key: str | None, manifest: dict[str, Any], dims: int,
               min_gene_share: float, checkpoint: Path) -> Cells:
    """Read, check and normalise the cells of ``h5ad`` for the model of ``manifest`` (its genes and
    normalisation); every refusal happens here, before the first draw."""
    from scipy import sparse

    from alphastomics.data.normalization import detect_input
    from alphastomics.data.raw import RawData, RawSection, _cached_csr, _row_loader, _unique_genes

    panel, norm = list(manifest["genes"]), manifest["normalization"]
    adata, matrix, field = _read_cells(h5ad, layer)
    where = f"{h5ad}: {field}"
    names = _unique_genes([str(g) for g in adata.var_names], str(h5ad), "var_names")
    cols, present, missing = match_genes(names, panel, str(h5ad), min_gene_share)
    groups = _groups(adata.obs, group_key, str(h5ad))
    get = _cached_csr(lambda: matrix) if sparse.issparse(matrix) else (lambda: np.asarray(matrix))
    ids = adata.obs_names.astype(str).to_numpy()
    raw = RawData("h5ad", names, dims, [
        RawSection(name, str(h5ad), np.zeros((len(rows), dims)), ids[rows], None, _row_loader(get, rows))
        for name, rows in groups.items()], {}, expression_field=field)
    found, _ = detect_input(raw, DatasetConfig(normalization="auto"))  # also refuses NaN/inf
    m = get()
    nonneg = bool(m.min() >= 0)
    if nonneg and float(m.max()) == 0.0:
        raise ReassembleError(f"{where} is all zeros: no expression to place the cells by; pass the layer "
                              "holding expression (--layer)")
    applied, undo_log = plan_normalisation(found, nonneg, norm, where, checkpoint)
    library = library_genes(manifest)
    inputs = {}
    for sec in raw.sections:
        x = sec.load()
        silent = ~(x[:, cols] > 0).any(axis=1) if nonneg else np.zeros(len(x), bool)
        if silent.any():
            raise ReassembleError(
                f"{where}: {int(silent.sum())} cell(s) express none of the {len(cols)} model genes found "
                f"(first '{sec.cell_ids[np.argmax(silent)]}'), so expression cannot place them; remove them")
        inputs[sec.name] = _model_input(x, cols, present, len(panel), (applied, undo_log), norm, library)
        del x
    words = ("expm1, then " if undo_log else "") + applied
    if applied == "library_size_log1p":
        words += (f" (target_sum {norm['target_sum']:g}; library sizes over "
                  + ("the model's genes found, as in training)" if library == "panel" else
                     "every gene of the file, as training counted every gene of its files)"))
    return Cells(adata, groups, inputs, field, found,
                 words + ", then standardised with the training gene_mean / gene_std",
                 [panel[j] for j in present], missing, len(names) - len(present))


def reassemble(
    checkpoint: str | Path | list[str | Path],
    h5ad: str | Path,
    out: str | Path,
    *,
    group_key: str | None = None,
    draws: int = 8,
    layer: str | None = None,
    min_gene_share: float = 0.8,
    cfg: Config | None = None,
) -> Any:
    """Place the cells of ``h5ad``; write and return the annotated AnnData.

    ``cfg`` (the stage's --config) supplies the sampling knobs, as for the sample stage
    (``diffusion.sampling_steps``, ``sampler``, ``evaluation.seed``); the model and its mode come from the
    checkpoint. Everything is checked before the first draw; ``out`` is written whole or not at all."""
    import torch

    from alphastomics.data.batches import Section, collate
    from alphastomics.model.denoiser import Denoiser
    from alphastomics.model.diffusion import Diffusion
    from alphastomics.model.placement import generate_whole, mean_placement
    from alphastomics.seeds import SAMPLE_STREAM, step_seed

    candidates = [Path(c) for c in (checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint])]
    h5ad, out = Path(h5ad), Path(out)
    if draws < 1:
        raise ReassembleError(f"--draws is {draws}; use an integer >= 1")
    if not 0.0 < min_gene_share <= 1.0:
        raise ReassembleError(f"--min-gene-share is {min_gene_share:g}; use a share in (0, 1], e.g. 0.8")
    picked, picked_by = pick_checkpoint(candidates)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, ckpt_cfg, ckpt = Denoiser.from_checkpoint(picked, device)
    manifest = ckpt.get("manifest") or {}
    if "normalization" not in manifest or len(manifest.get("genes", [])) != int(ckpt["n_genes"]):
        raise ReassembleError(f"{picked}: the checkpoint carries no data manifest with its genes and "
                              "normalisation; retrain with this version")
    mode = ckpt_cfg.diffusion.mode
    if mode != "expr_to_pos":
        raise ReassembleError(f"{picked}: trained in diffusion.mode '{mode}'; placing cells by expression "
                              "needs a model trained with diffusion.mode: expr_to_pos")
    run_cfg = cfg or ckpt_cfg
    diffusion = Diffusion(dataclasses.replace(ckpt_cfg.diffusion, sampler=run_cfg.diffusion.sampler,
                                              ddim_eta=run_cfg.diffusion.ddim_eta))
    dims = int(ckpt["dims"])
    cells = read_cells(h5ad, layer, group_key, manifest, dims, min_gene_share, picked)
    missing = cells.genes_missing
    print(f"reassemble: {len(cells.genes_used)} of {len(manifest['genes'])} model genes found in {h5ad} "
          f"({len(missing)} missing, imputed as the training mean{': ' if missing else ''}"
          f"{', '.join(missing[:5])}); {cells.genes_ignored} other genes ignored; input {cells.found}",
          file=sys.stderr)

    # Each group generated whole; draw k of group i has the sample stage's seed of draw k of section i.
    scale = float(manifest["coordinates"]["scale"])
    n = cells.adata.n_obs
    pred, every, spread = np.zeros((n, dims)), np.zeros((n, draws, dims)), np.zeros(n)
    for i, (name, rows) in enumerate(cells.groups.items()):
        sec = Section(name, cells.inputs.pop(name), np.zeros((len(rows), dims), np.float32),
                      np.full(len(rows), -1, np.int64), np.arange(len(rows)).astype(str),
                      np.arange(len(rows), dtype=np.int64))
        batch = collate([sec])
        generated = []
        for k in range(draws):
            seed = step_seed(run_cfg.evaluation.seed, i, k, SAMPLE_STREAM)
            _, pos = generate_whole(model, diffusion, batch, mode, run_cfg.diffusion.sampling_steps, seed,
                                    device, name)
            generated.append(pos[0].double().numpy())
        mean = mean_placement(generated)
        aligned = np.stack([_align_to(d, mean) for d in generated], axis=1)  # (cells, K, D)
        pred[rows], every[rows] = mean * scale, aligned * scale
        spread[rows] = np.sqrt(((aligned - mean[:, None]) ** 2).sum(axis=2).mean(axis=1)) * scale

    adata = cells.adata
    adata.obsm["X_spatial_pred"] = pred
    adata.obsm["X_spatial_draws"] = every
    adata.obs["placement_spread"] = spread
    adata.uns[UNS_KEY] = _provenance(candidates, picked, picked_by, ckpt, ckpt_cfg, run_cfg, cells, draws,
                                     group_key)
    with atomic_file(out) as tmp:
        adata.write_h5ad(tmp)
    return adata


def _provenance(candidates: list[Path], picked: Path, picked_by: str, ckpt: dict[str, Any], ckpt_cfg: Config,
                run_cfg: Config, cells: Cells, draws: int, group_key: str | None) -> dict[str, Any]:
    """uns["alphastomics_reassemble"]: what placed these cells, enough to make the same placement again.
    Strings and numbers only (h5ad stores no None)."""
    from alphastomics.artifacts import sha256_file
    from alphastomics.variants import variant_name

    m, coords = ckpt_cfg.model, ckpt["manifest"]["coordinates"]
    return {
        "checkpoint": str(picked), "checkpoint_sha256": sha256_file(picked), "picked_by": picked_by,
        "checkpoints_considered": [str(c) for c in candidates],
        "config_sha256": config_sha256(ckpt["config"]),
        "variant": variant_name(m.attention, m.gate, m.qk_norm), "mode": ckpt_cfg.diffusion.mode,
        "dataset": str(ckpt["manifest"].get("dataset") or ""), "training_seed": ckpt_cfg.training.seed,
        "seed": run_cfg.evaluation.seed, "sampling_steps": run_cfg.diffusion.sampling_steps,
        "sampler": run_cfg.diffusion.sampler, "draws": draws, "group_key": group_key or "",
        "groups": list(cells.groups), "genes_used": cells.genes_used, "genes_missing": cells.genes_missing,
        "genes_missing_imputed_as": "training mean (0 after standardisation)",
        "genes_ignored": cells.genes_ignored, "input": cells.found, "expression_field": cells.field,
        "normalization": cells.normalization, "units": str(coords.get("units") or "training data units"),
        "scale": float(coords["scale"]),
        "centre": "0 per group: a new tissue has no section centre, so each group is centred at 0",
        "orientation": "arbitrary: expression fixes positions only up to rotation and reflection",
        "package_version": __version__,
    }


def withheld_section(data_dir: str | Path, section: str) -> tuple[Any, np.ndarray]:
    """A processed section as a lab would hand it over: an AnnData of its cells (log-normalised values of
    the model's genes, cell ids, cell types) without coordinates, and the true coordinates apart
    (original units) -> (AnnData, (cells, D)). For honest checks of this stage (tests, the docs' figure)."""
    import anndata as ad
    import pandas as pd

    from alphastomics.data.batches import ProcessedData, original_positions, undo_normalization

    data = ProcessedData(data_dir)
    sec = data.section(section)
    expression = undo_normalization(sec.expression.astype(np.float64), data.manifest)
    if data.manifest["normalization"]["applied"] != "none":  # log1p of counts: >= 0 but for float rounding
        expression = np.maximum(expression, 0.0)
    expression = expression.astype(np.float32)
    types = np.array([data.cell_types[c] if c >= 0 else None for c in sec.cell_type], dtype=object)
    obs = pd.DataFrame({"cell_type": pd.Categorical(types)}, index=sec.cell_ids.astype(str))
    adata = ad.AnnData(expression, obs=obs, var=pd.DataFrame(index=data.genes))
    return adata, original_positions(sec.positions.astype(np.float64), section, data.manifest)


def main(args: Any, cfg: Config) -> int:
    """CLI entry: the stage config only supplies sampling knobs when --config/--set were given."""
    given = bool(getattr(args, "config", None) or getattr(args, "overrides", None))
    adata = reassemble(args.checkpoint, args.h5ad, args.out, group_key=args.group_key, draws=args.draws,
                       layer=args.layer, min_gene_share=args.min_gene_share, cfg=cfg if given else None)
    info = adata.uns[UNS_KEY]
    print(f"reassemble: {adata.n_obs} cells in {len(info['groups'])} tissue(s), {args.draws} draws each, "
          f"{info['variant']} ({info['picked_by']}: {info['checkpoint']}) -> {args.out}", file=sys.stderr)
    return 0
