"""How a training job ends and shares its CPUs: stop requests, the time limit, failure, the CPU split.

SIGTERM / SIGUSR1 (SLURM time limit, preemption) only set a flag (``SignalFlag``) that the training loop reads
once per step; ``Deadline`` stops the run before the job's own time limit (exit ``EXIT_TIME_LIMIT``, which
Snakemake retries, and the retry resumes from ``checkpoints/latest.pt``). ``FAKE_CLOCK_ENV`` makes the clock
deterministic in tests. ``TrainingError``: training cannot continue. ``thread_split`` shares a job's CPUs
between torch threads and data-loader workers; ``limit_threads`` holds a job's numeric libraries to its CPUs;
``keep_freed_memory`` stops the C allocator from handing every freed tensor back to the kernel.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from alphastomics import AlphaSTomicsError


class TrainingError(AlphaSTomicsError):
    """Training cannot continue (non-finite losses, a run folder made by another config, ...)."""


# Exit status of a run stopped by its own time limit (Deadline): EX_TEMPFAIL, "try again". Any non-zero
# status makes Snakemake retry the job (rule train: retries), and the retry resumes from latest.pt.
EXIT_TIME_LIMIT = 75
# The stop flag's value for "time limit reached": above every signal number, so the max over ranks keeps it.
TIME_LIMIT_STOP = 1000


class Interrupted(Exception):
    """A SIGTERM/SIGUSR1 arrived or the time limit is near; the state was checkpointed and the process should
    exit (``exit_code``: 128 + signum after a signal, EXIT_TIME_LIMIT after the time limit)."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        if signum == TIME_LIMIT_STOP:
            why, self.exit_code = "the job's time limit is near", EXIT_TIME_LIMIT
        else:
            why, self.exit_code = f"signal {signal.Signals(signum).name}", 128 + signum
        super().__init__(f"stopped after step {step} ({why}); state saved to {path}")
        self.signum = signum


def ignore_stop_signals(worker_id: int) -> None:
    # SLURM signals the whole process group: a worker killed by SIGTERM would crash the main process
    # before it could checkpoint. Workers ignore it; the main process saves, exits, and takes them down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class SignalFlag:
    """SIGTERM / SIGUSR1 (SLURM time limit, preemption) only set a flag; the loop saves at the next step
    boundary, so a checkpoint is never written from inside a half-finished step. ``stop()`` (once per step)
    also reports the time limit of ``deadline``: the first line of defence, the signals being the second.

    After the last of ``steps`` steps it never asks to stop: the run then writes final.pt instead (as long
    as a checkpoint), and a finished latest.pt without final.pt always means a forced rerun."""

    def __init__(self, deadline: Deadline | None = None, steps: int | None = None) -> None:
        self.signum = 0
        self.deadline = deadline
        self.steps_left = steps
        self._previous: dict[int, Any] = {}

    def stop(self) -> int:
        """The signal number that asked to stop, TIME_LIMIT_STOP near the time limit, else 0."""
        if self.steps_left is not None:
            self.steps_left -= 1
            if self.steps_left <= 0:
                return 0
        if self.signum:
            return self.signum
        return TIME_LIMIT_STOP if self.deadline is not None and self.deadline.reached() else 0

    def __enter__(self) -> "SignalFlag":
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Environment variable for tests only: when set to N, the time limit's clock reads N seconds per optimiser
# step done by this process instead of the wall clock, so a test stops at an exact step (tests/test_slurm.py).
FAKE_CLOCK_ENV = "ALPHASTOMICS_FAKE_SECONDS_PER_STEP"


class Deadline:
    """The job's time limit: ``reached()`` turns true ``margin_s`` before it, and the loop then saves a
    checkpoint and stops (exit EXIT_TIME_LIMIT), so that a retry resumes instead of losing the work since the
    last periodic checkpoint. Signals (SignalFlag) stay as a second line.

    The clock starts when this process started (the job started a few seconds earlier: the margin covers
    that, the last step and the save). ``limit_s`` None means no limit. With FAKE_CLOCK_ENV set (tests),
    every call of ``reached()`` advances a fake clock by that many seconds instead."""

    def __init__(self, limit_s: float | None, margin_s: float, start: float | None = None) -> None:
        self.limit_s, self.margin_s = limit_s, margin_s
        if start is None:
            import psutil

            start = psutil.Process().create_time()
        self.start = start
        fake = os.environ.get(FAKE_CLOCK_ENV)
        self.fake_step_s = float(fake) if fake else None
        self.calls = 0

    @classmethod
    def from_minutes(cls, limit_min: float | None, margin_min: float) -> "Deadline":
        """At most half the limit is margin, so a short job still trains for half its time."""
        if limit_min is None:
            return cls(None, 0.0)
        return cls(60.0 * limit_min, 60.0 * min(margin_min, limit_min / 2))

    def elapsed(self) -> float:
        if self.fake_step_s is not None:
            return self.calls * self.fake_step_s
        return time.time() - self.start

    def reached(self) -> bool:
        """Called once per optimiser step (on every rank, so fake clocks agree)."""
        self.calls += 1
        if self.limit_s is None:
            return False
        return self.elapsed() >= self.limit_s - self.margin_s


def thread_split(threads: int | None, world_size: int, num_workers: int) -> tuple[int | None, int]:
    """(torch threads, data-loader workers) of each of ``world_size`` processes sharing ``threads`` CPUs.

    An explicit data.num_workers > 0 wins; otherwise a quarter of a process's CPUs load data (at most 4) and
    the rest run torch. ``threads`` None (not given) leaves torch's default and data.num_workers as they are."""
    if threads is None:
        return None, num_workers
    per_process = max(1, threads // max(1, world_size))
    workers = num_workers if num_workers > 0 else min(4, per_process // 4)
    return max(1, per_process - workers), workers


# Thread-count variables read when a library loads: OpenMP (torch, scikit-learn), BLAS builds, numba.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads(threads: int | None) -> None:
    """Run this process's numeric libraries on ``threads`` threads: torch, BLAS/OpenMP and numba.

    A SLURM job sees every core of its node but owns only its allocation; unlimited, each library starts one
    thread per core of the node, dozens on a 1-CPU job. Libraries not loaded yet read ``THREAD_ENV`` when they
    load (torch, numba and scikit-learn load only in the stages that use them); loaded ones are set here
    (threadpoolctl for BLAS/OpenMP). None leaves every default."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    for name in THREAD_ENV:
        if name == "NUMBA_NUM_THREADS" and "numba" in sys.modules:
            continue  # numba re-reads it at each compile and refuses a value other than its launched pool's
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)  # BLAS/OpenMP already loaded (numpy's); kept for the process's life
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit (4 MiB x 8 bytes).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MiB in the heap for the next allocation (True if it could).

    torch's CPU allocator has no cache of its own: every tensor is a malloc and every free a free. glibc
    serves a block above its mmap threshold (128 KiB at start, raised only as far as the largest block freed
    so far) with a fresh mmap and unmaps it when freed, and gives the heap's free top back to the kernel
    above 128 KiB. A training step's activations are allocated and freed again at every step, so each step
    page-faults them in anew and the kernel zeroes every page: 2-5 M page faults and 5-9 CPU seconds in
    the kernel per training job on the bundled data (docs/performance.md, "The C allocator"). Raising
    both thresholds keeps the memory for the next step; the peak resident memory stays that of one step.
    Data-loader workers fork from this process and inherit the setting. Elsewhere than glibc (macOS, musl)
    this does nothing and returns False."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    kept = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return bool(kept) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
