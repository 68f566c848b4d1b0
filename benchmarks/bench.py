"""``python benchmarks/bench.py <what> [--quick]``: benchmarks that print tables (not tests; not shipped in
the package). docs/performance.md holds the numbers, the commands and how to read them.

``attention``: forward + backward of one attention module (d_model 256, 8 heads, batch 1) per variant of the
ablation against a naive reference that materialises the N x N matrix in float32, the way the research code
this project replaces did it. ``train-step``: a full step of the default denoiser (diffusion loss, backward,
clipping, AdamW) per variant, then the fast-path checks: the chunked pairwise-distance loss against the
unchunked one, ``torch.compile`` on/off, and data loading against the training step. ``sampling``: whole
held-out sections through the sampler at the default number of steps.

Memory on the CPU is what the allocation really costs the process: each case runs in a fresh child process
that builds its inputs, records its resident set (``VmRSS``), resets the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``) and runs once; peak = ``VmHWM`` - that baseline. On CUDA it is
``torch.cuda.max_memory_allocated`` above the memory held before the run. Every case also records the
largest tensor any operator returned (forward and backward, through a ``TorchDispatchMode``), which shows
directly whether an N x N tensor was built.

``preprocess``: a generated count matrix (200,000 cells x 500 genes in 20 sections; ``--quick`` 20,000)
written as ``.h5ad``, then ``fetch-data`` + ``preprocess`` to Parquet, then loading it back into batches.
Each step runs in a fresh child process, so its peak memory is its own: the RSS high-water mark
(``VmHWM`` of ``/proc/self/status``; ``getrusage`` ``ru_maxrss`` off Linux), set against the size of the
float32 matrix and against a child that only imports the same modules.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from alphastomics.config import Config, SyntheticConfig

# --------------------------------------------------------------------------------------------------------
# preprocess (the data engineer's benchmark, unchanged)


_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
{body}
out["seconds"] = time.perf_counter() - t0
# VmHWM (Linux) is this process's own RSS high-water mark; ru_maxrss would be inherited from the parent
# across fork + exec, so it would report the generator's memory, not ours.
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
except OSError:
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

# the modules the preprocess child imports, so "imports alone" is its fixed cost
_IMPORTS = "import alphastomics.__main__, alphastomics.data.preprocess, anndata.io, h5py, pyarrow.parquet\nout = {}"

# heavy imports happen before the clock starts: the figure is the stage's work, not Python start-up
_CLI = (
    "from alphastomics.__main__ import main\nimport alphastomics.data.preprocess, anndata.io, h5py\n"
    "t0 = time.perf_counter()\nassert main({argv!r}) == 0\nout = {{}}"
)

_LOAD = """
import numpy as np
from alphastomics.config import DataConfig
from alphastomics.data.batches import ProcessedData, eval_batches, training_batch
data = ProcessedData({proc!r}, cache_bytes=0)  # no cache: every section is read from disk
t0 = time.perf_counter()
cells = sum(b.num_cells for split in ("train", "val", "test") for b in eval_batches(data, split))
t1 = time.perf_counter()
data = ProcessedData({proc!r})  # default cache, as training uses it (first reads included)
cfg = DataConfig(max_cells=1024)
tcells = sum(training_batch(data, cfg, 8, seed=0, step=s).num_cells for s in range({steps}))
t2 = time.perf_counter()
out = {{"eval_cells_per_s": cells / (t1 - t0), "train_cells_per_s": tcells / (t2 - t1), "train_steps": {steps}}}
"""


def _child(body: str) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", _CHILD.format(body=body)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_preprocess(quick: bool) -> list[tuple[str, str]]:
    from alphastomics.data.synthetic import generate_synthetic

    n_cells, n_genes, n_sections = (20_000 if quick else 200_000), 500, 20
    per = n_cells // n_sections
    scfg = SyntheticConfig(num_sections=n_sections, min_cells=per - per // 10, max_cells=per + per // 10,
                           num_genes=n_genes, num_cell_types=8, dims=2, seed=0)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="alphastomics-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        adata = generate_synthetic(scfg)
        adata.write_h5ad(root / "cells.h5ad")
        n, g = adata.shape
        matrix_mb = n * g * 4 / 2**20
        del adata
        gen_s = time.perf_counter() - t0
        sets = ["--set", "dataset.source=h5ad", "--set", f"dataset.path={root / 'cells.h5ad'}", "--set", "dataset.name=bench"]
        base = _child(_IMPORTS)
        fetch = _child(_CLI.format(argv=["fetch-data", "--out", str(root / "raw"), *sets]))
        prep = _child(_CLI.format(argv=["preprocess", "--raw", str(root / "raw"), "--out", str(root / "proc"), *sets]))
        load = _child(_LOAD.format(proc=str(root / "proc"), steps=20))
        parquet_mb = (root / "proc" / "cells.parquet").stat().st_size / 2**20
        h5ad_mb = (root / "cells.h5ad").stat().st_size / 2**20
        rows += [
            ("data set", f"{n:,} cells x {g} genes, {n_sections} sections, counts (generated in {gen_s:.1f} s)"),
            ("float32 matrix", f"{matrix_mb:,.0f} MiB (h5ad file {h5ad_mb:,.0f} MiB, Parquet zstd {parquet_mb:,.0f} MiB)"),
            ("fetch-data (link + sha256)", f"{fetch['seconds']:.2f} s"),
            ("preprocess h5ad -> Parquet", f"{prep['seconds']:.2f} s = {n / prep['seconds']:,.0f} cells/s"),
            ("preprocess peak RSS", f"{prep['peak_rss_mb']:,.0f} MiB (imports alone {base['peak_rss_mb']:,.0f} MiB; "
                                    f"+{prep['peak_rss_mb'] - base['peak_rss_mb']:,.0f} MiB = "
                                    f"{(prep['peak_rss_mb'] - base['peak_rss_mb']) / matrix_mb:.2f} x matrix)"),
            ("load: whole sections (eval)", f"{load['eval_cells_per_s']:,.0f} cells/s (uncached, from disk)"),
            ("load: training batches", f"{load['train_cells_per_s']:,.0f} cells/s (8 x <=1024-cell crops, {load['train_steps']} steps, default cache)"),
            ("loader peak RSS", f"{load['peak_rss_mb']:,.0f} MiB"),
        ]
    return rows



def _print(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 2 + max(len(v) for _, v in rows)))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


# --------------------------------------------------------------------------------------------------------
# Machine, memory and the largest-tensor probe

THREADS = int(os.environ.get("ALPHASTOMICS_BENCH_THREADS", "2"))  # the project's CPU machine has 2 cores
NAIVE_CAP_GB = 8.0  # the naive reference is skipped where its estimated peak exceeds this (24 GB machine)
NAIVE = "naive"


def machine(device: str = "cpu") -> str:
    """One line: CPU or GPU name, cores/threads, memory, torch version, load average (shared machines)."""
    import torch

    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        what = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        what = f"{name}, {os.cpu_count()} cores, {_meminfo_gb('MemTotal'):.0f} GB RAM, torch threads {THREADS}"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{what}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}{load}"


def _meminfo_gb(key: str) -> float:
    try:
        line = next(ln for ln in open("/proc/meminfo") if ln.startswith(key + ":"))
        return int(line.split()[1]) / 2**20
    except (OSError, StopIteration):
        return float("nan")


def _status_mb(key: str) -> float:
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def largest_tensor_probe() -> Any:
    """A dispatch mode recording the largest tensor (elements) any operator allocates while it is active
    (views of existing tensors, such as a transposed weight, allocate nothing and are not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.numel, self.op = 0, ""

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if func.is_view:
                return out
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if hasattr(t, "numel") and t.numel() > self.numel:
                    self.numel, self.op = t.numel(), str(func.overloadpacket.__name__)
            return out

    return LargestTensor()


def measure(run: Callable[[], Any], device: str, repeats: int) -> dict[str, Any]:
    """Peak memory and largest tensor of the first call, then the median time of ``repeats`` more calls
    (the first call's time when repeats = 0: the largest CPU cases run once)."""
    import torch

    cuda = device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    gc.collect()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base, exact = torch.cuda.memory_allocated(), True
    else:
        base, exact = _status_mb("VmRSS"), _reset_peak_rss()
    probe = largest_tensor_probe()
    t0 = time.perf_counter()
    with probe:
        run()
    sync()
    first = time.perf_counter() - t0
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _status_mb("VmHWM") - base if exact else float("nan")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times) if times else first, "first_seconds": first, "peak_mb": peak,
            "largest": probe.numel, "largest_op": probe.op, "timed_runs": max(1, len(times))}


