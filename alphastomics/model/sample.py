"""The sample stage: a trained denoiser generates every held-out section, written beside the truth.

``python -m alphastomics sample --checkpoint RUN/train/final.pt --data_dir PROC --out RUN/samples.parquet``.
The model is rebuilt from the checkpoint alone (its config, EMA weights); each section is generated whole
(attention over all of its cells, as LUNA reassembles a tissue), ``evaluation.sampling_draws`` times with its
own seed each (column ``draw``; with ``evaluation.placement: mean`` the draws are aligned and averaged into
one placement, ``mean_placement``), in the diffusion mode it was trained for:
coordinates from expression (``expr_to_pos``), expression from coordinates (``pos_to_expr``) or both
(``joint``). Outputs are mapped back to original units with the manifest of ``PROC`` (coordinates:
* scale + section centre; expression: * gene_std + gene_mean) in the "Samples" format of
``docs/architecture.md``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from alphastomics import AlphaSTomicsError
from alphastomics.artifacts import (
    check_compatible,
    read_manifest,
    samples_table,
    with_samples_meta,
    write_samples,
)
from alphastomics.config import Config, generates_expression
from alphastomics.model.denoiser import Denoiser
from alphastomics.model.placement import generate_whole, mean_placement
from alphastomics.seeds import SAMPLE_STREAM, step_seed
from alphastomics.variants import variant_name


class SampleError(AlphaSTomicsError):
    """The checkpoint and the processed data do not belong together, or the split is empty."""


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
    from alphastomics.data.batches import ProcessedData, collate, original_positions, undo_normalization
    from alphastomics.model.diffusion import Diffusion

    checkpoint, data_dir, out = Path(checkpoint), Path(data_dir), Path(out)
    manifest = read_manifest(data_dir)
    want_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if want_cuda else "cpu")
    model, ckpt_cfg, ckpt = Denoiser.from_checkpoint(checkpoint, device)
    check_compatible(manifest, ckpt, data_dir, checkpoint)
    run_cfg = cfg or ckpt_cfg
    mode = ckpt_cfg.diffusion.mode
    steps = run_cfg.diffusion.sampling_steps
    # the schedule is the checkpoint's; how to walk it (sampler, ddim_eta) is a sampling setting of this run
    diffusion = Diffusion(dataclasses.replace(ckpt_cfg.diffusion, sampler=run_cfg.diffusion.sampler,
                                              ddim_eta=run_cfg.diffusion.ddim_eta))
    sections = list(manifest["splits"].get(split, []))
    if not sections:
        where = data_dir / "manifest.json"
        raise SampleError(f"{where}: split '{split}' has no sections; pick another --split")

    data = ProcessedData(data_dir)
    wanted = ["cell_id", "section", "x", "y", "z", "cell_type", "expression"]
    truth = pq.read_table(data_dir / "cells.parquet", columns=wanted)
    truth_section = truth["section"].cast(pa.string())
    makes_expression = generates_expression(mode)

    draws, placement = run_cfg.evaluation.sampling_draws, run_cfg.evaluation.placement
    if draws < 1:
        raise SampleError(f"config: 'evaluation.sampling_draws' is {draws}; use an integer >= 1")
    parts: list[pa.Table] = []
    for i, section in enumerate(sections):
        batch = collate([data.section(section)])  # the whole section, no augmentation
        real = batch.mask[0].cpu()
        order = torch.argsort(batch.index[0][real].cpu())  # back to the row order of the section
        rows = truth.filter(pc.equal(truth_section, section))  # file order = Batch.index order
        # float64 inputs keep the mapping exact to float32 storage precision.
        dims = batch.positions.shape[-1]
        stored_pos = np.stack([rows[axis].to_numpy().astype(np.float64) for axis in "xyz"[:dims]], axis=1)
        stored = None
        if makes_expression:
            stored = np.asarray(rows["expression"].combine_chunks().flatten(), dtype=np.float64)
            stored = undo_normalization(stored.reshape(-1, len(manifest["genes"])), manifest)
        generated = []
        for k in range(draws):
            # Draw k of section i: its own seed (draw 0 is the single draw of sampling_draws = 1).
            seed = step_seed(run_cfg.evaluation.seed, i, k, SAMPLE_STREAM)
            expr, pos = generate_whole(model, diffusion, batch, mode, steps, seed, device, section)
            generated.append((expr[0][real][order].double().numpy(), pos[0][real][order].double().numpy()))
        if placement == "mean":  # one placement: the aligned mean of the draws (mean_placement)
            expr_mean = np.mean([e for e, _ in generated], axis=0)
            generated = [(expr_mean, mean_placement([p for _, p in generated]))]
        for k, (expr_np, pos_np) in enumerate(generated):
            expression: dict[str, np.ndarray] = {}
            if stored is not None:
                expression = {"expression_true": stored,
                              "expression_pred": undo_normalization(expr_np, manifest)}
            parts.append(samples_table(
                rows["cell_id"].cast(pa.string()), pa.array([section] * rows.num_rows, pa.string()),
                rows["cell_type"].cast(pa.string()), original_positions(stored_pos, section, manifest),
                original_positions(pos_np, section, manifest), **expression, draw=k,
            ))

    m = ckpt_cfg.model
    meta = {"mode": mode, "method": variant_name(m.attention, m.gate, m.qk_norm),
            "genes": json.dumps(manifest["genes"]), "split": split, "checkpoint": str(checkpoint),
            "sampling_draws": str(draws), "placement": placement}
    table = with_samples_meta(pa.concat_tables(parts), meta)
    write_samples(table, out)
    return table


def main(args: Any, cfg: Config) -> int:
    """CLI entry: the stage config only supplies sampling knobs when --config/--set were given."""
    given = bool(getattr(args, "config", None) or getattr(args, "overrides", None))
    table = sample(args.checkpoint, args.data_dir, args.out, split=args.split, cfg=cfg if given else None)
    print(f"sample: {table.num_rows} cells of split '{args.split}' -> {args.out}", file=sys.stderr)
    return 0
