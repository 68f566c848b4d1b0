"""Placing the cells of one tissue: generated whole on a device, and several draws made one placement.

Shared by the sample stage (held-out sections) and the reassemble stage (a lab's dissociated cells), so that
the same cells, seeds and model give the same placement in both (tests/test_reassemble.py).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch


def mean_placement(draws: list[np.ndarray], iterations: int = 3) -> np.ndarray:
    """One placement from several draws of a section: each draw centred, then rotated (or reflected) onto
    their running mean by orthogonal Procrustes (generalised Procrustes analysis), then averaged.

    A draw is a sample of where the cells may sit given their expression; where expression leaves a cell's
    position open (along a cortical layer) draws disagree, and their mean is the estimate of least squared
    error, as kNN regression's mean of neighbours is. The alignment removes what a draw may choose freely
    (orientation, handedness) so that only placement is averaged. Returned centred."""
    centred = [d - d.mean(axis=0) for d in draws]
    ref = centred[0]
    for _ in range(iterations):
        aligned = []
        for d in centred:
            u, _, vt = np.linalg.svd(d.T @ ref)
            aligned.append(d @ (u @ vt))
        ref = np.mean(aligned, axis=0)
    return ref


def _generate(model: torch.nn.Module, diffusion: Any, batch: Any, mode: str, steps: int, seed: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    batch = batch.to(device) if device.type != "cpu" else batch
    with torch.no_grad():
        expr, pos = diffusion.sample(model, batch, mode=mode, steps=steps, generator=gen)
    return expr.float().cpu(), pos.float().cpu()


def generate_whole(model: torch.nn.Module, diffusion: Any, batch: Any, mode: str, steps: int, seed: int,
                   device: torch.device, section: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``_generate`` on ``device``; a section that does not fit in GPU memory is generated on the CPU instead.

    Whole sections are the point (attention over every cell); rather than cropping, which would change the
    task, this one section falls back to the CPU (slower, same procedure, same seed)."""
    try:
        return _generate(model, diffusion, batch, mode, steps, seed, device)
    except torch.OutOfMemoryError:
        n = int(batch.mask.sum())
        print(f"section {section} ({n} cells) does not fit in GPU memory; generating it on "
              f"the CPU (slower, same procedure)", file=sys.stderr)
        torch.cuda.empty_cache()
        out = _generate(model.cpu(), diffusion, batch, mode, steps, seed, torch.device("cpu"))
        model.to(device)
        return out