# --------------------------------------------------------------------------------------------------------
# The naive reference and the cases


def naive_attention_module(d_model: int, num_heads: int) -> Any:
    """Softmax attention as the research code wrote it: the explicit (B, H, N, N) float32 score matrix,
    masked, softmaxed, times V; same projections as ours, no gate, no QK-norm."""
    import torch
    from torch import nn

    class NaiveAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h, self.dh = num_heads, d_model // num_heads
            self.to_q = nn.Linear(d_model, d_model, bias=False)
            self.to_kv = nn.Linear(d_model, 2 * d_model, bias=False)
            self.to_out = nn.Linear(d_model, d_model, bias=False)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            q = self.to_q(x).view(b, n, self.h, self.dh).transpose(1, 2).float()  # (B, H, N, dh)
            k, v = (t.view(b, n, self.h, self.dh).transpose(1, 2).float() for t in self.to_kv(x).chunk(2, -1))
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.dh)  # (B, H, N, N) float32
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
            y = (scores.softmax(dim=-1) @ v).to(x.dtype)
            return self.to_out(y.transpose(1, 2).reshape(b, n, d))

    return NaiveAttention()


def naive_estimate_gb(n: int, heads: int = 8, batch: int = 1) -> float:
    """Peak of the naive forward + backward: about four live (B, H, N, N) float32 matrices (scores, masked
    scores, softmax kept for backward, its gradient)."""
    return 4 * batch * heads * n * n * 4 / 1e9


