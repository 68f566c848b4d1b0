"""Distributed set-up: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them training is one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alphastomics.lifecycle import TrainingError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_choice: str) -> tuple[Dist, torch.device]:
    env = os.environ
    d = Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    want_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if want_cuda:
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if d.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return d, device
