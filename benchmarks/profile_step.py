"""Where a CPU training step of the default model goes: data, forward, backward, optimiser, EMA, log-step
diagnostics; cells per CPU-second of the whole step.

    python benchmarks/profile_step.py --data results/data/bdtnp/processed [--variant linear]
        [--max-cells 256] [--batch-size 4] [--threads 1] [--steps 30]

Times are CPU times of this process (``time.process_time``; one intra-op thread by default), medians over
``--steps`` steps after 3 warm-up steps: on a machine shared with other jobs, wall-clock times measure the
neighbours as much as the code, the CPU time of a single-threaded process much less so. The step is built
from the training loop's own pieces (alphastomics.data.batches.training_batch, Diffusion.training_losses, clip +
AdamW, update_ema, gate_statistics) with config/model.yaml plus the variant's overrides from
config/config.yaml. The data set must be preprocessed (``make run`` or ``snakemake
results/data/bdtnp/processed``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from alphastomics.config import load_config
from alphastomics.data.batches import ProcessedData, training_batch
from alphastomics.model.denoiser import Denoiser
from alphastomics.model.diffusion import Diffusion
from alphastomics.model.gates import gate_statistics
from alphastomics.training.train import ema_decay_at, update_ema
from alphastomics.variants import VARIANTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--variant", default="linear")
    p.add_argument("--max-cells", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"TransformerLayer_setting.{k}={v}" for k, v in VARIANTS[args.variant].settings().items()]
    if args.max_cells:
        overrides.append(f"data.max_cells={args.max_cells}")
    if args.batch_size:
        overrides.append(f"training.batch_size={args.batch_size}")
    cfg = load_config(["config/model.yaml"], overrides)
    data = ProcessedData(args.data)
    torch.manual_seed(0)
    model = Denoiser.from_config(cfg, data.n_genes, data.dims)
    ema = copy.deepcopy(model).requires_grad_(False)
    diffusion = Diffusion(cfg.diffusion)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    phases = {k: [] for k in ("data", "forward", "backward", "clip+optimizer", "ema", "gate_statistics")}
    cells = []
    for step in range(args.steps + 3):
        t0 = time.process_time()
        batch = training_batch(data, cfg.data, cfg.training.batch_size, 0, step)
        t1 = time.process_time()
        gen = torch.Generator().manual_seed(step)
        losses = diffusion.training_losses(model, batch, generator=gen)
        t2 = time.process_time()
        losses["loss"].backward()
        t3 = time.process_time()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.process_time()
        update_ema(ema, model, ema_decay_at(step, 0.999))
        t5 = time.process_time()
        gate_statistics(model, diffusion, batch, step, cfg.evaluation)
        t6 = time.process_time()
        if step >= 3:
            for k, a, b in zip(phases, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                phases[k].append(b - a)
            cells.append(batch.num_cells)
    med = {k: statistics.median(v) * 1e3 for k, v in phases.items()}
    step_ms = sum(v for k, v in med.items() if k != "gate_statistics")
    shape = f"B={cfg.training.batch_size} x <= {cfg.data.max_cells} cells"
    print(f"{args.data}  {args.variant}  {shape}  threads {args.threads}  "
          f"({statistics.mean(cells):.0f} cells/step)")
    print(f"{'phase':<18}{'CPU ms':>9}{'share':>8}")
    for k, v in med.items():
        note = "  (log steps only)" if k == "gate_statistics" else ""
        print(f"{k:<18}{v:9.1f}{100 * v / step_ms:7.0f}%{note}")
    rate = statistics.mean(cells) / step_ms * 1e3
    print(f"{'step (no diag)':<18}{step_ms:9.1f}   cells per CPU-s {rate:,.0f}")


if __name__ == "__main__":
    main()
