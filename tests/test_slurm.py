"""The workflow on a real SLURM cluster: the one-node cluster of tests/slurm/start.sh (slurmctld, slurmd,
slurmdbd with MariaDB, munge, on 127.0.0.1), driven by snakemake-executor-plugin-slurm through the shipped
profile (`--profile slurm`), as on a GPU cluster.

The cluster's partitions are `cpu` and `gpu` and its account `alphastomics_test`; they reach the profile
through the environment (CLUSTER_ENV), the way a user sets theirs. Its node declares 2 stand-in GPUs
(start.sh): SLURM schedules `--gpus` requests as on a GPU node and the jobs train on the CPU. Marked
`slurm`: the module starts the cluster if it is not up (root only) and skips with start.sh's reason when it
cannot; ALPHASTOMICS_REQUIRE_SLURM=1 (set by .ci/run) turns that skip into a failure.

Not in `make test` (the addopts deselect the marker): `make test-slurm` runs this file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from workflow_helpers import BIN, make_copy, same_weights, snakemake, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

SLURM_SCRIPTS = Path(__file__).resolve().parent / "slurm"
ACCOUNT = "alphastomics_test"
# What a user exports for workflow/profiles/slurm/config.yaml (it names no cluster of its own).
CLUSTER_ENV = {"ALPHASTOMICS_SLURM_ACCOUNT": ACCOUNT, "ALPHASTOMICS_CPU_PARTITION": "cpu",
               "ALPHASTOMICS_GPU_PARTITION": "gpu"}
# Status polling after 1 s instead of the plugin's 40 s.
CLUSTER_ARGS = ["--slurm-init-seconds-before-status-checks", "1"]
FAKE_CLOCK = "ALPHASTOMICS_FAKE_SECONDS_PER_STEP"  # alphastomics.lifecycle.FAKE_CLOCK_ENV


def run(*cmd: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def cluster_problem() -> str | None:
    """None when the test cluster answers (both partitions, node usable, the account known), else why not."""
    try:
        parts = run("sinfo", "-h", "-o", "%P %t")
        assoc = run("sacctmgr", "-nP", "list", "assoc", f"account={ACCOUNT}", "format=account")
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"SLURM commands do not answer ({err})"
    states = dict(line.split() for line in parts.stdout.splitlines() if len(line.split()) == 2)
    if parts.returncode != 0 or set(states) != {"cpu*", "gpu"}:
        return f"sinfo: {(parts.stderr or parts.stdout).strip()[-300:]}"
    if not all(s in ("idle", "mix", "alloc") for s in states.values()):
        return f"node not usable: {states}"
    if ACCOUNT not in assoc.stdout:
        return f"account {ACCOUNT} unknown to sacctmgr"
    return None


@pytest.fixture(scope="module")
def cluster():
    started = False
    if cluster_problem() is not None:
        proc = subprocess.run([str(SLURM_SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=1200)
        problem = cluster_problem() if proc.returncode == 0 else (
            proc.stderr.strip().splitlines() or ["start.sh failed"])[-1]
        if problem is not None:
            if os.environ.get("ALPHASTOMICS_REQUIRE_SLURM") == "1":
                pytest.fail(f"the SLURM test cluster did not start: {problem}")
            pytest.skip(f"no SLURM test cluster: {problem}")
        started = True
    yield
    if started:
        subprocess.run([str(SLURM_SCRIPTS / "stop.sh")], timeout=300)


def submitted(output: str) -> dict[str, str]:
    """SLURM job id -> Snakemake rule: the ids of the plugin's 'submitted' lines, the rule from the job's
    comment as SLURM recorded it (sacct; the plugin sets --comment rule_NAME[_wildcards_...])."""
    ids = submitted_ids(output)
    assert ids, output[-3000:]
    recorded = accounting(ids)
    rule = re.compile(r"rule_([a-z_]+?)(_wildcards_.*)?$")
    return {i: rule.match(recorded[i][-1]["Comment"]).group(1) for i in ids}


def submitted_ids(output: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def sbatch_calls(output: str) -> dict[str, list[list[str]]]:
    """The sbatch command lines the plugin ran, by rule, as argument lists (without --wrap's command)."""
    by_rule: dict[str, list[list[str]]] = {}
    for line in re.findall(r"sbatch call: (.*)", output):
        args = shlex.split(line.split(" --wrap=")[0])
        rule = re.match(r"rule_([a-z_]+?)(_wildcards_.*)?$", args[args.index("--comment") + 1]).group(1)
        by_rule.setdefault(rule, []).append(args)
    return by_rule


def accounting(job_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """What SLURM recorded of each job (sacct; every instance of a requeued job, oldest first)."""
    fields = ["JobID", "Comment", "Partition", "Account", "AllocCPUS", "ReqMem", "Timelimit", "NNodes",
              "AllocTRES", "State", "ExitCode", "Elapsed"]
    proc = run("sacct", "-X", "-D", "-P", "-n", "-j", ",".join(job_ids), "-o", ",".join(fields))
    assert proc.returncode == 0, proc.stderr
    rows: dict[str, list[dict[str, str]]] = {}
    for line in proc.stdout.splitlines():
        row = dict(zip(fields, line.split("|")))
        rows.setdefault(row["JobID"], []).append(row)
    return rows


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The tiny configuration under --profile slurm on the real cluster, gated_headwise on 2 GPUs (torchrun,
    gloo on the CPU). Train's time-limit clock reads 100 s per optimiser step (FAKE_CLOCK, so that the stop
    is at an exact step): with runtime 10 min and the margin min(10, 10 / 2) = 5 min, the first attempt of
    each train job stops with a checkpoint after step 3 of 4 and exits 75; Snakemake resubmits it with twice
    the runtime and memory, and the second attempt resumes and finishes."""
    repo = make_copy(tmp_path_factory.mktemp("slurm"))
    def edit(c):
        c["variants"]["gated_headwise"].update(gpus=2)
        c["resources"]["train"]["retry_gpu_model"] = "stand_in"  # the test node's GPU type (start.sh)

    config = write_config(repo, "slurm.yaml", edit)
    start = time.monotonic()
    proc = snakemake(repo, "--profile", "slurm", "--configfile", config, *CLUSTER_ARGS, "--verbose",
                     env={FAKE_CLOCK: "100", **CLUSTER_ENV})
    output = proc.stdout + proc.stderr
    (repo / "snakemake_output.txt").write_text(output)
    print(f"tiny workflow through SLURM: {time.monotonic() - start:.0f} s")
    return repo, config, output


def test_tiny_workflow_runs_to_the_report_through_real_slurm(slurm_run):
    repo, _, output = slurm_run
    assert (repo / "results/report.html").stat().st_size > 0
    jobs = submitted(output)
    print("SLURM jobs (id: rule):", ", ".join(f"{i}: {r}" for i, r in jobs.items()))
    # fetch_data and report are localrules; each train job twice (the stop before the limit, the retry)
    counts = {r: list(jobs.values()).count(r) for r in set(jobs.values())}
    assert counts == {"preprocess": 1, "train": 4, "sample": 2, "baseline": 1, "evaluate": 3}
    recorded = accounting(list(jobs))
    assert set(recorded) == set(jobs)
    for job_id, rule in jobs.items():
        row = recorded[job_id][-1]
        assert row["Comment"].startswith(f"rule_{rule}") and row["Account"] == ACCOUNT
        assert row["Partition"] == ("gpu" if rule in ("train", "sample") else "cpu")
        assert row["NNodes"] == "1"


def test_sbatch_lines_ask_for_what_the_rules_ask(slurm_run):
    """The plugin's sbatch lines (from its --verbose log) and what SLURM recorded (sacct) carry each rule's
    CPUs, memory, time limit and one node: config/test.yaml asks 1 CPU per GPU, 2000 MB per GPU and 10 min
    for train and sample, 1 thread, 1000 MB and 10 min for the CPU rules; retries multiply by the attempt
    and ask for the GPU type given as retry_gpu_model."""
    _, _, output = slurm_run
    by_rule = sbatch_calls(output)
    train = sorted((re.search(r"wildcards_synthetic_(\w+)_0$", option(a, "--comment")).group(1),
                    next(x for x in a if x.startswith("--gpus=")), option(a, "-t"), option(a, "--mem"))
                   for a in by_rule["train"])
    # the retries ask for the GPU type of resources.train.retry_gpu_model (a GPU out of memory needs a
    # bigger GPU, not more host memory)
    assert train == [("gated_headwise", "--gpus=2", "10", "4000"),
                     ("gated_headwise", "--gpus=stand_in:2", "20", "8000"),
                     ("linear", "--gpus=1", "10", "2000"), ("linear", "--gpus=stand_in:1", "20", "4000")]
    for args in by_rule["train"] + by_rule["sample"]:
        assert option(args, "-p") == "gpu" and option(args, "-A") == ACCOUNT
        assert "--nodes=1" in args and "--cpus-per-gpu=1" in args
        assert not any(a.startswith(("--gres", "--cpus-per-task", "--signal")) for a in args)
    for args in by_rule["sample"]:
        assert "--gpus=1" in args and option(args, "-t") == "10" and option(args, "--mem") == "2000"
    for args in by_rule["preprocess"] + by_rule["evaluate"] + by_rule["baseline"]:
        assert option(args, "-p") == "cpu" and option(args, "--mem") == "1000" and option(args, "-t") == "10"
        assert "--cpus-per-task=1" in args and not any(a.startswith("--gpus") for a in args)
    # ... and SLURM granted it: CPUs = cpus_per_gpu x GPUs, GPUs and memory in the job's TRES
    jobs = submitted(output)
    recorded = accounting(list(jobs))
    train = [recorded[i][-1] for i, r in jobs.items() if r == "train"]
    ddp = [r for r in train if "gres/gpu=2" in r["AllocTRES"]]
    assert [r["AllocCPUS"] for r in ddp] == ["2", "2"]
    assert sorted(r["ReqMem"] for r in ddp) == ["4000M", "8000M"]
    assert sorted(r["Timelimit"] for r in ddp) == ["00:10:00", "00:20:00"]


def test_train_stopped_by_its_time_limit_resumes_to_the_uninterrupted_weights(slurm_run):
    """Each train job's first attempt ended before its time limit with a checkpoint (exit 75, SLURM state
    FAILED), the retry resumed at step 3; `--forcerun train` through SLURM then retrains linear from step 0
    in one job without a time limit in sight, and its weights equal the resumed run's, bit for bit."""
    repo, config, output = slurm_run
    jobs = submitted(output)
    recorded = accounting(list(jobs))
    # The first attempts: FAILED (the Snakemake inside the job exits 1 when train exits 75), well before
    # the 10-minute limit. Snakemake prints a failed job's log (show-failed-logs), and the plugin keeps the
    # SLURM log of a failed job; the retry's log says where it resumed.
    train = [recorded[i][-1] for i, r in jobs.items() if r == "train"]
    first = [r for r in train if r["Timelimit"] == "00:10:00"]
    assert [r["State"] for r in first] == ["FAILED", "FAILED"]
    assert output.count("stopped after step 3 (the job's time limit is near)") >= 2
    for r in first:
        assert list((repo / ".snakemake/slurm_logs/rule_train").glob(f"*/{r['JobID']}.log"))
    for variant in ("linear", "gated_headwise"):
        log = (repo / f"results/logs/train/synthetic/{variant}/seed0.log").read_text()
        assert re.search(r"resuming from \S+latest\.pt at step 3\b", log), log[-2000:]
        summary = json.loads((repo / f"results/synthetic/{variant}/seed0/train" / "train_summary.json").read_text())
        assert summary["steps"] == 4
    print("ended by the time limit:", "; ".join(f"job {r['JobID']} ({r['Comment']}): {r['State']} after "
                                                f"{r['Elapsed']} of {r['Timelimit']}" for r in first))
    run_dir = repo / "results/synthetic/linear/seed0/train"
    resumed = run_dir.parent / "resumed_final.pt"
    shutil.copy(run_dir / "final.pt", resumed)

    proc = snakemake(repo, "--profile", "slurm", "--configfile", config, *CLUSTER_ARGS, "--forcerun", "train",
                     "--", "results/synthetic/linear/seed0/train/final.pt", env=CLUSTER_ENV)
    forced = submitted_ids(proc.stdout + proc.stderr)
    assert len(forced) == 1
    log = (repo / "results/logs/train/synthetic/linear/seed0.log").read_text()
    assert "training again from step 0" in log and "resuming" not in log
    assert accounting(forced)[forced[0]][-1]["State"] == "COMPLETED"
    assert same_weights(run_dir / "final.pt", resumed)
    print(f"job {forced[0]} retrained linear from step 0 without a stop: final.pt equals the resumed run's "
          "(every tensor of model and ema)")



