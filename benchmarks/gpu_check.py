"""GPU check: bf16 against fp32 for every attention variant, which SDPA backend runs, and the benchmark
tables with achieved TFLOP/s. Run on a CUDA machine: ``python benchmarks/gpu_check.py`` (< 5 minutes on
one H100/H200); on a machine without CUDA it prints "no CUDA device: skipping" and exits 0.

Put its output, with the card's name and the date it prints, in docs/performance.md.

FLOP counts (forward, batch 1, width C, gate width g, head width dh): projections 2 N C (4 C + g), plus the
kernel: softmax 4 N^2 C (q k^T and the weighted sum of v), linear 4 N C dh (k^T v and q (k^T v)); forward
+ backward counted as 3 x forward (the usual convention; flash backward recomputes the scores, so the true
work is higher and the figure a lower bound).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py beside this file, however it is loaded

# (substring of the device name, dense bf16 tensor-core peak TFLOP/s from the vendor's spec sheet)
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0)]
BF16_REL_TOL = 3e-2  # bf16 keeps 8 bits of mantissa (~0.4 % per rounding); a few roundings in a row


def attention_flops(n: int, c: int, heads: int, gate: int, kernel: str) -> float:
    proj = 2 * n * c * (4 * c + gate)
    core = 4 * n * n * c if kernel == "softmax" else 4 * n * c * (c // heads)
    return 3.0 * (proj + core)


def rel_err(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check_bf16(variants: list[str], n: int, device: str = "cuda") -> list[list[str]]:
    """Output and input gradient of each variant under bf16 autocast against fp32 (TF32 off), with padding."""
    import torch
    from bench import _variant

    from alphastomics.model.attention import Attention

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for v in variants:
        torch.manual_seed(0)
        module = Attention(_variant(v)).to(device)
        x = torch.randn(2, n, module.to_out.in_features, device=device)
        mask = torch.ones(2, n, dtype=torch.bool, device=device)
        mask[1, n * 3 // 4 :] = False  # padding in one example: masked kernels are what training runs
        out = {}
        for dtype in ("fp32", "bf16"):
            xi = x.clone().requires_grad_(True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                y = module(xi, mask)
            y.float().pow(2).sum().backward()
            out[dtype] = (y[mask].detach(), xi.grad[mask])
        ey, eg = rel_err(out["bf16"][0], out["fp32"][0]), rel_err(out["bf16"][1], out["fp32"][1])
        ok = "ok" if max(ey, eg) < BF16_REL_TOL else f"FAIL (> {BF16_REL_TOL})"
        rows.append([v, f"{ey:.2e}", f"{eg:.2e}", ok])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows


def sdpa_backends(n: int, device: str = "cuda") -> list[list[str]]:
    """Which SDPA kernel the default dispatch picks (profiler), and which run when forced one at a time."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from alphastomics.model.attention import softmax_attention

    q, k, v = (torch.randn(1, 8, n, 32, device=device, dtype=torch.bfloat16) for _ in range(3))
    full = torch.ones(1, n, dtype=torch.bool, device=device)
    padded = full.clone()
    padded[:, -n // 8 :] = False
    rows = []
    for label, mask in (("mask, all real", full), ("mask with padding", padded)):
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            softmax_attention(q, k, v, mask)
            _sync(device)
        ops = sorted({e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")})
        rows.append([f"default, {label}", ", ".join(ops) or "?"])
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            try:
                with sdpa_kernel([backend]):
                    softmax_attention(q, k, v, mask)
                _sync(device)
                status = "runs"
            except RuntimeError as err:
                status = "not available: " + str(err).strip().splitlines()[0][:90]
            rows.append([f"  only {backend.name}, {label}", status])
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, k, v)  # no mask at all: flash's home ground
        _sync(device)
        status = "runs"
    except RuntimeError as err:
        status = "not available: " + str(err).strip().splitlines()[0][:90]
    rows.append(["  only FLASH_ATTENTION, attn_mask=None", status])
    return rows


def attention_table(sizes: list[int], variants: list[str], dtype: str, peak: float | None,
                    device: str = "cuda") -> list[list[str]]:
    from bench import NAIVE, _variant, naive_estimate_gb, run_case

    rows = []
    for n in sizes:
        base = {"kind": "attention", "n": n, "batch": 1, "repeats": 10 if n <= 4096 else 3, "device": device}
        naive = run_case({**base, "variant": NAIVE}) if naive_estimate_gb(n) < 60 else {"error": "skipped"}
        rows.append([f"{n:,}", "naive fp32", _ms(naive), _mb(naive), "", "", "1.00"])
        for v in variants:
            cfg = _variant(v)
            r = run_case({**base, "variant": v, "dtype": dtype})
            gate = {"none": 0, "headwise": cfg.num_heads, "elementwise": cfg.d_model}[cfg.gate]
            tflops = attention_flops(n, cfg.d_model, cfg.num_heads, gate, cfg.attention) / r["seconds"] / 1e12
            share = f"{100 * tflops / peak:.1f} %" if peak and dtype == "bfloat16" else "-"
            speed = f"{naive['seconds'] / r['seconds']:.1f}x" if "error" not in naive else "-"
            rows.append([f"{n:,}", f"{v} {dtype}", _ms(r), _mb(r), f"{tflops:.1f}", share, speed])
    return rows


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _ms(r: dict[str, Any]) -> str:
    return r.get("error") or f"{r['seconds'] * 1e3:.2f}"


def _mb(r: dict[str, Any]) -> str:
    return "" if "error" in r else f"{r['peak_mb']:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the card (default: from its name)")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipping")
        return 0

    from bench import machine, run_case, table

    from alphastomics.variants import VARIANTS as ABLATION_VARIANTS

    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((p for key, p in PEAK_BF16_TFLOPS if key in name), None)
    print(f"machine: {machine('cuda')}")
    print(f"assumed dense bf16 peak: {f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")
    variants = list(ABLATION_VARIANTS)
    sizes = [256, 1024] if args.quick else [256, 1024, 4096, 16384]

    print(table("bf16 autocast vs fp32 (TF32 off), one attention module, N = 1,024, batch 2 with padding; "
                "relative L2 error over real cells", ["variant", "output", "input grad", f"< {BF16_REL_TOL}"],
                check_bf16(variants, 1024)))
    print(table("SDPA backend (bf16, N = 4,096, 8 heads x 32): what the default dispatch runs and what runs when "
                "forced", ["case", "backend"], sdpa_backends(4096)))
    for dtype in ("float32", "bfloat16"):
        print(table(f"attention forward + backward, {dtype} (autocast), batch 1; peak = max_memory_allocated above "
                    "the inputs; FLOPs = 3 x forward", ["N", "variant", "ms", "peak MiB", "TFLOP/s", "of peak",
                                                        "speed vs naive"],
                    attention_table(sizes, variants, dtype, peak)))
    rows = []
    for n in ([1024] if args.quick else [1024, 4096, 16384]):
        for v in variants:
            for dtype in ("float32", "bfloat16"):
                r = run_case({"kind": "train-step", "variant": v, "n": n, "batch": 1, "repeats": 5, "device": "cuda",
                              "dtype": dtype})
                rows.append([f"{n:,}", v, dtype, _ms(r), f"{n / r['seconds']:,.0f}", _mb(r)])
    print(table("train step (default denoiser, one section of N cells, loss + backward + clip + AdamW)",
                ["N", "variant", "autocast", "ms", "cells/s", "peak MiB"], rows))
    rows = []
    for n in (1000, 5000):
        for v in ("linear", "gated_headwise"):
            r = run_case({"kind": "sampling", "variant": v, "n": n, "steps": 50, "repeats": 0, "device": "cuda",
                          "dtype": "bfloat16"})
            rows.append([f"{n:,}", v, f"{r['seconds']:.2f}", _mb(r)])
    print(table("sampling, one whole section, 50 DDIM steps, bf16 autocast", ["cells", "variant", "s/section",
                                                                             "peak MiB"], rows))
    print(f"\ngpu_check done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
