"""Training on a cluster: a stop before the job's time limit resumes bit for bit, a forced rerun retrains,
settings training does not read do not make its checkpoints stale, and the job's CPUs are shared out.

The time limit is made deterministic with the test-only fake clock (lifecycle.FAKE_CLOCK_ENV: N seconds per
optimiser step). The workflow-level versions are in tests/test_slurm.py (a real SLURM cluster) and
tests/test_workflow.py (Snakemake reruns).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from workflow_helpers import same_weights

from alphastomics.__main__ import main as cli
from alphastomics.artifacts import load_checkpoint
from alphastomics.config import STAGE_SETTINGS, load_config, stage_settings, to_dict
from alphastomics.lifecycle import EXIT_TIME_LIMIT, FAKE_CLOCK_ENV, Deadline, limit_threads, thread_split
from alphastomics.training.train import TIMING_FIELDS, train

TINY = {
    "TransformerLayer_setting": {"d_model": 16, "num_layers": 1, "num_heads": 2, "time_embed_dim": 16,
                                 "num_position_frequencies": 2},
    "data": {"max_cells": 32},
    "training": {"batch_size": 1, "max_steps": 8, "warmup_steps": 2, "val_every": 4, "val_batches": 1,
                 "checkpoint_every": 4, "log_every": 1},
}


def metric_lines(path: Path) -> list[str]:
    import json

    recs = [json.loads(ln) for ln in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in recs]


@pytest.fixture(scope="module")
def straight(tiny_processed, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))

    def argv(out: Path, *extra: str) -> list[str]:
        return ["train", "--config", str(config), "--data_dir", str(tiny_processed), "--out", str(out), *extra]

    out = root / "straight"
    assert cli(argv(out)) == 0
    return {"out": out, "argv": argv, "config": config, "data": tiny_processed}


# --------------------------------------------------------------------------------------------------------
# Time limit


def test_deadline_margin_is_at_most_half_the_limit():
    assert (Deadline.from_minutes(240, 10).limit_s, Deadline.from_minutes(240, 10).margin_s) == (14400, 600)
    assert Deadline.from_minutes(10, 10).margin_s == 300  # half of 10 minutes
    assert Deadline.from_minutes(None, 10).limit_s is None


def test_deadline_fake_clock_counts_steps(monkeypatch):
    monkeypatch.setenv(FAKE_CLOCK_ENV, "100")
    d = Deadline.from_minutes(10, 10)  # stop at 600 - 300 s = step 3 at 100 s per step
    assert [d.reached() for _ in range(4)] == [False, False, True, True]


def test_deadline_real_clock_counts_from_process_start():
    d = Deadline(limit_s=60.0, margin_s=10.0, start=0.0)  # started in 1970: long past its limit
    assert d.reached()
    assert not Deadline(limit_s=3600.0, margin_s=10.0).reached()


def test_time_limit_stops_with_checkpoint_then_resume_matches_uninterrupted(straight, tmp_path, monkeypatch,
                                                                              capsys):
    out = tmp_path / "limited"
    monkeypatch.setenv(FAKE_CLOCK_ENV, "100")
    assert cli(straight["argv"](out, "--time-limit-min", "10")) == EXIT_TIME_LIMIT
    err = capsys.readouterr().err
    assert "stopped after step 3 (the job's time limit is near)" in err
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["step"] == 3  # not a periodic step (4)
    assert not (out / "final.pt").exists()
    # the retry: twice the runtime (Snakemake's attempt x runtime), same fake clock
    assert cli(straight["argv"](out, "--time-limit-min", "20")) == 0
    assert "resuming from" in capsys.readouterr().err
    assert same_weights(out / "final.pt", straight["out"] / "final.pt")
    assert metric_lines(out / "metrics.jsonl") == metric_lines(straight["out"] / "metrics.jsonl")


# --------------------------------------------------------------------------------------------------------
# Forced rerun vs. resume


def test_finished_checkpoint_without_final_retrains_from_step_0(straight, tmp_path, capsys):
    """What Snakemake leaves for a forced rerun (-R/--forcerun/--force): outputs deleted, checkpoints kept.
    A resume would write the (here zeroed) weights of latest.pt as final.pt; a retrain rebuilds the run."""
    run = tmp_path / "run"
    shutil.copytree(straight["out"], run)
    latest = run / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(latest)
    for key in ("model", "ema"):
        ckpt[key] = {n: torch.zeros_like(v) for n, v in ckpt[key].items()}
    torch.save(ckpt, latest)
    (run / "final.pt").unlink()
    (run / "train_summary.json").unlink()
    assert cli(straight["argv"](run)) == 0
    err = capsys.readouterr().err
    assert "training again from step 0" in err and "starting at step 0" in err
    assert same_weights(run / "final.pt", straight["out"] / "final.pt")


def test_unfinished_checkpoint_without_final_resumes(straight, tmp_path, capsys):
    """A preempted or failed job: latest.pt short of max_steps is resumed, not retrained."""
    run = tmp_path / "run"
    shutil.copytree(straight["out"], run)
    latest = run / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(latest)
    ckpt["step"] = 7  # claims one step short; its weights are the finished ones
    torch.save(ckpt, latest)
    (run / "final.pt").unlink()
    (run / "train_summary.json").unlink()
    assert cli(straight["argv"](run)) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "at step 7" in err and "step 0" not in err
    assert load_checkpoint(run / "final.pt")["step"] == 8


# --------------------------------------------------------------------------------------------------------
# Settings training reads


def test_sampling_and_evaluation_settings_do_not_make_a_checkpoint_stale(straight, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight["out"], run)
    cfg = load_config([straight["config"]], ["diffusion.sampling_steps=7", "evaluation.num_random_references=2",
                                             "peers.knn_k=3"])
    train(cfg, straight["data"], run, restart_if_config_changed=True)
    assert "already exists" in capsys.readouterr().err
    assert same_weights(run / "final.pt", straight["out"] / "final.pt")


def test_stage_settings_split_the_config():
    full = to_dict(load_config([], []))
    train_part = stage_settings("train", full)
    assert "sampling_steps" not in train_part["diffusion"] and "mode" in train_part["diffusion"]
    assert "evaluation" not in train_part and "peers" not in train_part
    assert stage_settings("sample", full) == {
        "diffusion": {"sampling_steps": 50, "sampler": "ddim", "ddim_eta": 0.0},
        "evaluation": {"seed": 0, "sampling_draws": 1, "placement": "draws"},
    }
    assert stage_settings("evaluate", full) == {"evaluation": full["evaluation"]}
    assert stage_settings("evaluate", {"training": {"seed": 1}}) == {}  # partial blocks too
    assert set(STAGE_SETTINGS) == {"train", "sample", "evaluate", "baseline"}


# --------------------------------------------------------------------------------------------------------
# CPUs


@pytest.mark.parametrize(
    "threads, world, configured, expected",
    [
        (None, 1, 0, (None, 0)),  # not given: torch default, data.num_workers as configured
        (1, 1, 0, (1, 0)),
        (2, 1, 0, (2, 0)),  # a laptop: no workers
        (8, 1, 0, (6, 2)),  # cpus_per_gpu 8: a quarter loads data
        (16, 2, 0, (6, 2)),  # 2 GPUs x 8 CPUs: per process the same
        (32, 1, 0, (28, 4)),  # at most 4 workers
        (8, 1, 3, (5, 3)),  # an explicit data.num_workers wins
    ],
)
def test_thread_split_by_hand(threads, world, configured, expected):
    assert thread_split(threads, world, configured) == expected


LIMITS_PROBE = """
import json, sys
import numpy
from alphastomics.lifecycle import limit_threads
first, then = int(sys.argv[1]), int(sys.argv[2])
limit_threads(first)  # before torch and numba load (evaluate's order) ...
import numba, torch
from threadpoolctl import threadpool_info
limit_threads(first)  # ... and after
numba.njit(lambda x: x + 1)(1)  # numba's thread pool is up
limit_threads(then)  # a benchmark sweeping thread counts in one process
numba.njit(lambda x: x + 2)(1)  # a new compile re-reads numba's environment
print(json.dumps({"torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
                  "pools": sorted({p["num_threads"] for p in threadpool_info()})}))