def _variant(name: str) -> Any:
    from alphastomics.config import ModelConfig
    from alphastomics.model.denoiser import variant_config

    return variant_config(ModelConfig(), name)


def _autocast(spec: dict[str, Any]) -> Any:
    import contextlib

    import torch

    if spec.get("dtype") == "bfloat16":
        return torch.autocast(device_type=spec["device"], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch(n: int, b: int, g: int, dims: int, device: str, seed: int = 0) -> Any:
    import torch

    from alphastomics.data.batches import Batch

    gen = torch.Generator().manual_seed(seed)
    expr, pos = torch.randn(b, n, g, generator=gen), torch.randn(b, n, dims, generator=gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    idx = torch.arange(n).expand(b, n).clone()
    return Batch(expr, pos, mask, idx).to(device)


def build_attention(spec: dict[str, Any]) -> Callable[[], Any]:
    """One attention module, forward + backward (input gradient too, as inside the network)."""
    import torch

    from alphastomics.model.attention import Attention

    cfg, device = _variant("linear"), spec["device"]
    module = naive_attention_module(cfg.d_model, cfg.num_heads) if spec["variant"] == NAIVE else Attention(
        _variant(spec["variant"]))
    module.to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], spec["n"], cfg.d_model, generator=gen).to(device).requires_grad_(True)
    grad = torch.randn(x.shape, generator=gen).to(device)
    mask = torch.ones(spec["batch"], spec["n"], dtype=torch.bool, device=device)

    def run() -> None:
        with _autocast(spec):
            y = module(x, mask)
        y.backward(grad.to(y.dtype))

    return run


