"""Helpers of the workflow tests (tests/test_workflow*.py): a checkout-like copy of the repository and
Snakemake runs in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from alphastomics.artifacts import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent


def make_copy(root: Path) -> Path:
    """A checkout-like copy: workflow/, config/, environment.yml, the ./slurm profile link, ../shared."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    for name in ("workflow", "config"):
        shutil.copytree(REPO / name, repo / name, symlinks=True)
    shutil.copy(REPO / "environment.yml", repo)
    (repo / "slurm").symlink_to("workflow/profiles/slurm")
    if SHARED.exists():
        (root / "shared").symlink_to(SHARED)
    return repo


def snakemake(repo: Path, *args: str, env: dict | None = None, check: bool = True):
    proc = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})},
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}; {} when nothing is to be done."""
    match = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n(?:\n|$)", output, re.S)
    if not match:
        return {}
    rows = (line.split() for line in match.group(1).splitlines())
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[0] != "total"}


def dry_run(repo: Path, *args: str) -> tuple[dict[str, int], str]:
    proc = snakemake(repo, "-n", "--cores", "2", *args)
    out = proc.stdout + proc.stderr
    return job_counts(out), out


def write_config(repo: Path, name: str, edit, sort_keys: bool = False) -> str:
    cfg = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    edit(cfg)
    (repo / "config" / name).write_text(yaml.safe_dump(cfg, sort_keys=sort_keys))
    return f"config/{name}"


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold identical model and EMA weights."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    return all(torch.equal(ca[k][n], cb[k][n]) for k in ("model", "ema") for n in ca[k])
