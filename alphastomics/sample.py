"""The sample stage: a trained denoiser generates every held-out section, written beside the truth.

``python -m alphastomics sample --checkpoint RUN/train/final.pt --data_dir PROC --out RUN/samples.parquet``.
The model is rebuilt from the checkpoint alone (its config, EMA weights); each section is generated whole
(attention over all of its cells, as LUNA reassembles a tissue) in the diffusion mode it was trained for:
coordinates from expression (``expr_to_pos``), expression from coordinates (``pos_to_expr``) or both
(``joint``). Outputs are mapped back to original units with the manifest of ``PROC`` (coordinates:
* scale + section centre; expression: * gene_std + gene_mean) in the "Samples" format of
``docs/architecture.md``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from alphastomics import AlphaSTomicsError
from alphastomics.config import Config, ModelConfig
from alphastomics.train import load_model, step_seed

_SAMPLE_STREAM = 5


class SampleError(AlphaSTomicsError):
    """The checkpoint and the processed data do not belong together, or the split is empty."""


def variant_name(m: ModelConfig) -> str:
    """Short name of the attention variant, as the ablation table calls it."""
    if not m.use_gated_attention:
        return "linear"
    if m.gate_type == "none":
        return "softmax" + ("-qknorm" if m.use_qk_norm else "")
    return f"gated-{m.gate_type}" + ("-qknorm" if m.use_qk_norm else "")


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise SampleError(f"{path}: not found; pass the folder written by the preprocess stage as --data_dir")
    return json.loads(path.read_text())


def check_compatible(manifest: dict[str, Any], ckpt: dict[str, Any], data_dir: Path, checkpoint: Path) -> None:
    """The genes (in order) and dims the model was trained on must be those of --data_dir."""
    trained = ckpt.get("manifest") or {}
    genes = list(manifest.get("genes", []))
    if genes != list(trained.get("genes", genes)) or len(genes) != int(ckpt["n_genes"]):
        raise SampleError(
            f"{data_dir / 'manifest.json'}: genes differ from those of {checkpoint} "
            f"({len(genes)} vs {ckpt['n_genes']}); preprocess with the gene list the model was trained on"
        )
    if int(manifest.get("dims", -1)) != int(ckpt["dims"]):
        raise SampleError(
            f"{data_dir / 'manifest.json'}: dims is {manifest.get('dims')} but {checkpoint} was trained "
            f"with dims {ckpt['dims']}; sample with data of the same dimensionality"
        )


def _generate(model: torch.nn.Module, diffusion: Any, batch: Any, mode: str, steps: int, seed: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    batch = batch.to(device) if device.type != "cpu" else batch
    with torch.no_grad():
        expr, pos = diffusion.sample(model, batch, mode=mode, steps=steps, generator=gen)
    return expr.float().cpu(), pos.float().cpu()


def sample(
    checkpoint: str | Path,
    data_dir: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    cfg: Config | None = None,
) -> pa.Table:
    """Generate every section of ``split``; write and return the samples table.

    ``cfg`` (the stage's --config) supplies the sampling knobs (``diffusion.sampling_steps``,
    ``evaluation.seed``); the architecture and the diffusion mode always come from the checkpoint.
    """
    from alphastomics.data import ProcessedData
    from alphastomics.diffusion import Diffusion

    checkpoint, data_dir, out = Path(checkpoint), Path(data_dir), Path(out)
    manifest = read_manifest(data_dir)
    want_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if want_cuda else "cpu")
    model, ckpt_cfg, ckpt = load_model(checkpoint, device)
    check_compatible(manifest, ckpt, data_dir, checkpoint)
    run_cfg = cfg or ckpt_cfg
    mode = ckpt_cfg.diffusion.mode
    steps = run_cfg.diffusion.sampling_steps
    diffusion = Diffusion(ckpt_cfg.diffusion)
    sections = list(manifest["splits"].get(split, []))
    if not sections:
        raise SampleError(f"{data_dir / 'manifest.json'}: split '{split}' has no sections; pick another --split")

    data = ProcessedData(data_dir, ckpt_cfg)
    cells_path = data_dir / "cells.parquet"
    columns_needed = ["cell_id", "section", "x", "y", "z", "cell_type", "expression"]
    truth = pq.read_table(cells_path, columns=columns_needed)
    truth_section = truth["section"].cast(pa.string())
    scale = float(manifest["coordinates"]["scale"])
    centers = manifest["coordinates"]["centers"]
    gene_mean = np.asarray(manifest["normalization"]["gene_mean"], dtype=np.float64)
    gene_std = np.asarray(manifest["normalization"]["gene_std"], dtype=np.float64)
    makes_expression = mode in ("pos_to_expr", "joint")

    parts: list[pa.Table] = []
    for i, section in enumerate(sections):
        batch = data.section_batch(section)  # the whole section, no augmentation
        seed = step_seed(run_cfg.evaluation.seed, i, 0, _SAMPLE_STREAM)
        try:
            expr, pos = _generate(model, diffusion, batch, mode, steps, seed, device)
        except torch.OutOfMemoryError:
            # Whole sections are the point (attention over every cell); rather than cropping, which would
            # change the task, fall back to the CPU for this one section.
            n = int(batch.mask.sum())
            print(f"sample: section {section} ({n} cells) does not fit in GPU memory; generating it on "
                  f"the CPU (slower, same procedure)", file=sys.stderr)
            torch.cuda.empty_cache()
            expr, pos = _generate(model.cpu(), diffusion, batch, mode, steps, seed, torch.device("cpu"))
            model.to(device)
        real = batch.mask[0].cpu()
        order = torch.argsort(batch.index[0][real].cpu())  # back to the row order of the section
        pos_np = pos[0][real][order].double().numpy()
        rows = truth.filter(pc.equal(truth_section, section))  # file order = Batch.index order
        center = np.asarray(centers[section], dtype=np.float64)
        dims = pos_np.shape[1]
        columns: dict[str, Any] = {
            "cell_id": rows["cell_id"].cast(pa.string()),
            "section": pa.array([section] * rows.num_rows, pa.string()),
            "cell_type": rows["cell_type"].cast(pa.string()),
        }
        for a, axis in enumerate("xyz"):
            true = rows[axis].to_numpy().astype(np.float64) * scale + center[a]
            pred = pos_np[:, a] * scale + center[a] if a < dims else np.zeros(rows.num_rows)
            columns[f"{axis}_true"] = pa.array(true, pa.float64())
            columns[f"{axis}_pred"] = pa.array(pred, pa.float64())
        if makes_expression:
            g = len(gene_mean)
            stored = np.asarray(rows["expression"].combine_chunks().flatten(), dtype=np.float64).reshape(-1, g)
            pred_e = expr[0][real][order].double().numpy()
            columns["expression_true"] = _fixed_list(stored * gene_std + gene_mean, g)
            columns["expression_pred"] = _fixed_list(pred_e * gene_std + gene_mean, g)
        parts.append(pa.table(columns))

    table = pa.concat_tables(parts)
    meta = {
        b"alphastomics.mode": mode.encode(),
        b"alphastomics.method": variant_name(ckpt_cfg.model).encode(),
        b"alphastomics.genes": json.dumps(manifest["genes"]).encode(),
        b"alphastomics.split": split.encode(),
        b"alphastomics.checkpoint": str(checkpoint).encode(),
    }
    table = table.replace_schema_metadata(meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out)
    return table


def _fixed_list(values: np.ndarray, g: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).ravel(), pa.float32()), g)


def main(args: Any, cfg: Config) -> int:
    """CLI entry: the stage config only supplies sampling knobs when --config/--set were given."""
    given = bool(getattr(args, "config", None) or getattr(args, "overrides", None))
    table = sample(args.checkpoint, args.data_dir, args.out, split=args.split, cfg=cfg if given else None)
    print(f"sample: {table.num_rows} cells of split '{args.split}' -> {args.out}", file=sys.stderr)
    return 0