def build_train_step(spec: dict[str, Any]) -> Callable[[], Any]:
    """A full optimiser step of the default denoiser (bdtnp-sized heads: 84 genes, 3D), as train.py does it."""
    import torch

    from alphastomics.config import DiffusionConfig, TrainConfig
    from alphastomics.model.denoiser import Denoiser
    from alphastomics.model.diffusion import Diffusion

    device, t_cfg = spec["device"], TrainConfig()
    model = Denoiser(_variant(spec["variant"]), 84, 3).to(device).train()
    net = torch.compile(model) if spec.get("compile") else model
    diffusion = Diffusion(DiffusionConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=t_cfg.learning_rate, betas=(0.9, 0.95), fused=device == "cuda")
    batch = _batch(spec["n"], spec["batch"], 84, 3, device)
    gen = torch.Generator(device=device).manual_seed(0)

    def run() -> None:
        with _autocast(spec):
            losses = diffusion.training_losses(net, batch, generator=gen)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.gradient_clip_val)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def build_distance_loss(spec: dict[str, Any]) -> Callable[[], Any]:
    """The position loss alone (forward + backward), chunked as configured or in one chunk of N rows."""
    import torch

    from alphastomics.model.diffusion import pairwise_distance_mse

    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(1, spec["n"], 3, generator=gen).to(spec["device"]).requires_grad_(True)
    true = torch.randn(1, spec["n"], 3, generator=gen).to(spec["device"])
    mask = torch.ones(1, spec["n"], dtype=torch.bool, device=spec["device"])
    return lambda: pairwise_distance_mse(pred, true, mask, spec["chunk"]).backward()


def build_sampling(spec: dict[str, Any]) -> Callable[[], Any]:
    """``Diffusion.sample`` over one whole section (expr_to_pos, DDIM), ``steps`` model calls."""
    import torch

    from alphastomics.config import DiffusionConfig
    from alphastomics.model.denoiser import Denoiser
    from alphastomics.model.diffusion import Diffusion

    device = spec["device"]
    model = Denoiser(_variant(spec["variant"]), 84, 3).to(device).eval()
    diffusion = Diffusion(DiffusionConfig())
    batch = _batch(spec["n"], 1, 84, 3, device)

    def run() -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        with _autocast(spec):
            diffusion.sample(model, batch, steps=spec["steps"], generator=gen)

    return run


