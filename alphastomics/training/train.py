"""The training loop: plain PyTorch (DiT ``train.py`` / nanoGPT style), DDP when launched by torchrun.

``train(cfg, data_dir, out_dir)`` is a short loop over named steps: ``prepare_run_folder`` (what must not be
resumed), ``set_up`` (processes, seeds, data, model + EMA, optimiser, resume), then per step ``optimise``
(accumulate, clip, step, EMA), ``log_step``, ``validate`` and ``checkpoint``, and ``finish`` (summary,
final.pt). Everything a rerun needs to continue bit for bit lives in ``checkpoints/latest.pt``: the batch of
step s depends only on (seed, s, rank, world_size) and every random draw of a step is seeded from the
same tuple, so a resumed run on the CPU ends with the same metrics and weights as an uninterrupted one.
Files written are described in ``docs/architecture.md`` ("Training outputs") and ``docs/training.md``.

The run folder (paths, what must not be resumed, resume) is ``alphastomics.training.runfolder``; stop requests, the
time limit and the CPU split are ``alphastomics.lifecycle``; DDP set-up is ``alphastomics.training.distributed``.
About 500 lines, on purpose: the loop with the pieces it is made of (schedule, EMA, gradient accumulation,
step loader, validation, the session, one function per step), each short and tested on its own; moved
elsewhere they would only be imported back here.

Long because the loop's phases (set-up, optimise, validate, checkpoint, finish) read in order in one
file, as in DiT's ``train.py``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from alphastomics.artifacts import atomic_write_text, save_checkpoint
from alphastomics.config import Config, TrainConfig, to_dict
from alphastomics.lifecycle import (
    Deadline,
    Interrupted,
    SignalFlag,
    TrainingError,
    ignore_stop_signals,
    thread_split,
)
from alphastomics.model.attention import Attention
from alphastomics.model.denoiser import Denoiser, count_parameters
from alphastomics.model.gates import gate_statistics
from alphastomics.provenance import code, machine
from alphastomics.seeds import DIAG_STREAM, DROPOUT_STREAM, NOISE_STREAM, VAL_STREAM, step_seed
from alphastomics.training.distributed import Dist, setup_distributed
from alphastomics.training.runfolder import Paths, RunState, prepare_run_folder, resume, rng_state
from alphastomics.variants import variant_name

# Fields of metrics.jsonl that measure the machine, not the model: they differ between two runs of the same
# config, so reproducibility checks drop them.
TIMING_FIELDS = ("cells_per_s", "peak_mem_mb", "elapsed_s")


# --------------------------------------------------------------------------------------------------------
# Small helpers (tested one by one in tests/test_train.py)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine to min_lr_ratio * lr.

    warm-up: lr * (step + 1) / warmup_steps; after it, lr * (r + (1 - r) * (1 + cos(pi * p)) / 2) with
    p = (step - warmup) / (max_steps - warmup) and r = min_lr_ratio.
    """
    base = cfg.learning_rate
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    r = cfg.min_lr_ratio
    return base * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def ema_decay_at(step: int, decay: float) -> float:
    """min(decay, (1 + step) / (10 + step)): early EMA follows the weights; 0.999 from the start would keep
    the random initialisation in the EMA for thousands of steps, longer than a short CPU run lasts."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def accumulate_gradients(
    loss_fn: Callable[[Any, int], dict[str, torch.Tensor]],
    micro_batches: list[Any],
    sync: Callable[[bool], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Backward every micro-batch with its loss divided by their number: the gradients equal those of one
    batch holding them all, since ``Diffusion.training_losses`` is a mean over sections and draws per example
    (tests/test_train.py checks this through the real loss).

    ``loss_fn(batch, i)`` returns the diffusion loss dict; ``sync(is_last)`` is DDP's no_sync for all but the
    last micro-batch. Returns the loss terms averaged over micro-batches (nan when any was non-finite).
    """
    n = len(micro_batches)
    totals: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        ctx = sync(i == n - 1) if sync is not None else contextlib.nullcontext()
        with ctx:
            losses = loss_fn(batch, i)
            (losses["loss"] / n).backward()
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + value.detach().double() / n
    # One host sync for all terms of all micro-batches (not one per term and micro-batch).
    values = torch.stack(list(totals.values())).tolist()
    return dict(zip(totals, values))


