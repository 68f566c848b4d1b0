"""The evaluate stage at real section sizes: seconds per held-out section of N cells, on T threads.

Real tissue sections hold 10^4-10^5 cells (a MERFISH or Stereo-seq slice), while the bundled data have
~400-1,200. This builds a synthetic tissue of three sections of N cells each (train, validation, test; G
genes, C cell types), places the test section with the kNN-regression peer (a samples file like any
other), and times what an evaluate job does with it:

- ``score``: every metric of the section, its random references (``evaluation.num_random_references``)
  and the cell-type neighbourhoods (KMeans), per sampling draw;
- ``diagnostics``: the model probe of a trained checkpoint (attention sinks and gates on at most
  ``evaluation.diagnostics_max_cells`` cells, masked reconstruction over the whole section), for the laptop model (config/model.yaml) and the
  design note's size (config/model_cluster.yaml), each trained for one step (the probe's cost does not
  depend on the weights).

Threads: BLAS/OpenMP (threadpoolctl), numba (scanpy's Moran's I) and torch are all limited to T, which is
what evaluate does with ``--threads`` (the workflow passes the rule's threads). Peak memory is the process
maximum so far (sizes run in increasing order).

    .venv/bin/python benchmarks/bench_evaluate.py                        # N = 2k, 8k, 32k; T = 1, 4
    .venv/bin/python benchmarks/bench_evaluate.py --cells 128000 --threads 4
    .venv/bin/python benchmarks/bench_evaluate.py --cells 2000 --threads 1 --score-only --repeat 3

``--score-only`` skips the checkpoints (two trainings) and the probe, for timing changes to the scoring alone;
``--repeat R`` reports the fastest of R runs of ``score``, the least disturbed by other work on the machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from alphastomics.config import DatasetConfig, SyntheticConfig, load_config
from alphastomics.evaluation.evaluate import score
from alphastomics.lifecycle import limit_threads

REPO = Path(__file__).resolve().parents[1]


def build(root: Path, n: int, genes: int, types: int) -> tuple[Path, Path]:
    """(processed folder, samples file of the kNN peer on its test section) of a 3-section tissue."""
    from alphastomics.data.fetch import fetch_synthetic
    from alphastomics.data.preprocess import preprocess
    from alphastomics.evaluation import peers

    synthetic = SyntheticConfig(num_sections=3, min_cells=n, max_cells=n, num_genes=genes, num_cell_types=types)
    dataset = DatasetConfig(name=f"bench{n}", source="synthetic", synthetic=synthetic)
    raw, proc = root / "raw", root / "processed"
    fetch_synthetic(raw, synthetic)
    preprocess(raw, dataset, proc)
    samples = root / "peer_knn" / "samples.parquet"
    samples.parent.mkdir(parents=True)
    peers.run("knn", proc, samples, seed=0)
    return proc, samples


def checkpoint(root: Path, proc: Path, model_yaml: str) -> Path:
    """A one-step checkpoint of the model in ``model_yaml`` (the probe costs the same whatever the weights)."""
    from alphastomics.training.train import train

    cfg = load_config([str(REPO / model_yaml)], ["training.max_steps=1", "training.val_every=1"])
    out = root / Path(model_yaml).stem
    train(cfg, proc, out)
    return out / "final.pt"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--types", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--score-only", action="store_true", help="time score alone: no checkpoints, no probe")
    ap.add_argument("--repeat", type=int, default=1, help="fastest of this many runs of score")
    args = ap.parse_args()
    from alphastomics.evaluation.diagnostics import model_diagnostics

    cfg = load_config([], [])
    print(f"genes {args.genes}, cell types {args.types}, random references "
          f"{cfg.evaluation.num_random_references}, diagnostics_max_cells {cfg.evaluation.diagnostics_max_cells}")
    print(f"{'cells':>7} {'threads':>7} {'score s':>8} {'diag laptop s':>13} {'diag cluster s':>14} {'peak MB':>8}")
    for n in sorted(args.cells):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            limit_threads(max(args.threads))
            proc, samples = build(root, n, args.genes, args.types)
            models = () if args.score_only else ("config/model.yaml", "config/model_cluster.yaml")
            ckpts = [checkpoint(root, proc, y) for y in models]
            sections = [str(s) for s in pq.read_table(samples, columns=["section"])["section"].unique().to_pylist()]
            for t in args.threads:
                limit_threads(t)
                runs = []
                for _ in range(max(1, args.repeat)):
                    t0 = time.perf_counter()
                    score(samples, proc, cfg)
                    runs.append(time.perf_counter() - t0)
                times = [min(runs)]
                for ckpt in ckpts:
                    t0 = time.perf_counter()
                    model_diagnostics(ckpt, proc, sections, cfg)
                    times.append(time.perf_counter() - t0)
                diag = f"{times[1]:>13.1f} {times[2]:>14.1f}" if ckpts else f"{'-':>13} {'-':>14}"
                print(f"{n:>7} {t:>7} {times[0]:>8.1f} {diag} {peak_mb():>8.0f}", flush=True)


if __name__ == "__main__":
    main()
