"""Command line: ``python -m alphastomics <stage> --config FILE [--set section.key=value ...]``.

Stages: fetch-data | preprocess | train | sample | evaluate | report | baseline | params |
learning-curve | stability | variance | reassemble.
``python -m alphastomics.main`` is the same entry point (the design note's spelling).
A user error (bad config, bad input file) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from alphastomics import AlphaSTomicsError, __version__
from alphastomics.config import Config, load_config
from alphastomics.lifecycle import keep_freed_memory


def _common(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    p.add_argument(
        "--config",
        action="append",
        default=[],
        required=config_required,
        metavar="FILE",
        help="YAML config; repeat to merge several (later wins)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set training.learning_rate=1e-4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Every stage's options. Long on purpose: one flat list of argument declarations per stage, read top to
    bottom like the help it prints; helpers would only scatter it."""
    parser = argparse.ArgumentParser(prog="python -m alphastomics", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"alphastomics {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = sub.add_parser("fetch-data", help="get raw data (download or mirror, checksum-verified; synthetic)")
    _common(p)
    p.add_argument("--out", required=True, type=Path, help="raw data folder to write")
    p.add_argument("--local-copy", type=Path, help="bdtnp: folder with dge.txt and geometry.txt (no download)")
    p.add_argument("--mirror", type=Path, help="folder of published data files (dataset.files, bdtnp/), "
                   "looked in before downloading; default $ALPHASTOMICS_DATA_MIRROR")

    p = sub.add_parser("preprocess", help="raw data -> Parquet + manifest.json")
    _common(p)
    p.add_argument("--raw", required=True, type=Path, help="folder written by fetch-data")
    p.add_argument("--out", required=True, type=Path, help="processed data folder to write")

    p = sub.add_parser("train", help="train the denoiser (resumes from the latest checkpoint in --out)")
    _common(p)
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoints, logs)")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, help="= training.batch_size")
    p.add_argument("--max_steps", "--max-steps", dest="max_steps", type=int, help="= training.max_steps")
    p.add_argument(
        "--restart-if-config-changed",
        action="store_true",
        help="discard checkpoints in --out written by another config instead of refusing (the workflow uses it)",
    )
    p.add_argument(
        "--time-limit-min", dest="time_limit_min", type=float, metavar="MIN",
        help="the job's time limit in minutes (the workflow passes resources.runtime under SLURM): save a "
        "checkpoint and exit 75 --time-margin-min before it; the same command then resumes",
    )
    p.add_argument(
        "--time-margin-min", dest="time_margin_min", type=float, default=10.0, metavar="MIN",
        help="stop this long before --time-limit-min (at most half of it; default 10)",
    )
    p.add_argument(
        "--threads", type=int, metavar="N",
        help="CPUs of the job, shared by its processes: torch threads and data-loader workers (the workflow "
        "passes its threads)",
    )

    p = sub.add_parser("sample", help="generate held-out sections with a trained model")
    _common(p)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="samples Parquet file to write")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])

    p = sub.add_parser("reassemble", help="place dissociated cells (expression only) with a trained model")
    _common(p)
    p.add_argument("--checkpoint", required=True, type=Path, nargs="+",
                   help="final.pt of an expr_to_pos run; several (seeds): the one whose train_summary.json "
                        "has the lowest best_val_loss")
    p.add_argument("--h5ad", required=True, type=Path, help="AnnData of the cells (no coordinates needed)")
    p.add_argument("--out", required=True, type=Path, help=".h5ad to write (the input plus the placement)")
    p.add_argument("--group-key", dest="group_key", metavar="OBS",
                   help="obs column naming each cell's tissue, one generated per group (default: all cells)")
    p.add_argument("--draws", type=int, default=8, help="draws per tissue, aligned and averaged (default 8)")
    p.add_argument("--layer", help="layer holding the expression (default X); counts or log-normalised")
    p.add_argument("--min-gene-share", dest="min_gene_share", type=float, default=0.8, metavar="SHARE",
                   help="refuse when fewer of the model's genes are in the file (default 0.8)")

    p = sub.add_parser("evaluate", help="score samples against the truth; write metrics.json + sections.csv")
    _common(p)
    p.add_argument("--samples", required=True, type=Path)
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", required=True, type=Path)
    p.add_argument("--checkpoint", type=Path, help="for diagnostics (attention sinks, gates)")
    p.add_argument("--train-summary", type=Path, help="train_summary.json (cost figures)")
    p.add_argument("--run-id", dest="run_id", nargs=3, metavar=("DATASET", "VARIANT", "SEED"),
                   help="what this run is (metrics.json's dataset, variant, seed; the report groups runs by it)")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPUs of the job: threads of torch, BLAS/OpenMP and numba (the workflow passes its threads)")

    p = sub.add_parser("report", help="the comparison HTML page (or its verdict as Markdown, or a PNG of a page)")
    _common(p)
    p.add_argument(
        "--runs", type=Path, nargs="+",
        help="run folders results/{dataset}/{variant}/seed{seed} (peers: {dataset}/peer_{method}/seed{seed})",
    )
    p.add_argument("--out", type=Path, help="HTML file to write (self-contained); with --markdown: the Markdown file")
    p.add_argument("--markdown", type=Path, metavar="RESULTS",
                   help="instead: RESULTS/verdict.json (or that file) as Markdown, printed or written to --out "
                        "(docs/results.md)")
    p.add_argument("--screenshot", nargs=2, type=Path, metavar=("PAGE_HTML", "OUT_PNG"),
                   help="instead: render a page in headless Chromium to a PNG (docs/report.png)")
    p.add_argument("--width", type=int, default=1280, help="--screenshot: window width (px)")
    p.add_argument("--height", type=int, default=2400, help="--screenshot: window height (px)")
    p.add_argument("--scale", type=float, default=0.5, help="--screenshot: shrink the PNG by this factor")
    p.add_argument("--baseline", default="linear", metavar="VARIANT", help="variant the others are compared with")
    p.add_argument("--config-snapshot", dest="config_snapshot", type=Path, help="config file as run (provenance)")
    p.add_argument(
        "--verdict", type=Path, metavar="JSON", help="verdict file to write (default: verdict.json next to --out)"
    )
    p.add_argument(
        "--contrasts", nargs="+", metavar="VARIANT:REFERENCE",
        help="declared contrasts (workflow: config 'verdict.contrasts'; default: alphastomics.analysis.verdict.DEFAULT_CONTRASTS)",
    )
    p.add_argument(
        "--primary-metrics", dest="primary_metrics", nargs="+", metavar="METRIC",
        help="declared primary metrics (workflow: config 'verdict.primary_metrics')",
    )
    p.add_argument(
        "--with-verdict", dest="with_verdict", nargs="+", type=Path, metavar="PATH",
        help="other campaigns' verdict.json files: their data sets join the comparison across tissues (a "
             "missing file is a row saying which campaign to run; workflow: config 'compare_with')",
    )
    p.add_argument(
        "--stability", type=Path, metavar="JSON",
        help="the learning-rate sweep's stability.json (make stability) for the claims table's stability and "
             "convergence rows (a missing file: those rows say how to measure them; workflow: config "
             "'claims.stability')",
    )

    p = sub.add_parser("baseline", help="a peer method (knn, tangram, novosparc, celery) on held-out sections")
    _common(p)
    p.add_argument("--method", required=True, choices=["knn", "tangram", "novosparc", "celery", "ceiling"])
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="samples Parquet file to write (same format as sample)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("learning-curve", help="quality against training steps; picks the default budget")
    _common(p)
    from alphastomics.analysis import study

    p.add_argument("--plan", type=Path, default=Path("config/config.yaml"),
                   help="workflow config (data sets, variants)")
    p.add_argument("--data-root", dest="data_root", type=Path, default=Path("results/data"),
                   help="folder with {dataset}/processed")
    p.add_argument("--out", type=Path, default=Path("results/study"))
    p.add_argument("--datasets", nargs="*", default=None, help="default: every data set of --plan")
    p.add_argument("--variants", nargs="+", default=list(study.DEFAULT_VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(study.DEFAULT_SEEDS))
    p.add_argument("--budgets", nargs="+", type=int, default=list(study.DEFAULT_BUDGETS))
    p.add_argument("--patience", type=int, default=study.DEFAULT_PATIENCE,
                   help="validations without improvement before a run stops")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--stop-after", dest="stop_after", type=int, default=None, metavar="N",
                   help="end each run after step N, its schedule still that of max(--budgets)")
    p.add_argument("--no-train", dest="no_train", action="store_true",
                   help="train nothing; score the checkpoints the runs have kept so far, write the tables")
    p.add_argument("--only", choices=["runs", "peers"], default=None,
                   help="only the training runs (scored) or only the peer, no tables: one workflow job")

    p = sub.add_parser("stability", help="a learning-rate sweep's divergence, spikes and convergence "
                       "(make stability; docs/training.md)")
    _common(p)
    p.add_argument("--plan", type=Path, default=Path("config/stability.yaml"),
                   help="the sweep's workflow config (data sets, variants, learning_rates, seeds)")
    p.add_argument("--root", type=Path, default=Path("results"),
                   help="folder holding the runs, {dataset}/{variant}_lr{rate}/seed{seed}")
    p.add_argument("--out", type=Path, help="folder for stability.json, .md and .png (default: the plan's "
                   "report_dir); with --markdown: the Markdown file")
    p.add_argument("--markdown", type=Path, metavar="JSON",
                   help="instead: the tables of a stability.json (or its folder), printed or written to --out")

    p = sub.add_parser("variance", help="where the seed-to-seed spread comes from: training, sections, draws")
    _common(p)
    p.add_argument("runs", nargs="+", type=Path, metavar="RESULTS_OR_RUN",
                   help="a results folder (every */*/seed* run below it) or run folders")
    p.add_argument("--metrics", nargs="+", metavar="METRIC", help="default: knn_preservation, "
                   "distance_spearman, procrustes_rmsd_scaled")
    p.add_argument("--contrasts", nargs="+", metavar="VARIANT:REFERENCE",
                   help="also decompose these paired differences, e.g. gated_headwise:softmax")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="only these data sets (folds pooled)")

    p = sub.add_parser("params", help="parameter table of every attention variant")
    _common(p)
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", type=Path,
                   help="processed data set whose genes and dims size the heads (default: from the config)")

    return parser