def variant_settings(cfg: Config) -> dict[str, Any]:
    m = cfg.model
    return {
        "name": variant_name(m.attention, m.gate, m.qk_norm),
        "attention": m.attention,
        "gate": m.gate,
        "qk_norm": m.qk_norm,
        "d_model": m.d_model,
        "num_layers": m.num_layers,
        "num_heads": m.num_heads,
        "mode": cfg.diffusion.mode,
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    return batch.to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------------------
# Data: thin adapters over alphastomics.data.batches, so the loop reads as prose.


def step_loader(data: Any, cfg: Config, start: int, d: Dist, device: torch.device,
                num_workers: int | None = None) -> Iterator[list[Any]]:
    """Yields the accumulate_grad_batches micro-batches of each optimiser step from ``start`` on.

    Micro-batch k of step s is data step s * accumulate + k, so 2 micro-batches of b hold the same examples
    as one batch of 2b (alphastomics.data.batches numbers examples globally) and workers keep the step order.
    """
    from alphastomics.data.batches import TrainingBatches

    t = cfg.training
    micro = t.accumulate_grad_batches
    dataset = TrainingBatches(data, cfg.data, t.batch_size, t.seed, start_step=start * micro,
                              max_steps=t.max_steps * micro, rank=d.rank, world_size=d.world_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.data.num_workers if num_workers is None else num_workers,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
    )
    it = iter(loader)
    while True:
        group = list(itertools.islice(it, micro))
        if len(group) < micro:
            return
        yield group


# --------------------------------------------------------------------------------------------------------
# Validation and diagnostics


@torch.no_grad()
def validation_loss(model: nn.Module, diffusion: Any, batches: list[Any], seed: int, device: torch.device,
                    autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """Mean loss terms over the validation batches, each with the same seeded noise at every validation, so
    that values are comparable across steps."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for i, batch in enumerate(batches):
        gen = torch.Generator(device=device).manual_seed(step_seed(seed, i, 0, VAL_STREAM))
        with autocast():
            losses = diffusion.training_losses(model, _to_device(batch, device), generator=gen)
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(value) / len(batches)
    model.train(was_training)
    return totals


class Progress:
    """A one-line bar on a terminal, plain log lines otherwise (SLURM logs, Snakemake logs)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.tty = enabled and sys.stderr.isatty()

    def update(self, step: int, text: str, log_line: bool) -> None:
        if not self.enabled:
            return
        if self.tty:
            width = 30
            done = int(width * step / max(1, self.total))
            sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total} {text}\x1b[K")
            sys.stderr.flush()
        elif log_line:
            print(f"step {step}/{self.total} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------------------------------------
# The training run: set-up, then a loop over named steps (optimise, log, validate, checkpoint), then finish.


@dataclass
class Session:
    """What one training process holds once set up: processes, data, model, EMA, optimiser, loop state."""

    cfg: Config
    paths: Paths
    d: Dist
    device: torch.device
    use_bf16: bool
    data: Any  # alphastomics.data.batches.ProcessedData
    val_batches: list[Any]
    model: nn.Module
    ema: nn.Module
    net: nn.Module  # the model as the loss sees it: compiled and/or DDP-wrapped
    diffusion: Any  # alphastomics.model.diffusion.Diffusion
    optimizer: torch.optim.Optimizer
    state: RunState
    start_step: int

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def save(self, path: Path, step: int) -> None:
        """Everything a rerun needs to continue bit for bit (rank 0 writes)."""
        if not self.d.is_main:
            return
        save_checkpoint(
            {
                "config": to_dict(self.cfg),
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": step,
                "rng": rng_state(),
                "n_genes": self.data.n_genes,
                "dims": self.data.dims,
                "manifest": self.data.manifest,
                "world_size": self.d.world_size,
                "state": vars(self.state),
            },
            path,
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.d.is_main:
            self.paths.metrics.parent.mkdir(parents=True, exist_ok=True)
            with self.paths.metrics.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def all_ranks_max(self, values: list[float]) -> list[float]:
        if not self.d.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()


@dataclass
class StepResult:
    losses: dict[str, float]
    grad_norm: float
    lr: float
    bad: bool  # non-finite loss or gradient on some rank: the step was skipped
    signum: int  # a stop was asked for (signal number or lifecycle.TIME_LIMIT_STOP), else 0
    n_cells: int


def set_up(cfg: Config, data_dir: str | Path, paths: Paths) -> Session:
    """Processes and device, seeds, data, model + EMA, optimiser, then resume from latest.pt if there is one."""
    from alphastomics.data.batches import ProcessedData, eval_batches
    from alphastomics.model.diffusion import Diffusion

    t_cfg = cfg.training
    d, device = setup_distributed(t_cfg.device)
    use_bf16 = t_cfg.precision == "bf16" or (t_cfg.precision == "auto" and device.type == "cuda")
    # Seeds everywhere (per-step seeds in the loop make the draws independent of history).
    random.seed(t_cfg.seed + d.rank)
    np.random.seed(t_cfg.seed + d.rank)
    torch.manual_seed(t_cfg.seed)  # same initial weights on every rank
    data = ProcessedData(data_dir)
    val_batches = list(itertools.islice(eval_batches(data, "val"), t_cfg.val_batches))
    model = Denoiser.from_config(cfg, data.n_genes, data.dims).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    # AdamW, weight decay on matrices only (norm gains and biases are not shrunk).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t_cfg.learning_rate,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    start_step, state = resume(paths, cfg, d, model, ema, optimizer)
    net: nn.Module = torch.compile(model) if t_cfg.compile else model
    if d.enabled:
        # Every parameter gets a gradient in every mode (the model builds only the heads it trains), so
        # DDP needs no find_unused_parameters.
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return Session(cfg, paths, d, device, use_bf16, data, val_batches, model, ema, net, Diffusion(cfg.diffusion),
                   optimizer, state, start_step)


def optimise(s: Session, step: int, micro_batches: list[Any], flag: SignalFlag, n_cells: int) -> StepResult:
    """One optimiser step (0-based ``step``): accumulate, clip, then step + EMA, or skip it when the loss or the
    gradient is not finite on any rank (counted; a streak of them fails loudly). ``n_cells``: real cells of
    this rank's micro-batches, counted on the host."""
    t_cfg = s.cfg.training
    lr = lr_at(step, t_cfg)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    # Dropout draws from the global generator: reseed it per step so a resumed run draws the same.
    torch.manual_seed(step_seed(t_cfg.seed, step, s.d.rank, DROPOUT_STREAM))

    def loss_fn(batch: Any, k: int) -> dict[str, torch.Tensor]:
        with s.autocast():
            return s.diffusion.training_losses(
                s.net, batch, example_seeds=example_seeds(t_cfg, step * t_cfg.accumulate_grad_batches + k, s.d)
            )

    def sync(is_last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if is_last or not s.d.enabled else s.net.no_sync()

    losses = accumulate_gradients(loss_fn, micro_batches, sync)
    # clip_grad_norm_ returns the norm before it clips: the logged grad_norm is what the stability analysis
    # (alphastomics.analysis.stability) needs, not the clipped value.
    grad_norm = float(nn.utils.clip_grad_norm_(s.model.parameters(), t_cfg.gradient_clip_val))
    local_bad = 0.0 if math.isfinite(losses["loss"]) and math.isfinite(grad_norm) else 1.0
    bad, signum = s.all_ranks_max([local_bad, float(flag.stop())])
    state = s.state
    if bad:  # a non-finite loss or gradient never reaches the weights
        s.optimizer.zero_grad(set_to_none=True)
        state.nonfinite_in_row += 1
        state.nonfinite_total += 1
        s.log({"step": step + 1, "nonfinite": True, "nonfinite_in_row": state.nonfinite_in_row,
               "loss": None if not math.isfinite(losses["loss"]) else losses["loss"]})
        if state.nonfinite_in_row >= t_cfg.max_nonfinite_steps:
            kept = (f"the last good checkpoint is {s.paths.latest}" if s.paths.latest.exists()
                    else "no checkpoint yet")
            raise TrainingError(
                f"{s.paths.out}: loss or gradient non-finite for {state.nonfinite_in_row} steps in a row "
                f"(last at step {step + 1}); {kept}; lower training.learning_rate or "
                f"training.gradient_clip_val, or check the data for NaN"
            )
    else:
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        update_ema(s.ema, s.model, ema_decay_at(step, t_cfg.ema_decay))
        state.nonfinite_in_row = 0
    n_cells *= s.d.world_size
    state.cells_seen += n_cells
    return StepResult(losses, grad_norm, lr, bool(bad), int(signum), n_cells)


def example_seeds(t_cfg: TrainConfig, data_step: int, d: Dist) -> list[int]:
    """The noise seed of each example of this rank's micro-batch at ``data_step`` (optimiser step x
    accumulate + k), keyed by the example's global number as in ``alphastomics.data.batches.training_batch``: the
    same example draws the same noise whether it sits in one batch, a micro-batch or another rank's batch."""
    global_size = t_cfg.batch_size * d.world_size
    first = data_step * global_size + d.rank * t_cfg.batch_size
    return [step_seed(t_cfg.seed, first + j, 0, NOISE_STREAM) for j in range(t_cfg.batch_size)]


def log_step(s: Session, step: int, r: StepResult, cells_per_s: float, elapsed_s: float) -> None:
    """metrics.jsonl line of a logged step: losses (mean over ranks), lr, gradient norm, throughput and
    memory."""
    losses = r.losses
    if s.d.enabled:  # the mean over ranks (every rank logs at the same steps)
        keys = sorted(losses)
        summed = torch.tensor([losses[k] for k in keys], dtype=torch.float64, device=s.device)
        dist.all_reduce(summed)
        losses = {k: v / s.d.world_size for k, v in zip(keys, summed.tolist())}
    record = {"step": step, **{k: round(v, 8) for k, v in losses.items()}, "lr": r.lr,
              "grad_norm": round(r.grad_norm, 8)}
    record.update(cells_per_s=round(cells_per_s, 2), peak_mem_mb=round(peak_memory_mb(s.device), 1),
                  elapsed_s=round(elapsed_s, 3))
    s.log(record)


def validate(s: Session, step: int) -> None:
    """Validation loss of the EMA weights (what sample uses); tracks the best and the early-stopping count."""
    t_cfg, state = s.cfg.training, s.state
    val = validation_loss(s.ema, s.diffusion, s.val_batches, t_cfg.seed, s.device, s.autocast)
    record = {"step": step, **{f"val_{k}": round(v, 8) for k, v in val.items()}}
    if s.d.is_main and s.model.has_gates:
        # Gate statistics (one diagnostics forward of the first validation section, EMA weights); ungated
        # variants have none and skip the pass.
        seed = step_seed(t_cfg.seed, step, 0, DIAG_STREAM)
        record.update(gate_statistics(s.ema, s.diffusion, _to_device(s.val_batches[0], s.device), seed,
                                      s.cfg.evaluation))
    s.log(record)
    if val["loss"] < state.best_val_loss:
        state.best_val_loss, state.best_val_step, state.bad_validations = val["loss"], step, 0
    else:
        state.bad_validations += 1
    if t_cfg.early_stopping_patience and state.bad_validations >= t_cfg.early_stopping_patience:
        state.stopped_early = True


def checkpoint(s: Session, step: int, signum: int) -> None:
    """latest.pt periodically, on a stop request and on early stopping; the kept steps (learning-curve
    study) as stepNNNNNN.pt."""
    t_cfg = s.cfg.training
    # Not in a streak of non-finite steps: the checkpoint to fall back on should predate it.
    periodic = step % t_cfg.checkpoint_every == 0 and not s.state.nonfinite_in_row
    if periodic or signum or s.state.stopped_early:
        s.save(s.paths.latest, step)
    if step in t_cfg.keep_checkpoints:
        s.save(s.paths.checkpoints / f"step{step:06d}.pt", step)


def finish(s: Session, step: int) -> dict[str, Any]:
    """The summary; latest.pt, train_summary.json, then final.pt, which marks the run as done (a kill before it
    reruns from latest.pt, writing all again)."""
    state = s.state
    summary = {
        "params_total": count_parameters(s.model),
        "params_attention": count_parameters(s.model, within=Attention),
        "wall_time_s": round(state.elapsed_s, 3),
        "cells_per_s": round(state.cells_seen / max(state.elapsed_s, 1e-9), 2),
        "peak_mem_mb": round(peak_memory_mb(s.device), 1),
        "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
        "steps": step,
        "stopped_early": state.stopped_early,
        "best_val_step": state.best_val_step,
        "nonfinite_steps": state.nonfinite_total,
        "device": str(s.device) if not s.d.enabled else f"{s.device.type} x {s.d.world_size}",
        "machine": machine(),  # the report's provenance: this job's host, GPUs and torch
        "code": code(),  # the commit this run trained with (the verdict warns when runs differ)
        "variant": variant_settings(s.cfg),
    }
    if s.d.is_main:
        s.save(s.paths.latest, step)
        atomic_write_text(s.paths.summary, json.dumps(summary, indent=2) + "\n")
        s.save(s.paths.final, step)
    if s.d.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def train(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    restart_if_config_changed: bool = False,
    deadline: Deadline | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Train one variant; returns the summary (also written to out_dir/train_summary.json on rank 0).

    Rerunning resumes from ``out_dir/checkpoints/latest.pt``; a checkpoint of another config is an error,
    or, with ``restart_if_config_changed``, discarded (on rank 0) before training starts afresh. A finished
    latest.pt without final.pt (a forced rerun) is discarded too. ``deadline``: stop with a checkpoint before
    the job's time limit (Interrupted). ``num_workers`` replaces data.num_workers (same batches)."""
    t_cfg, paths = cfg.training, Paths(Path(out_dir))
    finished = prepare_run_folder(cfg, paths, restart_if_config_changed)
    if finished is not None:
        return finished
    s = set_up(cfg, data_dir, paths)
    progress = Progress(t_cfg.max_steps, enabled=s.d.is_main)
    batches = step_loader(s.data, cfg, s.start_step, s.d, s.device, num_workers)
    t_window, cells_window = time.perf_counter(), 0
    t_start_session, elapsed_before = time.perf_counter(), s.state.elapsed_s
    s.model.train()
    step = s.start_step
    with SignalFlag(deadline, t_cfg.max_steps - s.start_step) as flag:
        while step < t_cfg.max_steps:
            host = next(batches)
            n_cells = sum(int(b.mask.sum()) for b in host)  # on the host: no device sync
            r = optimise(s, step, [_to_device(b, s.device) for b in host], flag, n_cells)
            cells_window += r.n_cells
            step += 1
            if not r.bad and (step % t_cfg.log_every == 0 or step == t_cfg.max_steps):
                now = time.perf_counter()
                log_step(s, step, r, cells_window / max(now - t_window, 1e-9), elapsed_before + now - t_start_session)
                progress.update(step, f"loss {r.losses['loss']:.4f} lr {r.lr:.2e}", log_line=True)
                t_window, cells_window = now, 0
            else:
                progress.update(step, f"loss {r.losses['loss']:.4f}", log_line=False)
            if s.val_batches and (step % t_cfg.val_every == 0 or step == t_cfg.max_steps):
                validate(s, step)
            s.state.elapsed_s = elapsed_before + time.perf_counter() - t_start_session
            checkpoint(s, step, r.signum)
            if r.signum:
                progress.close()
                raise Interrupted(r.signum, step, paths.latest)
            if s.state.stopped_early:
                break
    progress.close()
    s.state.elapsed_s = elapsed_before + time.perf_counter() - t_start_session
    return finish(s, step)


def main(args: Any, cfg: Config) -> int:
    """``python -m alphastomics train --config C --data_dir PROC --out RUN/train [--batch_size N]
    [--time-limit-min M] [--threads N]``."""
    deadline = Deadline.from_minutes(getattr(args, "time_limit_min", None), getattr(args, "time_margin_min", 10.0))
    torch_threads, workers = thread_split(
        getattr(args, "threads", None), int(os.environ.get("WORLD_SIZE", "1")), cfg.data.num_workers
    )
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train: {args.threads} CPUs: {torch_threads} torch threads and {workers} data-loader "
                  f"workers per process", file=sys.stderr)
    try:
        train(cfg, args.data_dir, args.out, restart_if_config_changed=args.restart_if_config_changed,
              deadline=deadline, num_workers=workers)
    except Interrupted as stop:
        # 128 + signum is what a shell reports for a signal death, EXIT_TIME_LIMIT a stop before the time
        # limit; Snakemake then retries the job, and the same command resumes from checkpoints/latest.pt.
        if dist.is_initialized():
            dist.barrier()  # torchrun stops every rank once one exits: wait until rank 0 has saved
            dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train: {stop}; rerun the same command to resume", file=sys.stderr)
        return stop.exit_code
    return 0
