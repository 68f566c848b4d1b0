"""The training run folder (``train/``: docs/architecture.md, "Training outputs"): its paths, what must not be
resumed (another config's run, a finished run whose final.pt is missing), resuming from
``checkpoints/latest.pt`` (weights, optimiser, RNG state, loop state) and the metric lines written after it.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alphastomics.artifacts import atomic_write_text, load_checkpoint
from alphastomics.config import Config, ConfigError, config_from_dict, stage_settings, to_dict
from alphastomics.lifecycle import TrainingError
from alphastomics.training.distributed import Dist


@dataclass
class RunState:
    """Loop state that is not weights: saved in checkpoints as ``state``."""

    best_val_loss: float = math.inf
    best_val_step: int = 0
    bad_validations: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    cells_seen: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False


def rng_state() -> dict[str, Any]:
    # Tensors and plain tuples only, so checkpoints load with weights_only=True (numpy arrays would not).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_difference(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _stale_config(path: Path, ckpt_cfg: dict[str, Any], cfg: Config) -> list[str]:
    """Training settings whose values differ between a checkpoint's config and ``cfg``; [] = the same run.

    Both sides are compared with defaults filled in, so a checkpoint written before a config section was
    added to the package still counts as the same run. Settings training does not read (sampling,
    evaluation, peers: config.STAGE_SETTINGS) may differ: the workflow does not rerun training for them."""
    try:
        ckpt_cfg = to_dict(config_from_dict(ckpt_cfg, source=str(path)))
    except ConfigError:
        pass  # a key this version no longer has: compare raw, which reports it as a difference
    return _config_difference(stage_settings("train", ckpt_cfg), stage_settings("train", to_dict(cfg)))


def _check_same_config(path: Path, ckpt_cfg: dict[str, Any], cfg: Config) -> None:
    diff = _stale_config(path, ckpt_cfg, cfg)
    if diff:
        raise TrainingError(
            f"{path}: written by a different config ({', '.join(diff[:5])} differ); use a new --out folder, "
            f"delete {path.parent if path.name == 'latest.pt' else path}, or pass --restart-if-config-changed"
        )


def _discard_stale_run(out_dir: Path, cfg: Config) -> None:
    """Remove checkpoints, final weights and logs that a different config wrote into ``out_dir``.

    The workflow reruns a training job when its settings change; the old checkpoints then belong to
    another experiment and must not be resumed."""
    ckpt_dir = out_dir / "checkpoints"
    for path in (out_dir / "final.pt", ckpt_dir / "latest.pt"):
        if path.exists():
            diff = _stale_config(path, load_checkpoint(path)["config"], cfg)
            if diff:
                print(f"train: {path} was written by another config ({', '.join(diff[:5])} differ); "
                      "starting this run from scratch", file=sys.stderr)
                shutil.rmtree(ckpt_dir, ignore_errors=True)
                for name in ("final.pt", "train_summary.json", "metrics.jsonl"):
                    (out_dir / name).unlink(missing_ok=True)
                return


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (a kill between two checkpoints), so
    the resumed file equals the uninterrupted one."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def _finished(path: Path) -> bool:
    ckpt = load_checkpoint(path)
    return int(ckpt["step"]) >= int(ckpt["config"]["training"]["max_steps"]) or bool(
        ckpt.get("state", {}).get("stopped_early")
    )


def _discard_finished_run(out_dir: Path) -> None:
    """A finished latest.pt without final.pt is a forced rerun: Snakemake deletes a job's outputs (final.pt)
    before it runs the job again (-R, --forcerun, --force, a changed input), whereas a preempted or failed
    job never got to final.pt and its latest.pt is short of max_steps. A forced rerun trains from step 0."""
    latest, final = out_dir / "checkpoints" / "latest.pt", out_dir / "final.pt"
    if final.exists() or not latest.exists() or not _finished(latest):
        return
    print(f"train: {latest} is a finished run but {final} is missing (a forced rerun); training again "
          "from step 0", file=sys.stderr)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in ("train_summary.json", "metrics.jsonl"):
        (out_dir / name).unlink(missing_ok=True)


@dataclass
class Paths:
    """The files of one run folder (docs/architecture.md, "Training outputs")."""

    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def final(self) -> Path:
        return self.out / "final.pt"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.out / "train_summary.json"


def prepare_run_folder(cfg: Config, paths: Paths, restart_if_config_changed: bool) -> dict[str, Any] | None:
    """Clear what must not be resumed; returns the summary of a run that is already finished, else None.

    Another config's run is discarded when asked, and a finished latest.pt without final.pt (a forced rerun)
    always; rank 0 deletes and the other ranks wait, so no rank resumes from a stale checkpoint."""
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if restart_if_config_changed:
        if rank0:
            _discard_stale_run(paths.out, cfg)
        else:
            while paths.latest.exists() and _stale_config(paths.latest, load_checkpoint(paths.latest)["config"], cfg):
                time.sleep(1)
    if rank0:
        _discard_finished_run(paths.out)
    else:
        while not paths.final.exists() and paths.latest.exists() and _finished(paths.latest):
            time.sleep(1)
    if paths.final.exists() and paths.summary.exists():
        _check_same_config(paths.final, load_checkpoint(paths.final)["config"], cfg)
        print(f"{paths.final} already exists for this config; nothing to do", file=sys.stderr)
        return json.loads(paths.summary.read_text())
    return None


def resume(paths: Paths, cfg: Config, d: Dist, model: nn.Module, ema: nn.Module,
           optimizer: torch.optim.Optimizer) -> tuple[int, RunState]:
    """(first step, loop state): from checkpoints/latest.pt when the same command runs again, else (0, new)."""
    if not paths.latest.exists():
        if d.is_main:
            print(f"train: starting at step 0 of {cfg.training.max_steps}", file=sys.stderr)
            if paths.metrics.exists():
                paths.metrics.unlink()  # a run that died before its first checkpoint starts over
        return 0, RunState()
    ckpt = load_checkpoint(paths.latest)
    _check_same_config(paths.latest, ckpt["config"], cfg)
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    _set_rng_state(ckpt["rng"])
    start_step = int(ckpt["step"])
    if d.is_main and ckpt.get("world_size", 1) != d.world_size:
        print(f"warning: {paths.latest} was written by {ckpt.get('world_size', 1)} process(es), resuming "
              f"with {d.world_size}: training continues, but not bit for bit as before", file=sys.stderr)
    if d.is_main:
        _truncate_metrics(paths.metrics, start_step)
        print(f"resuming from {paths.latest} at step {start_step}", file=sys.stderr)
    return start_step, RunState(**ckpt["state"])
