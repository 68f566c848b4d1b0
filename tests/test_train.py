"""The training loop: schedule and EMA by hand, gradient accumulation, non-finite losses, signal + resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from alphastomics.__main__ import main as cli
from alphastomics.artifacts import load_checkpoint
from alphastomics.config import Config, TrainConfig, load_config
from alphastomics.data.batches import ProcessedData, collate, training_batch
from alphastomics.lifecycle import TrainingError
from alphastomics.model.denoiser import Denoiser
from alphastomics.model.diffusion import Diffusion
from alphastomics.training.distributed import Dist
from alphastomics.training.train import (
    TIMING_FIELDS,
    accumulate_gradients,
    ema_decay_at,
    example_seeds,
    lr_at,
    train,
    update_ema,
)

REPO = Path(__file__).resolve().parents[1]

# A model small enough that a step takes milliseconds on one CPU core.
TINY = {
    "TransformerLayer_setting": {"d_model": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.1,
                                 "time_embed_dim": 16, "num_position_frequencies": 2},
    "data": {"max_cells": 32},
    "diffusion": {"sampling_steps": 4},
    "training": {"batch_size": 1, "max_steps": 16, "warmup_steps": 4, "val_every": 4, "val_batches": 1,
                 "checkpoint_every": 4, "log_every": 2},
}



def write_config(path: Path, **sections: dict) -> Path:
    merged = {k: dict(v) for k, v in TINY.items()}
    for key, values in sections.items():
        merged.setdefault(key, {}).update(values)
    path.write_text(yaml.safe_dump(merged))
    return path


def metric_lines(path: Path) -> list[dict]:
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    return [{k: v for k, v in rec.items() if k not in TIMING_FIELDS} for rec in lines]


# --------------------------------------------------------------------------------------------------------
# helpers by hand


def test_lr_schedule_hand_values():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(9, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert lr_at(14, cfg) == pytest.approx(0.1)
    assert lr_at(100, cfg) == pytest.approx(0.1)  # past the end it stays at the floor


def test_update_ema_formula_and_buffers():
    ema, model = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        ema.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model.weight.copy_(torch.tensor([3.0, 2.0, -1.0]))
        model.running_mean.copy_(torch.tensor([5.0, 6.0, 7.0]))
    update_ema(ema, model, decay=0.75)
    torch.testing.assert_close(ema.weight, torch.tensor([1.5, 2.0, 2.0]))  # 0.75 * e + 0.25 * p
    torch.testing.assert_close(ema.running_mean, torch.tensor([5.0, 6.0, 7.0]))  # buffers are copied


def test_ema_decay_warms_up_to_configured_value():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay_at(10**6, 0.999) == 0.999


def _grads_through_real_loss(model, diffusion, groups):
    """accumulate_gradients over ``groups`` = [(batch, example seeds)], the real Diffusion.training_losses."""
    model.zero_grad()
    out = accumulate_gradients(
        lambda batch, i: diffusion.training_losses(model, batch, example_seeds=groups[i][1]),
        [b for b, _ in groups],
    )
    return out, [p.grad.clone() for p in model.parameters()]


def test_accumulation_and_ranks_equal_one_big_batch_through_the_real_loss(tiny_processed):
    """Two micro-batches of 2, or two ranks of 2, give the loss and gradients of one batch of 4: the loss
    is a mean over sections (of each section's own mean), and every example draws its noise from its own
    seed, whatever batch (and padding) it sits in."""
    model_keys = ["dropout=0.0", "d_model=32", "num_layers=2"]
    cfg = load_config(overrides=[f"TransformerLayer_setting.{k}" for k in model_keys]
                      + ["data.max_cells=100000", "diffusion.mask_fraction=0.2"])
    data = ProcessedData(tiny_processed)
    torch.manual_seed(0)
    # float64: the two ways sum in different orders, and float32 rounding would blur the comparison.
    model = Denoiser(cfg.model, data.n_genes, data.dims).double()
    with torch.no_grad():  # leave the zero-initialised (adaLN-Zero) state, so every weight gets a gradient
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    diffusion = Diffusion(cfg.diffusion)

    def double(batch):
        batch.expression, batch.positions = batch.expression.double(), batch.positions.double()
        return batch

    def seeds(batch_size, data_step, rank=0, world_size=1):
        t = dataclasses.replace(cfg.training, batch_size=batch_size, seed=3)
        return example_seeds(t, data_step, Dist(rank, world_size, 0))

    # Examples are numbered globally: steps 0 and 1 of batch 2 (or ranks 0 and 1 of 2) hold step 0 of batch 4.
    big = double(training_batch(data, cfg.data, 4, seed=3, step=0))
    micro = [(double(training_batch(data, cfg.data, 2, seed=3, step=s)), seeds(2, s)) for s in (0, 1)]
    ranks = [(double(training_batch(data, cfg.data, 2, seed=3, step=0, rank=r, world_size=2)),
              seeds(2, 0, r, 2)) for r in (0, 1)]
    # whole sections of unequal size: padded batches
    assert [len(b.sections) for b, _ in micro] == [2, 2] and big.padded
    one, grads_one = _grads_through_real_loss(model, diffusion, [(big, seeds(4, 0))])
    for groups in (micro, ranks):
        # DDP averages the ranks' gradients: the same as accumulating their losses divided by 2.
        two, grads_two = _grads_through_real_loss(model, diffusion, groups)
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-10)
        assert two["masked"] == pytest.approx(one["masked"], rel=1e-10)
        assert all(g.abs().sum() > 0 for g in grads_one)
        for a, b in zip(grads_two, grads_one):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_loss_is_a_mean_over_sections_not_over_pooled_cells(tiny_processed):
    """A batch's loss is the mean of its sections' losses, each drawn alone: a large section weighs as
    much as a small one."""
    cfg = load_config(overrides=["TransformerLayer_setting.dropout=0.0", "TransformerLayer_setting.d_model=32",
                                 "TransformerLayer_setting.num_layers=2", "diffusion.mask_fraction=0.2"])
    data = ProcessedData(tiny_processed)
    torch.manual_seed(1)
    model = Denoiser(cfg.model, data.n_genes, data.dims).double()
    diffusion = Diffusion(cfg.diffusion)
    names = data.splits["train"][:2]
    secs = [data.section(n) for n in names]
    secs[1] = secs[1].take(np.arange(len(secs[1]) // 3))  # one section much smaller than the other
    assert len(secs[0]) != len(secs[1])
    with torch.no_grad():
        both = collate(secs)
        both.expression, both.positions = both.expression.double(), both.positions.double()
        pooled = diffusion.training_losses(model, both, example_seeds=[11, 12])
        alone = []
        for sec, seed in zip(secs, (11, 12)):
            one = collate([sec])
            one.expression, one.positions = one.expression.double(), one.positions.double()
            alone.append(diffusion.training_losses(model, one, example_seeds=[seed]))
    for key in ("loss", "position", "expression", "masked"):
        assert float(pooled[key]) == pytest.approx((float(alone[0][key]) + float(alone[1][key])) / 2, rel=1e-10)



def test_early_stopping_after_patience_validations(tiny_processed, tmp_path):
    # learning rate 0: weights and EMA never move, and the seeded validation noise repeats, so the
    # second validation cannot improve on the first.
    cfg = load_config(write_config(tmp_path / "c.yaml", training={
        "max_steps": 10, "learning_rate": 0.0, "val_every": 1, "early_stopping_patience": 1}))
    summary = train(cfg, tiny_processed, tmp_path / "run")
    val = [r["val_loss"] for r in metric_lines(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert len(val) == 2 and val[0] == val[1]
    assert summary["stopped_early"] and summary["steps"] == 2
    assert summary["best_val_step"] == 1  # where it stopped and which validation was best are recorded
    assert load_checkpoint(tmp_path / "run" / "final.pt")["step"] == 2


def test_kept_checkpoint_equals_the_final_one_of_a_shorter_run(tiny_processed, tmp_path):
    # Inside the warm-up the learning rate depends on the step alone, not on max_steps: step 3 of a 6-step
    # run and the end of a 3-step run are the same weights, EMA included. The learning-curve study scores
    # such kept checkpoints as shorter budgets.
    common = {"warmup_steps": 10, "val_every": 100, "checkpoint_every": 100}
    long = load_config(write_config(tmp_path / "a.yaml", training={
        **common, "max_steps": 6, "keep_checkpoints": [3, 5]}))
    short = load_config(write_config(tmp_path / "b.yaml", training={**common, "max_steps": 3}))
    train(long, tiny_processed, tmp_path / "long")
    train(short, tiny_processed, tmp_path / "short")
    ckpts = tmp_path / "long" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*.pt")) == ["step000003.pt", "step000005.pt"]
    kept, final = load_checkpoint(ckpts / "step000003.pt"), load_checkpoint(tmp_path / "short" / "final.pt")
    assert kept["step"] == final["step"] == 3
    for key in ("model", "ema"):
        for name, value in final[key].items():
            torch.testing.assert_close(kept[key][name], value, rtol=0, atol=0, msg=name)
    # What sample reads: the kept checkpoint rebuilds a model with the EMA weights of step 3.
    model, _, _ = Denoiser.from_checkpoint(ckpts / "step000003.pt")
    torch.testing.assert_close(dict(model.state_dict()), final["ema"], rtol=0, atol=0)

# --------------------------------------------------------------------------------------------------------
# non-finite losses


def poison_losses(monkeypatch, bad_calls):
    """Training-time calls (grad enabled) number 1, 2, ... = optimiser steps; poison those in bad_calls."""
    original = Diffusion.training_losses
    count = {"n": 0}

    def patched(self, model, batch, generator=None, **kwargs):
        out = original(self, model, batch, generator, **kwargs)
        if torch.is_grad_enabled():
            count["n"] += 1
            if bad_calls(count["n"]):
                out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Diffusion, "training_losses", patched)


def test_nonfinite_steps_are_skipped_and_counted(tiny_processed, tmp_path, monkeypatch):
    poison_losses(monkeypatch, lambda n: n in (3, 4))
    cfg = load_config(write_config(tmp_path / "c.yaml", training={"max_steps": 8, "max_nonfinite_steps": 3}))
    summary = train(cfg, tiny_processed, tmp_path / "run")
    records = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("nonfinite")] == [3, 4]
    assert summary["nonfinite_steps"] == 2 and summary["steps"] == 8
    ckpt = load_checkpoint(tmp_path / "run" / "final.pt")
    # AdamW counts its updates: the two skipped steps never reached the optimiser.
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {6}
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_repeated_nonfinite_losses_stop_with_one_line_error(tiny_processed, tmp_path, monkeypatch, capsys):
    poison_losses(monkeypatch, lambda n: n >= 5)
    config = write_config(tmp_path / "c.yaml", training={"max_steps": 20, "max_nonfinite_steps": 3,
                                                          "checkpoint_every": 2})
    out = tmp_path / "run"
    rc = cli(["train", "--config", str(config), "--data_dir", str(tiny_processed), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    assert err.startswith("error: ") and "non-finite for 3 steps in a row" in err and "latest.pt" in err
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["step"] == 4  # the last good one is kept
    assert not (out / "final.pt").exists()


# --------------------------------------------------------------------------------------------------------
# signal, resume, and the design note's command spelling


@pytest.fixture(scope="module")
def runs(tiny_processed, tmp_path_factory):
    """The same command run straight through, and run with a SIGTERM in the middle then rerun."""
    root = tmp_path_factory.mktemp("resume")
    config = write_config(root / "c.yaml")  # batch_size 1 in the file, 2 on the command line

    def argv(out: Path) -> list[str]:
        return ["train", "--config", str(config), "--data_dir", str(tiny_processed), "--out", str(out),
                "--batch_size", "2"]

    straight = root / "straight"
    assert cli(argv(straight)) == 0

    killed = root / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alphastomics.main", *argv(killed)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(ln)["step"] >= 6 for ln in lines if ln):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    interrupted_at = load_checkpoint(killed / "checkpoints" / "latest.pt")["step"]

    # A hard kill (SIGKILL, OOM killer) between two checkpoints leaves metric lines newer than the last
    # checkpoint: simulate that on a copy, then resume it too.
    hard = root / "hard"
    shutil.copytree(killed, hard)
    with (hard / "metrics.jsonl").open("a") as fh:
        for k in (1, 2):
            fh.write(json.dumps({"step": interrupted_at + k, "loss": 123.0}) + "\n")

    resumed_rc = cli(argv(killed))
    assert cli(argv(hard)) == 0
    return {"straight": straight, "killed": killed, "hard": hard, "rc": proc.returncode, "stderr": stderr,
            "interrupted_at": interrupted_at, "resumed_rc": resumed_rc, "argv": argv}


def test_sigterm_checkpoints_and_exits_143(runs):
    assert runs["rc"] == 128 + signal.SIGTERM
    assert 6 <= runs["interrupted_at"] < TINY["training"]["max_steps"]
    assert "rerun the same command to resume" in runs["stderr"]
    assert runs["resumed_rc"] == 0


def test_resumed_run_has_same_metrics_as_uninterrupted(runs):
    straight = metric_lines(runs["straight"] / "metrics.jsonl")
    assert metric_lines(runs["killed"] / "metrics.jsonl") == straight
    assert metric_lines(runs["hard"] / "metrics.jsonl") == straight
    steps = [r["step"] for r in straight if "loss" in r]
    assert steps == list(range(2, TINY["training"]["max_steps"] + 1, 2))
    assert sum("val_loss" in r for r in straight) == TINY["training"]["max_steps"] // 4
    # Gate statistics once per validation (the default variant is gated), never on a training step.
    gated = [r for r in straight if "gate_mean" in r]
    assert gated and all("val_loss" in r for r in gated)
    assert len(gated[0]["gate_mean"]) == TINY["TransformerLayer_setting"]["num_layers"]


def test_ungated_variant_runs_no_diagnostics_pass(tiny_processed, tmp_path, monkeypatch):
    import alphastomics.training.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "gate_statistics", lambda *a, **k: calls.append(1) or {"gate_mean": [0.5]})
    for gate in ("none", "headwise"):
        cfg = load_config(write_config(tmp_path / f"{gate}.yaml", training={"max_steps": 8},
                                       TransformerLayer_setting={"gate": gate}))
        calls.clear()
        train(cfg, tiny_processed, tmp_path / gate)
        # 8 steps, val_every 4: two validations; gated variants probe the gates once per validation only.
        assert len(calls) == (0 if gate == "none" else 2)


def test_resumed_run_has_same_final_weights(runs):
    a = load_checkpoint(runs["straight"] / "final.pt")
    for run in ("killed", "hard"):
        b = load_checkpoint(runs[run] / "final.pt")
        for key in ("model", "ema"):
            assert a[key].keys() == b[key].keys()
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), f"{run}: {key}.{name} differs after resume"


def test_batch_size_flag_of_the_design_note_command_wins(runs):
    cfg = load_checkpoint(runs["killed"] / "final.pt")["config"]
    assert cfg["training"]["batch_size"] == 2  # the file says 1


def test_summary_fields(runs):
    summary = json.loads((runs["straight"] / "train_summary.json").read_text())
    for key in ("params_total", "params_attention", "wall_time_s", "cells_per_s", "peak_mem_mb",
                "best_val_loss", "steps", "device", "variant"):
        assert key in summary
    assert 0 < summary["params_attention"] < summary["params_total"]
    assert summary["steps"] == TINY["training"]["max_steps"] and summary["device"] == "cpu"
    val = [r["val_loss"] for r in metric_lines(runs["straight"] / "metrics.jsonl") if "val_loss" in r]
    assert summary["best_val_loss"] == pytest.approx(min(val), rel=1e-6)


def test_rerun_after_final_exits_at_once(runs, capsys):
    before = (runs["straight"] / "metrics.jsonl").read_text()
    assert cli(runs["argv"](runs["straight"])) == 0
    assert "already exists" in capsys.readouterr().err
    assert (runs["straight"] / "metrics.jsonl").read_text() == before


def test_other_config_in_same_run_folder_is_refused(runs, tiny_processed):
    cfg = load_config(write_config(runs["straight"].parent / "other.yaml", training={"learning_rate": 1e-3}))
    with pytest.raises(TrainingError, match=r"training\.batch_size.*training\.learning_rate|learning_rate"):
        train(cfg, tiny_processed, runs["straight"])


def test_changed_config_restarts_from_scratch_when_asked(runs, tiny_processed, tmp_path):
    """The workflow reruns a job whose settings changed: its old checkpoints must not be resumed."""
    run = tmp_path / "run"
    shutil.copytree(runs["straight"], run)
    lr = 1e-3
    changed = load_config(write_config(tmp_path / "changed.yaml", training={"learning_rate": lr}))
    with pytest.raises(TrainingError, match="--restart-if-config-changed"):
        train(changed, tiny_processed, run)
    train(changed, tiny_processed, run, restart_if_config_changed=True)
    assert load_checkpoint(run / "final.pt")["config"]["training"]["learning_rate"] == lr
    fresh = tmp_path / "fresh"
    train(changed, tiny_processed, fresh)
    assert metric_lines(run / "metrics.jsonl") == metric_lines(fresh / "metrics.jsonl")


def test_checkpoint_config_is_compared_with_defaults_filled(runs, tiny_processed, tmp_path):
    """A checkpoint written before a config section existed (here: peers) is still the same run."""
    run = tmp_path / "run"
    shutil.copytree(runs["straight"], run)
    ckpt = load_checkpoint(run / "final.pt")
    del ckpt["config"]["peers"]
    torch.save(ckpt, run / "final.pt")
    cfg = load_config(write_config(tmp_path / "same.yaml", training={"batch_size": 2}))  # as `runs` ran
    assert train(cfg, tiny_processed, run) == json.loads((run / "train_summary.json").read_text())


def test_from_checkpoint_has_ema_weights(runs):
    model, cfg, ckpt = Denoiser.from_checkpoint(runs["straight"] / "final.pt")
    assert isinstance(cfg, Config) and not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][name])
    assert not all(torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])



def test_loader_workers_do_not_change_the_run(tiny_processed, tmp_path):
    """Batches come from DataLoader workers in step order, so worker count changes no number."""
    lines = []
    for workers in (0, 2):
        cfg = load_config(write_config(tmp_path / f"c{workers}.yaml", training={"max_steps": 6},
                                       data={"num_workers": workers}))
        train(cfg, tiny_processed, tmp_path / f"w{workers}")
        lines.append(metric_lines(tmp_path / f"w{workers}" / "metrics.jsonl"))
    assert lines[0] == lines[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_processed, tmp_path):
    """The same command under torchrun: gloo on CPU, rank 0 writes, both ranks finish."""
    config = write_config(tmp_path / "c.yaml", training={"max_steps": 4})
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "alphastomics", "train", "--config", str(config), "--data_dir", str(tiny_processed),
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["device"] == "cpu x 2" and summary["steps"] == 4
    assert load_checkpoint(out / "final.pt")["step"] == 4
