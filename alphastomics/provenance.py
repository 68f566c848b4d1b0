"""Which code and which machine produced a result: recorded by every train, sample and evaluate job.

``code()`` is the package's git commit and whether its tracked files had uncommitted changes; ``machine()``
is the host, CPU, GPUs and torch of a training job (on a cluster the report runs on a login node, which has
neither the GPUs nor, often, torch, so the job itself records them). The report's provenance block
(``alphastomics.analysis.report_provenance``) reads both back from the run folders.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

UNKNOWN_COMMIT = "unknown (not a git checkout)"


@lru_cache(maxsize=1)
def code() -> dict[str, Any]:
    """{"commit": the package's git commit or None, "dirty": tracked files differ from it} (once per process).

    A package installed without its git checkout (a wheel) has no commit: None, and no result claims one."""
    root = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": False}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=root, capture_output=True, text=True, timeout=10,
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": False}


def describe(c: dict[str, Any] | None) -> str:
    """One line for a ``code()`` record: the commit, marked when the tree was dirty."""
    if not c or not c.get("commit"):
        return UNKNOWN_COMMIT
    return c["commit"] + (" (uncommitted changes)" if c.get("dirty") else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str:
    if shutil.which("nvidia-smi"):
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if r.returncode == 0 and r.stdout.strip():
            return ", ".join(sorted(set(r.stdout.split("\n")) - {""}))
    return "none"


def machine() -> dict[str, Any]:
    """Where this process runs, as a training job records it in train_summary.json ("machine")."""
    import socket

    import torch

    cuda = torch.cuda.is_available()
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_name(),
        "gpus": sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}) if cuda else [],
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
    }


