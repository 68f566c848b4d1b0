"""Time and peak memory of fetch-data + preprocess on one .h5ad, each stage in a fresh process.

    nice python benchmarks/make_h5ad.py --out /tmp/big.h5ad --cells 200000 --genes 2000 --sections 10
    nice python benchmarks/bench_preprocess.py /tmp/big.h5ad --layer counts --coordinate-obs center_x center_y \
        --section-key slice_id --cell-type-key cell_class

Prints a markdown table: seconds, peak RSS of the process, RSS of the imports alone, and the sizes of the
selected matrix (the layer the config reads) as stored sparse in memory and as a dense float32 array.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
t = time.perf_counter()
from alphastomics.__main__ import main
import alphastomics.data.preprocess, scanpy  # noqa: F401  (what the stage imports; seconds include imports)
argv = json.loads(sys.argv[1])
rc = main(argv) if argv else 0
# VmHWM: this process's own high-water mark (ru_maxrss survives fork + exec on Linux and would report the parent's)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t, "peak_rss_mb": hwm / 1024}))
"""


def run(argv: list[str]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matrix_sizes(path: Path, layer: str | None) -> tuple[int, int, float, float]:
    import h5py

    with h5py.File(path, "r") as f:
        elem = f["X"] if layer is None else f["layers"][layer]
        if isinstance(elem, h5py.Dataset):
            n, g = elem.shape
            stored = elem.size * 4
        else:
            n, g = (int(v) for v in elem.attrs["shape"])
            stored = sum(elem[k].size * elem[k].dtype.itemsize for k in ("data", "indices", "indptr"))
    return n, g, stored / 2**20, n * g * 4 / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--layer")
    p.add_argument("--coordinate-obs", nargs="*", default=[])
    p.add_argument("--section-key", default="section")
    p.add_argument("--cell-type-key", default="cell_type")
    args = p.parse_args()
    sets = ["--set", "dataset.source=h5ad", "--set", f"dataset.path={args.file}",
            "--set", f"dataset.section_key={args.section_key}", "--set", f"dataset.cell_type_key={args.cell_type_key}"]
    if args.layer:
        sets += ["--set", f"dataset.layer={args.layer}"]
    if args.coordinate_obs:
        sets += ["--set", f"dataset.coordinate_obs={json.dumps(args.coordinate_obs)}"]
    n, g, sparse_mb, dense_mb = matrix_sizes(args.file, args.layer)
    with tempfile.TemporaryDirectory(dir=args.file.parent) as tmp:
        imports = run([])
        fetch = run(["fetch-data", "--out", f"{tmp}/raw", *sets])
        prep = run(["preprocess", "--raw", f"{tmp}/raw", "--out", f"{tmp}/processed", *sets])
    print(f"{n:,} cells x {g:,} genes; selected matrix: {sparse_mb:,.0f} MB sparse (CSR in memory), "
          f"{dense_mb:,.0f} MB as dense float32")
    print()
    print("| stage | seconds | peak RSS (MB) | above imports (MB) | above imports / sparse matrix | above imports / dense matrix |")
    print("|---|---|---|---|---|---|")
    for name, r in (("imports only", imports), ("fetch-data", fetch), ("preprocess", prep)):
        extra = r["peak_rss_mb"] - imports["peak_rss_mb"]
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mb']:,.0f} | {extra:,.0f} | {extra / sparse_mb:.2f} | "
              f"{extra / dense_mb:.2f} |")


if __name__ == "__main__":
    main()
