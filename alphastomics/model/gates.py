"""Gate statistics of a model on one batch: what training logs as ``gate_mean`` / ``gate_std`` per layer.

A model probe that needs no processed data beyond the batch, so training takes it from here and the
evaluation's diagnostics (``alphastomics.evaluation.diagnostics``) keep the probes that read held-out sections.
"""

from __future__ import annotations

from typing import Any

import torch

from alphastomics.config import EvalConfig
from alphastomics.model.denoiser import masked_centre
from alphastomics.model.diffusion import Diffusion


@torch.no_grad()
def gate_statistics(
    model: torch.nn.Module, diffusion: Diffusion, batch: Any, seed: int, ecfg: EvalConfig
) -> dict[str, list[float]]:
    """Gate score mean/std per layer over real cells (design note: healthy ~0.5 / ~0.2); {} without gates.

    One pass of the diagnostics path on the first example of a (training) batch, its first
    ``evaluation.diagnostics_max_cells`` cells (the path holds an N x N matrix per layer), the generated
    modality noised to ``evaluation.diagnostic_time`` as in ``model_diagnostics``.
    """
    n = ecfg.diagnostics_max_cells
    expr, pos, mask = (x[:1, :n] for x in (batch.expression, batch.positions, batch.mask))
    device = mask.device
    gen = torch.Generator(device=device).manual_seed(seed)
    t = torch.full((1,), max(1, round(ecfg.diagnostic_time * diffusion.T)), dtype=torch.long, device=device)
    in_e, t_e, in_p, t_p = diffusion.noise_generated(expr, masked_centre(pos, mask), mask, t, diffusion.cfg.mode, gen)
    was_training = model.training
    model.eval()
    *_, layers = model(in_e, in_p, t_e, mask, expression_t=t_e, position_t=t_p, return_diagnostics=True)
    model.train(was_training)
    means, stds = [], []
    for layer in layers:
        gate = layer.get("gate") if layer else None
        if gate is None:
            continue
        real = gate[mask].float()  # (cells, H or C)
        means.append(round(float(real.mean()), 6))
        stds.append(round(float(real.std()), 6))
    return {"gate_mean": means, "gate_std": stds} if means else {}