# One function per stage, each importing its module where it runs: a stage that needs no PyTorch (fetch-data,
# preprocess, evaluate of a peer, report) starts without importing it, so the small conda environments of
# workflow/envs/ suffice. Each stage's entry point takes (args, cfg).


def _fetch_data(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.data import fetch

    return fetch.main(args, cfg)


def _preprocess(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.data import preprocess

    return preprocess.main(args, cfg)


def _train(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.training import train

    return train.main(args, cfg)


def _sample(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.model import sample

    return sample.main(args, cfg)


def _reassemble(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.model import reassemble

    return reassemble.main(args, cfg)


def _evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.evaluation import evaluate

    return evaluate.main(args, cfg)


def _report(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.analysis import report

    return report.main(args, cfg)


def _baseline(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.evaluation import peers

    return peers.main(args, cfg)


def _params(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.model import params

    return params.main(args, cfg)


def _variance(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.analysis import variance

    return variance.main(args, cfg)


def _stability(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.analysis import stability

    return stability.main(args, cfg)


def _learning_curve(args: argparse.Namespace, cfg: Config) -> int:
    from alphastomics.analysis import study

    return study.main(args, cfg)


STAGES: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "fetch-data": _fetch_data,
    "preprocess": _preprocess,
    "train": _train,
    "sample": _sample,
    "reassemble": _reassemble,
    "evaluate": _evaluate,
    "report": _report,
    "baseline": _baseline,
    "params": _params,
    "learning-curve": _learning_curve,
    "stability": _stability,
    "variance": _variance,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if getattr(args, "batch_size", None) is not None:
        overrides.append(f"training.batch_size={args.batch_size}")
    if getattr(args, "max_steps", None) is not None:
        overrides.append(f"training.max_steps={args.max_steps}")
    keep_freed_memory()  # every stage allocates and frees the same arrays over and over (lifecycle.py)
    try:
        cfg = load_config(args.config, overrides)
        return STAGES[args.stage](args, cfg) or 0
    except AlphaSTomicsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
