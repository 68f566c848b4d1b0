#!/usr/bin/env python3
"""A fake SLURM command set for testing the workflow's slurm profile on a machine without SLURM.

One script, called through links named sbatch, srun, squeue, sacct, scontrol, sacctmgr, sinfo and scancel
(put this folder first on PATH). It answers exactly the calls snakemake-executor-plugin-slurm 2.x makes:
`sbatch --parsable ... --wrap="CMD"` records its arguments (one JSON list per line in
$FAKE_SLURM_DIR/sbatch.jsonl), starts CMD in the background in the -D folder and prints a job id; `sacct` /
`squeue` report COMPLETED / FAILED / RUNNING from the exit status the job left behind; `sacctmgr` lists
the accounts in $FAKE_SLURM_ACCOUNTS (comma-separated); `srun` drops its options and runs the command.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fake_slurm"))


def _next_id() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "counter", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the plugin submits from two threads
        fh.seek(0)
        last = int(fh.read().strip() or 1000)
        fh.seek(0)
        fh.truncate()
        fh.write(str(last + 1))
    return last + 1


def _option(args: list[str], *names: str) -> str | None:
    """Value of `--name value`, `--name=value` or `-n value`."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def sbatch(args: list[str]) -> int:
    job_id = _next_id()
    with open(STATE / "sbatch.jsonl", "a") as fh:
        fh.write(json.dumps(args) + "\n")
    wrap = _option(args, "--wrap")
    if wrap is None:
        print("fake sbatch: only --wrap is supported", file=sys.stderr)
        return 1
    out = (_option(args, "--output", "-o") or "slurm-%j.out").replace("%j", str(job_id))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    job_dir = STATE / "jobs" / str(job_id)
    job_dir.mkdir(parents=True)
    (job_dir / "name").write_text(_option(args, "--job-name", "-J") or "")
    env = {**os.environ, "SLURM_JOB_ID": str(job_id), "FAKE_SLURM_CMD": wrap, "FAKE_SLURM_RC": str(job_dir / "rc")}
    with open(out, "w") as log:
        proc = subprocess.Popen(
            ["bash", "-c", 'bash -c "$FAKE_SLURM_CMD"; echo $? > "$FAKE_SLURM_RC.tmp"; mv "$FAKE_SLURM_RC.tmp" "$FAKE_SLURM_RC"'],
            cwd=_option(args, "-D", "--chdir") or os.getcwd(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # scancel kills the whole job, like SLURM
        )
    (job_dir / "pid").write_text(str(proc.pid))
    print(job_id)
    return 0


def _states(name: str | None) -> dict[str, str]:
    states = {}
    for job_dir in sorted((STATE / "jobs").glob("*")):
        if name and (job_dir / "name").read_text() != name:
            continue
        rc = job_dir / "rc"
        if (job_dir / "cancelled").exists():
            states[job_dir.name] = "CANCELLED"
        elif rc.exists():
            states[job_dir.name] = "COMPLETED" if rc.read_text().strip() == "0" else "FAILED"
        else:
            states[job_dir.name] = "RUNNING"
    return states


def sacct(args: list[str]) -> int:
    if "-o" in args or "--format=Reason" in args or any(a.startswith("--format=Reason") for a in args):
        # account guess (`sacct -nu USER -o Account%256`) or failure reason of a job step
        if "-o" in args and _option(args, "-o", "--format", "-O").lower().startswith("account"):
            print(os.environ.get("FAKE_SLURM_ACCOUNTS", "your_account").split(",")[0])
        return 0
    for job_id, state in _states(_option(args, "--name")).items():
        print(f"{job_id}|{state}")
    return 0


def squeue(args: list[str]) -> int:
    for job_id, state in _states(_option(args, "--name")).items():
        print(f"{job_id}|{state}")
    return 0


def scancel(args: list[str]) -> int:
    for job_id in (a for a in args if a.split("_")[0].isdigit()):
        job_dir = STATE / "jobs" / job_id.split("_")[0]
        if job_dir.exists() and not (job_dir / "rc").exists():
            (job_dir / "cancelled").touch()
            try:
                os.killpg(int((job_dir / "pid").read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    return 0


def srun(args: list[str]) -> int:
    # srun -n1 --cpu-bind=q --cpus-per-task=N [--gpus=N] --nodes=1 CMD ...: every option is one word.
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1
    os.execvp(args[i], args[i:])
    return 1  # pragma: no cover


def main() -> int:
    name = Path(sys.argv[0]).name
    args = sys.argv[1:]
    if name == "sbatch":
        return sbatch(args)
    if name == "sacct":
        return sacct(args)
    if name == "squeue":
        return squeue(args)
    if name == "scancel":
        return scancel(args)
    if name == "srun":
        return srun(args)
    if name == "sacctmgr":  # sacctmgr -n -s list user USER format=account%256
        print("\n".join(os.environ.get("FAKE_SLURM_ACCOUNTS", "your_account").split(",")))
        return 0
    if name == "scontrol":  # scontrol show config
        print("MinJobAge               = 300 sec\nMaxArraySize            = 1001")
        return 0
    if name == "sinfo":  # sinfo -o %P
        print("PARTITION\ncpu*\ngpu")
        return 0
    print(f"fake_slurm: unknown command {name}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