"""


def test_limit_threads_holds_every_numeric_library_to_the_job(tmp_path):
    """A 1-CPU SLURM job sees the node's cores: torch, numba and BLAS/OpenMP must all run 1 thread, whether
    they load before the limit or after it, and a later limit must not break numba's next compile (a fresh
    process: the limits are process-wide)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    for first, then in [(1, 1), (2, 1)]:
        probe = subprocess.run([sys.executable, "-c", LIMITS_PROBE, str(first), str(then)], capture_output=True,
                               text=True, env=env)
        assert probe.returncode == 0, probe.stderr[-500:]
        assert json.loads(probe.stdout) == {"torch": 1, "numba": 1, "pools": [1]}
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        limit_threads(0)


ALLOCATOR_PROBE = """
import ctypes, resource, sys
from alphastomics.lifecycle import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for mib in range(1, 31):  # a block of 1, 2, ..., 30 MiB: written to, then freed (a training step's pattern)
    block = libc.malloc(mib << 20)
    libc.memset(block, 1, mib << 20)
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_freed_blocks_instead_of_faulting_them_in_again():
    """Each block is larger than the last: by default glibc maps every one afresh (465 MiB of page faults);
    kept, a block reuses the freed one's memory and only its growth faults in (30 MiB in all)."""
    faults = {}
    for mode in ("default", "tuned"):
        probe = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, mode], capture_output=True, text=True)
        assert probe.returncode == 0, probe.stderr[-500:]
        faults[mode] = int(probe.stdout)
    assert faults["tuned"] * 4 < faults["default"], faults


