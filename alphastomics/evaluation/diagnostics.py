"""Model diagnostics (torch): attention sinks, gate scores, attention maps and masked reconstruction.

The evaluate stage scores samples with numpy (``alphastomics.evaluation.evaluate``); this module probes a trained model
on the same held-out sections, for the report's diagnostics (DESIGN section 6, "Model diagnostics"): the
attention-sink share per layer and head, gate score statistics (design note: healthy around mean 0.5, std
0.2; the gated-attention paper: sparse, mean about 0.1) at one diffusion time and across several
(``gate_over_t``), one head's attention map for the figure, and masked-reconstruction MSE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from alphastomics.artifacts import check_compatible
from alphastomics.config import Config
from alphastomics.data.batches import ProcessedData, collate
from alphastomics.evaluation import metrics as M
from alphastomics.model.denoiser import Denoiser, masked_centre
from alphastomics.model.diffusion import Diffusion, masked_reconstruction

ATTENTION_MAP_CELLS = 256


def model_diagnostics(
    checkpoint: Path, data_dir: Path, sections: list[str], cfg: Config
) -> tuple[dict[str, Any], dict[str, np.ndarray], float]:
    """(diagnostics, attention map for the report's figure, masked-reconstruction MSE per section) on
    ``sections``; the last is empty when the model's expression head never trained.

    The model sees each section whole, or a seeded random subset of ``evaluation.diagnostics_max_cells``
    cells (attention maps are N x N), with its generated modality noised to t = ``evaluation.diagnostic_time``.

    A gated model also runs once more per section at each of ``evaluation.gate_times`` on the same cells
    (``gate_over_t``: one row per time and layer). Each time has its own generator seeded with
    ``evaluation.seed``, so every time draws the same standard-normal noise for a section (common random
    numbers: the rows differ by the noise level, not by the draw), and the passes do not touch the draws of
    the other diagnostics.
    """
    ecfg = cfg.evaluation
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, mcfg, ckpt = Denoiser.from_checkpoint(checkpoint, device)
    data = ProcessedData(data_dir)
    check_compatible(data.manifest, ckpt, data_dir, checkpoint)
    diffusion = Diffusion(mcfg.diffusion)
    mode = mcfg.diffusion.mode
    step = max(1, round(ecfg.diagnostic_time * diffusion.T))
    fraction = ecfg.masked_fraction
    # Masked reconstruction needs an expression head: built only when an expression loss trains it.
    trained_expression = model.expression_out is not None
    gen = torch.Generator(device="cpu").manual_seed(ecfg.seed)
    rng = np.random.default_rng(ecfg.seed)
    gated = model.has_gates
    gate_steps = [max(1, round(f * diffusion.T)) for f in ecfg.gate_times]
    gate_gens = [torch.Generator(device="cpu").manual_seed(ecfg.seed) for _ in gate_steps]

    sinks: list[dict[str, Any]] = []
    gates: dict[int, list[np.ndarray]] = {}
    gates_t: dict[tuple[int, int], list[np.ndarray]] = {}  # (index into gate_times, layer) -> scores
    masked: dict[str, float] = {}
    subsampled: dict[str, dict[str, int]] = {}
    attention_map: dict[str, np.ndarray] = {}
    for s in sections:
        full = data.section(s)
        whole = collate([full]).to(device)
        with torch.no_grad():
            if trained_expression:
                masked[s] = float(masked_reconstruction(model, whole, fraction, generator=gen))
        sec = full
        if len(full) > ecfg.diagnostics_max_cells:
            sec = full.take(np.sort(rng.choice(len(full), ecfg.diagnostics_max_cells, replace=False)))
            subsampled[s] = {"cells": len(full), "used": len(sec)}
        batch = collate([sec]).to(device)
        mask = batch.mask
        b = mask.shape[0]
        x_p = masked_centre(batch.positions, mask)
        t = torch.full((b,), step, dtype=torch.long, device=device)
        in_e, t_e, in_p, t_p = diffusion.noise_generated(batch.expression, x_p, mask, t, mode, gen)
        with torch.no_grad():
            *_, layers = model(
                in_e, in_p, t_e, mask, expression_t=t_e, position_t=t_p, return_diagnostics=True
            )
        m = mask.cpu().numpy()
        pos = x_p[0].float().cpu().numpy()
        best = _sink_rows(layers, m, pos, sec.cell_ids, s, sinks)
        for li, d in enumerate(layers):
            if d.get("gate") is not None:
                gates.setdefault(li, []).append(d["gate"].float().cpu().numpy()[m])
        if not attention_map:
            attention_map = _attention_map(layers, best[1], best[2], sec, pos, s, rng)
        del layers
        if gated:
            for k, (st, g) in enumerate(zip(gate_steps, gate_gens)):
                _gate_pass(model, diffusion, batch, x_p, st, g, k, gates_t)

    gate_rows = [{"layer": li, **M.gate_stats(np.concatenate(v)[None])} for li, v in sorted(gates.items())]
    gate_over_t = []
    for (k, li), v in sorted(gates_t.items()):
        st = M.gate_stats(np.concatenate(v)[None])
        gate_over_t.append(
            {"t": gate_steps[k] / diffusion.T, "step": gate_steps[k], "layer": li,
             "mean": st["mean"], "std": st["std"], "share_below": st["share_below"]}
        )
    per_layer = _sinks_per_layer(sinks)
    diag = {
        "diffusion_time": step / diffusion.T,
        "mode": mode,
        "sections": sections,
        "subsampled": subsampled,
        "masked_fraction": fraction,
        "attention_sink": per_layer,
        "attention_sink_detail": sinks,
        "gate": gate_rows,
        "gate_over_t": gate_over_t,
    }
    return diag, attention_map, masked


def _gate_pass(
    model: Denoiser, diffusion: Diffusion, batch: Any, x_p: torch.Tensor, step: int, gen: torch.Generator,
    k: int, out: dict[tuple[int, int], list[np.ndarray]],
) -> None:
    """One forward pass with the generated modality noised to integer ``step``; appends each layer's gate
    scores of real cells to ``out[(k, layer)]``. The model's only path that returns gates is the diagnostics
    one (it also builds the N x N attention matrices, dropped here)."""
    mask = batch.mask
    t = torch.full((mask.shape[0],), step, dtype=torch.long, device=mask.device)
    in_e, t_e, in_p, t_p = diffusion.noise_generated(batch.expression, x_p, mask, t, diffusion.cfg.mode, gen)
    with torch.no_grad():
        *_, layers = model(in_e, in_p, t_e, mask, expression_t=t_e, position_t=t_p, return_diagnostics=True)
    m = mask.cpu().numpy()
    for li, d in enumerate(layers):
        if d.get("gate") is not None:
            out.setdefault((k, li), []).append(d["gate"].float().cpu().numpy()[m])


def _sink_rows(layers: list[dict[str, Any]], m: np.ndarray, pos: np.ndarray, cell_ids: np.ndarray, section: str,
               out: list[dict[str, Any]]) -> tuple[float, int, int]:
    """Append one row per layer and head (the most-attended cell, its share, its radius) to ``out``; returns
    (share, layer, head) of the strongest sink, whose map the report draws."""
    radius = np.linalg.norm(pos, axis=1) / max(float(np.sqrt((pos**2).sum(axis=1).mean())), 1e-12)
    best = (-1.0, 0, 0)
    for li, d in enumerate(layers):
        attn = d["attn"].float().cpu().numpy()
        sink = M.attention_sink(attn, m)
        for h in range(attn.shape[1]):
            j = int(sink["index"][0, h])
            share = float(sink["share"][0, h])
            out.append(
                {
                    "section": section,
                    "layer": li,
                    "head": h,
                    "n_cells": int(sink["n"][0]),
                    "share": share,
                    "share_x_uniform": share * int(sink["n"][0]),
                    "cell_id": str(cell_ids[j]),
                    "cell_radius": float(radius[j]),
                }
            )
            if share > best[0]:
                best = (share, li, h)
    return best


def _sinks_per_layer(sinks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer: mean and largest sink share over heads and sections, per head, and the sinks' radius."""
    per_layer = []
    for li in sorted({r["layer"] for r in sinks}):
        rows = [r for r in sinks if r["layer"] == li]
        heads = sorted({r["head"] for r in rows})
        per_layer.append(
            {
                "layer": li,
                "share": float(np.mean([r["share"] for r in rows])),  # mean over heads and sections
                "share_max": float(np.max([r["share"] for r in rows])),
                "share_x_uniform": float(np.mean([r["share_x_uniform"] for r in rows])),
                "share_per_head": [
                    float(np.mean([r["share"] for r in rows if r["head"] == h])) for h in heads
                ],
                "sink_radius_mean": float(np.mean([r["cell_radius"] for r in rows])),
            }
        )
    return per_layer


def _attention_map(
    layers: list[dict[str, Any]],
    layer: int,
    head: int,
    sec: Any,
    pos: np.ndarray,
    section: str,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """One head's attention among <= ATTENTION_MAP_CELLS cells (rows/columns of the full-context matrix, so
    rows no longer sum to 1), the most-attended cell always included."""
    attn = layers[layer]["attn"][0, head].float().cpu().numpy()  # (N, N)
    n = attn.shape[0]
    col_share = attn.sum(axis=0) / n
    keep = np.arange(n)
    if n > ATTENTION_MAP_CELLS:
        sink = int(col_share.argmax())
        others = rng.choice(np.delete(np.arange(n), sink), ATTENTION_MAP_CELLS - 1, replace=False)
        keep = np.sort(np.r_[others, sink])
    return {
        "attn": attn[np.ix_(keep, keep)].astype(np.float32),
        "column_share": col_share[keep].astype(np.float32),
        "positions": pos[keep].astype(np.float32),
        "cell_id": np.asarray(sec.cell_ids[keep]).astype(str),
        "section": np.array(section),
        "layer": np.array(layer),
        "head": np.array(head),
    }
