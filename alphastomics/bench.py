"""``python -m alphastomics bench <what>``: benchmarks that print tables (not tests).

``preprocess``: a generated count matrix (200,000 cells x 500 genes in 20 sections; ``--quick`` 20,000)
written as ``.h5ad``, then ``fetch-data`` + ``preprocess`` to Parquet, then loading it back into batches.
Each step runs in a fresh child process, so its peak memory is its own: the RSS high-water mark
(``VmHWM`` of ``/proc/self/status``; ``getrusage`` ``ru_maxrss`` off Linux), set against the size of the
float32 matrix and against a child that only imports the same modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from alphastomics.config import Config, SyntheticConfig

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
_IMPORTS = "import alphastomics.__main__, alphastomics.preprocess, anndata.io, h5py, pyarrow.parquet\nout = {}"

# heavy imports happen before the clock starts: the figure is the stage's work, not Python start-up
_CLI = (
    "from alphastomics.__main__ import main\nimport alphastomics.preprocess, anndata.io, h5py\n"
    "t0 = time.perf_counter()\nassert main({argv!r}) == 0\nout = {{}}"
)

_LOAD = """
import numpy as np
from alphastomics.config import DataConfig
from alphastomics.data import ProcessedData, eval_batches, training_batch
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
    from alphastomics.datasets import generate_synthetic

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


def main(args: Any, cfg: Config) -> int:
    whats = ["attention", "train-step", "sampling", "preprocess"] if args.what == "all" else [args.what]
    for what in whats:
        if what == "preprocess":
            _print(f"bench preprocess{' --quick' if args.quick else ''} "
                   "(peak RSS = VmHWM of a fresh child process)", bench_preprocess(args.quick))
        else:
            print(f"bench {what}: not implemented yet")
    return 0

