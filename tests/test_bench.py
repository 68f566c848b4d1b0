"""Benchmarks: the tables print, the naive reference is the same computation as ours, and the two probes
(RSS high-water mark, largest allocated tensor) see what they claim to. No timing is asserted."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alphastomics.config import ModelConfig
from alphastomics.model.attention import Attention

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GPU_CHECK = BENCHMARKS / "gpu_check.py"
sys.path.insert(0, str(BENCHMARKS))
import bench  # noqa: E402  (benchmarks/bench.py: not part of the package)


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_reference_equals_plain_softmax_attention() -> None:
    cfg = dataclasses.replace(ModelConfig(d_model=32, num_heads=4), gate="none", qk_norm=False)
    ours = Attention(cfg)
    naive = bench.naive_attention_module(32, 4)
    naive.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    torch.testing.assert_close(naive(x, mask)[mask], ours(x, mask)[mask], rtol=1e-5, atol=1e-5)


def test_largest_tensor_probe_sees_the_n_by_n_matrix_only_in_the_naive_path() -> None:
    n = 1024  # 4 x d_model: an N x N matrix cannot hide among weights or (N, 2 C) projections
    naive = bench.run_case({"kind": "attention", "variant": "naive", "n": n, "batch": 1})
    ours = bench.run_case({"kind": "attention", "variant": "gated_headwise", "n": n, "batch": 1})
    assert naive["largest"] >= 8 * n * n  # (B, H, N, N), H = 8
    assert ours["largest"] <= n * n // 2  # SDPA: the biggest tensor is the (N, 2 C) key/value projection


def test_chunked_distance_loss_bounds_the_largest_tensor() -> None:
    n, chunk = 512, 64
    chunked = bench.run_case({"kind": "distance-loss", "n": n, "chunk": chunk})
    whole = bench.run_case({"kind": "distance-loss", "n": n, "chunk": n})
    # (B, chunk, N) planes: squared distances are summed one coordinate at a time (diffusion.py)
    assert chunked["largest"] <= chunk * n * 3
    assert whole["largest"] >= n * n


def test_measure_sees_a_fresh_allocation_in_the_rss_high_water_mark() -> None:
    if not bench._reset_peak_rss():
        pytest.skip("kernel does not allow resetting VmHWM")
    r = bench.measure(lambda: torch.ones(50 * 2**20).sum(), "cpu", repeats=1)  # 200 MiB, touched
    assert r["peak_mb"] >= 190
    assert r["largest"] == 50 * 2**20 and r["timed_runs"] == 1


def test_attention_rows_ratios_and_the_memory_cap() -> None:
    def fake(spec: dict) -> dict:
        seconds = 2.0 if spec["variant"] == "naive" else 0.5
        return {"seconds": seconds, "peak_mb": 40.0 if spec["variant"] == "naive" else 10.0, "largest": 4,
                "largest_op": "mm"}

    rows = bench.attention_rows([1024, 16384], ["linear"], lambda n: 0, fake, cap_gb=8.0)
    assert rows[0][1] == "naive" and rows[1][5:] == ["0.25", "0.25"]  # ours / naive, hand-computed
    assert rows[2][2].startswith("skipped (est. 34 GB > 8 GB cap)")  # 4 x 8 x 16384^2 x 4 bytes
    assert rows[3][5:] == ["-", "-"]
    text = bench.table("title", bench.ATTENTION_HEADERS, rows)
    assert "time vs naive" in text and text.count("\n") == len(rows) + 4


def test_cli_bench_sampling_quick_prints_its_table(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(bench, "run_case_in_child", bench.run_case)  # in-process: no interpreter start-up
    assert bench.main(["sampling", "--quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "s/section (50 steps)" in out
    assert "gated_headwise" in out and "linear" in out


def test_gpu_check_without_cuda_skips_with_status_0() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: run the script itself")
    res = subprocess.run([sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "no CUDA device: skipping"


def test_gpu_check_functions_run_on_the_cpu() -> None:
    g = _gpu_check()
    rows = g.check_bf16(["linear", "gated_elementwise"], 16, device="cpu")
    assert [r[0] for r in rows] == ["linear", "gated_elementwise"]
    assert all(0 < float(r[1]) < g.BF16_REL_TOL and r[3] == "ok" for r in rows)
    backends = dict(g.sdpa_backends(64, device="cpu"))
    assert "_scaled_dot_product" in backends["default, mask with padding"]
    assert backends["  only MATH, mask with padding"] == "runs"


def test_attention_flops_by_hand() -> None:
    g = _gpu_check()
    # N = 2, C = 4, 2 heads, headwise gate (2): projections 2*2*4*(16+2) = 288; softmax core 4*4*4 = 64
    assert g.attention_flops(2, 4, 2, 2, "softmax") == 3 * (288 + 64)
    # linear core 4 * N * C * dh = 4 * 2 * 4 * 2 = 64 as well at this size; at N = 8: 256 vs 1024
    assert g.attention_flops(8, 4, 2, 0, "linear") == 3 * (2 * 8 * 4 * 16 + 4 * 8 * 4 * 2)


def test_method_table_lists_variants_beside_the_best_peer_the_ceiling_and_random() -> None:
    import method_table

    gate = {"metrics": [{"metric": "knn_preservation", "random": 0.005,
                         "variants": [{"variant": "linear", "mean": 0.0148}, {"variant": "softmax", "mean": 0.01}],
                         "best_peer": {"peer": "knn", "value": 0.012}, "ceiling": {"value": 0.017}}]}
    text = method_table.table({"datasets": [{"dataset": "mop", "learning_gate": gate}]})
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows == ["| | knn_preservation |", "| linear | 0.0148 |", "| softmax | 0.0100 |",
                    "| best peer | 0.0120 (knn) |", "| expression ceiling | 0.0170 |", "| random placement | 0.0050 |"]