BUILDERS: dict[str, Callable[[dict[str, Any]], Callable[[], Any]]] = {
    "attention": build_attention, "train-step": build_train_step, "distance-loss": build_distance_loss,
    "sampling": build_sampling,
}


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Build and measure one case in this process."""
    import torch

    spec = {"device": "cpu", "threads": THREADS, **spec}
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    build = BUILDERS[spec["kind"]]
    if not spec.get("compile"):
        # One call at a tiny size first: library start-up (thread pools, kernel selection, autograd engine)
        # costs ~80 MB once per process and is not the case's memory. Compiled cases keep it in "first step".
        build({**spec, "n": min(spec["n"], 16), "batch": 1, "steps": 1})()
        gc.collect()
    run = build(spec)
    first = {}
    if spec.get("compile"):
        # Compile outside the probe: under an active TorchDispatchMode dynamo runs the model eagerly, and the
        # compilation would land in a timed run instead.
        t0 = time.perf_counter()
        run()
        first = {"first_seconds": time.perf_counter() - t0}
    return {**measure(run, spec["device"], spec.get("repeats", 0)), **first}


_CASE_CHILD = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
               "from bench import run_case; print(json.dumps(run_case(json.loads(sys.argv[1]))))")


def child_env() -> dict[str, str]:
    # Spinning OpenMP workers (the default ACTIVE policy) wait for a core their partner holds when the
    # machine is shared: at load 8 on 2 cores a 2-thread step ran 5-10x slower than a 1-thread one.
    # PASSIVE waiting removes that; a policy set by the user wins.
    return {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}


def run_case_in_child(spec: dict[str, Any], timeout_s: float = 900.0,
                      env: dict[str, str] | None = None) -> dict[str, Any]:
    """``run_case`` in a fresh process (its own memory high-water mark); {"error": "OOM" | text} on failure."""
    spec = {"device": "cpu", "threads": THREADS, **spec}
    try:
        res = subprocess.run([sys.executable, "-c", _CASE_CHILD, json.dumps(spec)], capture_output=True,
                             text=True, timeout=timeout_s, env={**child_env(), **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout_s:.0f} s"}
    if res.returncode == -9 or "out of memory" in res.stderr.lower() or "DefaultCPUAllocator" in res.stderr:
        return {"error": "OOM"}
    if res.returncode != 0:
        raise RuntimeError(f"benchmark case {spec} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------
# Tables


def table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(headers))
    return "\n".join([f"\n{title}", rule, line(headers), rule, *(line(r) for r in rows)])


def _ms(r: dict[str, Any]) -> str:
    return r.get("error") or f"{r['seconds'] * 1e3:,.0f}"


def _mb(r: dict[str, Any]) -> str:
    return "" if "error" in r else f"{r['peak_mb']:,.0f}"


def _ratio(a: dict[str, Any], b: dict[str, Any] | None, key: str) -> str:
    if b is None or "error" in a or "error" in b or not b[key] or b[key] != b[key]:
        return "-"
    return f"{a[key] / b[key]:.2f}"


def _largest(r: dict[str, Any], n: int) -> str:
    """Largest allocated tensor in elements and as a multiple of N^2 (an N x N x H matrix reads H)."""
    if "error" in r:
        return ""
    return f"{r['largest'] / 1e6:,.1f}M = {r['largest'] / n**2:.3g} N^2 ({r['largest_op']})"


def attention_rows(sizes: list[int], variants: list[str], repeats: Callable[[int], int],
                   run: Callable[[dict[str, Any]], dict[str, Any]], cap_gb: float, **extra: Any) -> list[list[str]]:
    """Per N: the naive reference (or why it was skipped), then each variant with ours/naive ratios."""
    rows = []
    for n in sizes:
        est = naive_estimate_gb(n)
        base = {"kind": "attention", "n": n, "batch": 1, "repeats": repeats(n), **extra}
        naive = run({**base, "variant": NAIVE}) if est <= cap_gb else {
            "error": f"skipped (est. {est:.0f} GB > {cap_gb:.0f} GB cap)"}
        rows.append([f"{n:,}", NAIVE, _ms(naive), _mb(naive), _largest(naive, n), "1.00" if "error" not in naive else "-",
                     "1.00" if "error" not in naive else "-"])
        for v in variants:
            r = run({**base, "variant": v})
            rows.append([f"{n:,}", v, _ms(r), _mb(r), _largest(r, n), _ratio(r, naive, "seconds"),
                         _ratio(r, naive, "peak_mb")])
    return rows


ATTENTION_HEADERS = ["N", "variant", "fwd+bwd ms", "peak MiB", "largest tensor (op)", "time vs naive",
                     "memory vs naive"]


Runner = Callable[[dict[str, Any]], dict[str, Any]]


def bench_attention(quick: bool, run: Runner | None = None) -> str:
    from alphastomics.variants import VARIANTS as ABLATION_VARIANTS

    run = run or run_case_in_child
    sizes = [64, 256] if quick else [256, 1024, 4096, 16384]
    cap = min(NAIVE_CAP_GB, _meminfo_gb("MemAvailable") / 2)
    rows = attention_rows(sizes, list(ABLATION_VARIANTS), lambda n: 0 if n > 4096 else (2 if n == 4096 else 5),
                          run, cap)
    return table(f"bench attention{' --quick' if quick else ''}: one attention module (d_model 256, 8 heads, batch 1), "
                 "forward + backward, float32; peak = RSS high-water mark above the built inputs, fresh process "
                 f"per case; naive skipped above {cap:.0f} GB estimated", ATTENTION_HEADERS, rows)


def bench_train_step(quick: bool) -> str:
    """The train-step table, then the fast-path checks (distance loss, compile, loading)."""
    return "\n".join([train_step_table(quick), bench_distance_loss(quick), bench_compile(quick), bench_loader(quick)])


def train_step_table(quick: bool, run: Runner | None = None) -> str:
    from alphastomics.variants import VARIANTS as ABLATION_VARIANTS

    run = run or run_case_in_child
    sizes = [64, 128] if quick else [1024, 4096]
    rows = []
    for n in sizes:
        for v in ABLATION_VARIANTS:
            r = run({"kind": "train-step", "variant": v, "n": n, "batch": 1, "repeats": 0 if n >= 4096 else 2})
            cps = "-" if "error" in r else f"{n / r['seconds']:,.0f}"
            rows.append([f"{n:,}", v, _ms(r), cps, _mb(r), _largest(r, n)])
    return table(f"bench train-step{' --quick' if quick else ''}: default denoiser (6 layers, d_model 256, 8 heads; "
                 "84 genes, 3D, expr_to_pos), one section of N cells, loss + backward + clip + AdamW, float32",
                 ["N", "variant", "step ms", "cells/s", "peak MiB", "largest tensor (op)"], rows)


def bench_distance_loss(quick: bool, run: Runner | None = None) -> str:
    from alphastomics.config import DiffusionConfig

    run = run or run_case_in_child
    chunk = DiffusionConfig().distance_chunk_size
    sizes = [256, 512] if quick else [1024, 4096, 16384]
    q_chunk = 128 if quick else chunk
    cap = min(NAIVE_CAP_GB, _meminfo_gb("MemAvailable") / 2)
    rows = []
    for n in sizes:
        for c in sorted({min(q_chunk, n), n}):
            est = 12 * n * n * 4 / 1e9 if c == n else 0.0  # ~12 float32 temporaries per pair unchunked
            r = run({"kind": "distance-loss", "n": n, "chunk": c, "repeats": 1}) if est <= cap else {
                "error": f"skipped (est. {est:.0f} GB > {cap:.0f} GB cap)"}
            rows.append([f"{n:,}", f"{c:,}" + (" (unchunked)" if c >= n else ""), _ms(r), _mb(r), _largest(r, n)])
    return table(f"pairwise-distance position loss, forward + backward (default diffusion.distance_chunk_size = {chunk})",
                 ["N", "chunk rows", "ms", "peak MiB", "largest tensor (op)"], rows)


def bench_compile(quick: bool) -> str:
    """torch.compile of the denoiser (training.compile) against eager, default variant."""
    n = 128 if quick else 1024
    rows = []
    if quick:
        return table("torch.compile: skipped under --quick (compiling takes minutes on 2 cores)", ["-"], [])
    for compiled in (False, True):
        # A fresh inductor cache: otherwise a previous run's compiled kernels make the first step look cheap.
        with tempfile.TemporaryDirectory(prefix="alphastomics-inductor-") as cache:
            r = run_case_in_child({"kind": "train-step", "variant": "gated_headwise", "n": n, "batch": 1,
                                   "repeats": 3, "compile": compiled}, env={"TORCHINDUCTOR_CACHE_DIR": cache})
        rows.append(["compiled" if compiled else "eager", f"{r['first_seconds']:.1f}", _ms(r), f"{n / r['seconds']:,.0f}",
                     _mb(r)])
    return table(f"torch.compile (training.compile), default variant, train step at N = {n:,}; median of 3 steps "
                 "after the first; first step = compilation with an empty inductor cache", ["mode", "first step s", "step ms", "cells/s", "peak MiB"], rows)


_LOADER = """
import json, sys, time, torch
from alphastomics.config import Config
from alphastomics.data.batches import ProcessedData, TrainingBatches
torch.set_num_threads({threads})
cfg = Config()
data = ProcessedData({proc!r})
out = {{}}
for workers in (0, 2):
    loader = torch.utils.data.DataLoader(TrainingBatches(data, cfg.data, cfg.training.batch_size, seed=0), batch_size=None,
                                         num_workers=workers)
    it = iter(loader)
    first = next(it)  # worker start-up and first reads excluded
    t0 = time.perf_counter()
    cells = sum(next(it).num_cells for _ in range({batches}))
    out[workers] = {{"batches_per_s": {batches} / (time.perf_counter() - t0), "cells_per_batch": cells / {batches}}}