def test_no_stop_after_the_last_step(straight, tmp_path, monkeypatch, capsys):
    """A time limit (or a signal) at the last step finishes the run: final.pt costs what a checkpoint costs,
    and a finished latest.pt without final.pt would otherwise read as a forced rerun."""
    out = tmp_path / "limited"
    monkeypatch.setenv(FAKE_CLOCK_ENV, "100")
    # limit 26 min, margin 10: stop from 960 s on = step 10 at 100 s per step; training has 8 steps
    assert cli(straight["argv"](out, "--time-limit-min", "26")) == 0
    monkeypatch.setenv(FAKE_CLOCK_ENV, "120")  # 960 s exactly at the last step (8 x 120)
    out2 = tmp_path / "limited2"
    assert cli(straight["argv"](out2, "--time-limit-min", "26")) == 0
    assert same_weights(out2 / "final.pt", straight["out"] / "final.pt")
    monkeypatch.setenv(FAKE_CLOCK_ENV, "138")  # 966 s at step 7: stops one step short
    out3 = tmp_path / "limited3"
    assert cli(straight["argv"](out3, "--time-limit-min", "26")) == EXIT_TIME_LIMIT
    assert load_checkpoint(out3 / "checkpoints" / "latest.pt")["step"] == 7


def test_sampler_is_a_sampling_setting(straight, tmp_path):
    """sample reruns (train does not) when diffusion.sampler or ddim_eta change: it must use this run's
    values, not the checkpoint's, or the rerun would write the same samples."""
    import pyarrow.parquet as pq

    from alphastomics.model.sample import sample

    tables = {}
    for name, sets in {"ddim": [], "ancestral": ["diffusion.sampler=ancestral"],
                       "eta": ["diffusion.ddim_eta=1.0"]}.items():
        cfg = load_config([straight["config"]], ["diffusion.sampling_steps=3", *sets])
        sample(straight["out"] / "final.pt", straight["data"], tmp_path / f"{name}.parquet", split="val", cfg=cfg)
        tables[name] = pq.read_table(tmp_path / f"{name}.parquet")
    assert not tables["ancestral"].equals(tables["ddim"]) and not tables["eta"].equals(tables["ddim"])