def test_scontrol_requeue_of_a_running_train_job_resumes_it(slurm_run):
    """A train job requeued by SLURM while it trains (as after a preemption or `scontrol requeue`) gets
    SIGTERM, saves latest.pt and stops; SLURM starts the same job id again and it resumes from that
    checkpoint. A longer training (600 steps) gives the test time to requeue it mid-run."""
    repo, _, _ = slurm_run
    config = write_config(repo, "long.yaml", lambda c: c["overrides"]["training"].update(
        max_steps=600, checkpoint_every=20, log_every=10, val_every=300))
    run_dir = repo / "results/synthetic/linear/seed0/train"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **CLUSTER_ENV}
    env.pop(FAKE_CLOCK, None)
    cmd = [str(BIN / "snakemake"), "--profile", "slurm", "--configfile", config, *CLUSTER_ARGS,
           "--", "results/synthetic/linear/seed0/train/final.pt"]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        job_id, deadline = None, time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.5)
            log = run_dir / "metrics.jsonl"
            steps = [json.loads(x)["step"] for x in (log.read_text().splitlines() if log.exists() else [])
                     if '"step"' in x]
            if steps and max(steps) >= 40 and (run_dir / "checkpoints/latest.pt").exists():
                queue = run("squeue", "-h", "-t", "RUNNING", "-o", "%i %k").stdout.split("\n")
                job_id = next(x.split()[0] for x in queue if "rule_train_wildcards_synthetic_linear" in x)
                break
        assert job_id, "the train job never reached step 40"
        assert run("scontrol", "requeue", job_id).returncode == 0
        # SLURM holds a requeued batch job for 2 minutes (its BeginTime); let it start at once.
        for _ in range(60):
            if run("squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip() == "PENDING":
                break
            time.sleep(0.5)
        run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    states = [r["State"] for r in accounting([job_id])[job_id]]
    assert states == ["REQUEUED", "COMPLETED"], states
    log = (repo / "results/logs/train/synthetic/linear/seed0.log").read_text()  # the second start's
    step = int(re.search(r"resuming from \S+latest\.pt at step (\d+)", log).group(1))
    assert 40 <= step < 600
    assert json.loads((run_dir / "train_summary.json").read_text())["steps"] == 600
    ckpt = torch.load(run_dir / "final.pt", weights_only=False, map_location="cpu")
    assert ckpt["config"]["training"]["max_steps"] == 600
    print(f"job {job_id}: requeued at step >= 40 ({states}), resumed at step {step}, finished 600 steps")