print(json.dumps(out))
"""


def bench_loader(quick: bool) -> str:
    """Training batches/s from ``data.TrainingBatches`` (0 and 2 workers) against the step they feed."""
    from alphastomics.__main__ import main as cli

    cfg = Config()
    b, max_cells = cfg.training.batch_size, cfg.data.max_cells
    cells = (200, 300) if quick else (3000, 5000)
    with tempfile.TemporaryDirectory(prefix="alphastomics-bench-") as tmp:
        sets = ["--set", "dataset.source=synthetic", "--set", "dataset.name=bench", "--set",
                "dataset.synthetic.num_sections=8", "--set", f"dataset.synthetic.min_cells={cells[0]}",
                "--set", f"dataset.synthetic.max_cells={cells[1]}", "--set", "dataset.synthetic.num_genes=84"]
        raw, proc = Path(tmp) / "raw", Path(tmp) / "proc"
        with contextlib.redirect_stdout(io.StringIO()):  # the stages' one-line reports are not the table
            assert cli(["fetch-data", "--out", str(raw), *sets]) == 0
            assert cli(["preprocess", "--raw", str(raw), "--out", str(proc), *sets]) == 0
        res = subprocess.run([sys.executable, "-c", _LOADER.format(threads=THREADS, proc=str(proc),
                                                                   batches=10 if quick else 40)],
                             capture_output=True, text=True, env=child_env())
        if res.returncode != 0:
            raise RuntimeError(f"loader benchmark failed:\n{res.stderr[-2000:]}")
        load = json.loads(res.stdout.strip().splitlines()[-1])
    n = min(max_cells, cells[1])
    step = run_case_in_child({"kind": "train-step", "variant": "gated_headwise", "n": 64 if quick else n,
                              "batch": b, "repeats": 1})
    rows = [[f"loader, {w} workers", f"{v['batches_per_s']:.1f}", f"{v['cells_per_batch']:,.0f}"]
            for w, v in load.items()]
    rows.append([f"train step, B = {b} x {64 if quick else n} cells (default variant)", f"{1 / step['seconds']:.2f}", ""])
    return table(f"data loading vs training step (synthetic sections of {cells[0]:,}-{cells[1]:,} cells, "
                 f"crops of <= {max_cells} cells, batch {b}, default data config)",
                 ["", "batches/s", "cells/batch"], rows)


def bench_sampling(quick: bool, run: Runner | None = None) -> str:
    from alphastomics.config import DiffusionConfig

    run = run or run_case_in_child
    steps = DiffusionConfig().sampling_steps
    plan = [(100, 2)] if quick else [(1000, steps), (5000, 5)]
    rows = []
    for n, timed in plan:
        for v in ("linear", "gated_headwise"):
            r = run({"kind": "sampling", "variant": v, "n": n, "steps": timed, "repeats": 0})
            per_step = r["seconds"] / timed
            rows.append([f"{n:,}", v, f"{timed}", f"{per_step:.2f}", f"{per_step * steps:,.1f}", _mb(r)])
    return table(f"bench sampling{' --quick' if quick else ''}: one whole section, expr_to_pos, DDIM, default "
                 f"{steps} steps (every step is one forward of the same cost: where fewer steps were timed, "
                 "s/section = s/step x steps)",
                 ["cells", "variant", "steps timed", "s/step", f"s/section ({steps} steps)", "peak MiB"], rows)


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description="benchmarks that print tables")
    p.add_argument("what", choices=["attention", "train-step", "sampling", "preprocess", "all"])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    whats = ["attention", "train-step", "sampling", "preprocess"] if args.what == "all" else [args.what]
    print(f"machine: {machine()}")
    benches = {"attention": bench_attention, "train-step": bench_train_step, "sampling": bench_sampling}
    for what in whats:
        t0 = time.perf_counter()
        if what == "preprocess":
            _print(f"bench preprocess{' --quick' if args.quick else ''} "
                   "(peak RSS = VmHWM of a fresh child process)", bench_preprocess(args.quick))
        else:
            print(benches[what](args.quick), flush=True)
        print(f"({what}: {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
