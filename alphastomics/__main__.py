"""Command line: ``python -m alphastomics <stage> --config FILE [--set section.key=value ...]``.

Stages: fetch-data | preprocess | train | sample | evaluate | verdict | report | baseline | params |
learning-curve | stability | variance | reassemble.
``python -m alphastomics.main`` is the same entry point (the design note's spelling).
A user error (bad config, bad input file) prints one line and exits with status 2.

The command line is declared as data: ``STAGES`` maps each stage to the module whose ``main(args, cfg)``
runs it, its help and its options. The module is imported only when its stage runs, so a stage that needs no
PyTorch (fetch-data, preprocess, evaluate of a peer, verdict, report) starts without it and the small conda
environments of workflow/envs/ suffice.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphastomics import AlphaSTomicsError, __version__
from alphastomics.config import load_config
from alphastomics.lifecycle import keep_freed_memory


def opt(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One option: argparse's ``add_argument(*flags, **kwargs)``, as data."""
    return flags, kwargs


@dataclass(frozen=True)
class Stage:
    module: str  # its main(args, cfg) runs the stage
    help: str
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=list)


DATA_DIR = opt("--data_dir", "--data-dir", dest="data_dir", required=True, type=Path)
THREADS = opt("--threads", type=int, metavar="N",
              help="CPUs of the job: torch, BLAS/OpenMP and numba threads (the workflow passes its threads)")
RUNS = opt("--runs", type=Path, nargs="+",
           help="run folders results/{dataset}/{variant}/seed{seed} (peers: {dataset}/peer_{method}/seed{seed})")
STABILITY = opt("--stability", type=Path, metavar="JSON",
                help="the learning-rate sweep's stability.json (make stability): the claims table's stability and "
                     "convergence rows, the report's sweep figure (workflow: config 'claims.stability')")

STAGES: dict[str, Stage] = {
    "fetch-data": Stage("alphastomics.data.fetch", "get raw data (download or mirror, checksum-verified; synthetic)", [
        opt("--out", required=True, type=Path, help="raw data folder to write"),
        opt("--local-copy", type=Path, help="bdtnp: folder with dge.txt and geometry.txt (no download)"),
        opt("--mirror", type=Path, help="folder of published data files (dataset.files, bdtnp/), looked in "
            "before downloading; default $ALPHASTOMICS_DATA_MIRROR"),
    ]),
    "preprocess": Stage("alphastomics.data.preprocess", "raw data -> Parquet + manifest.json", [
        opt("--raw", required=True, type=Path, help="folder written by fetch-data"),
        opt("--out", required=True, type=Path, help="processed data folder to write"),
    ]),
    "train": Stage("alphastomics.training.train", "train the denoiser (resumes from the latest checkpoint in --out)", [
        DATA_DIR,
        opt("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoints, logs)"),
        opt("--batch_size", "--batch-size", dest="batch_size", type=int, help="= training.batch_size"),
        opt("--max_steps", "--max-steps", dest="max_steps", type=int, help="= training.max_steps"),
        opt("--restart-if-config-changed", action="store_true",
            help="discard checkpoints in --out written by another config instead of refusing (the workflow uses it)"),
        opt("--time-limit-min", dest="time_limit_min", type=float, metavar="MIN",
            help="the job's time limit in minutes (the workflow passes resources.runtime under SLURM): save a "
            "checkpoint and exit 75 --time-margin-min before it; the same command then resumes"),
        opt("--time-margin-min", dest="time_margin_min", type=float, default=10.0, metavar="MIN",
            help="stop this long before --time-limit-min (at most half of it; default 10)"),
        opt("--threads", type=int, metavar="N", help="CPUs of the job, shared by its processes: torch threads "
            "and data-loader workers (the workflow passes its threads)"),
    ]),
    "sample": Stage("alphastomics.model.sample", "generate held-out sections with a trained model", [
        opt("--checkpoint", required=True, type=Path),
        DATA_DIR,
        opt("--out", required=True, type=Path, help="samples Parquet file to write"),
        opt("--split", default="test", choices=["train", "val", "test"]),
    ]),
    "reassemble": Stage("alphastomics.model.reassemble", "place dissociated cells (expression only) with a trained "
                        "model", [
        opt("--checkpoint", required=True, type=Path, nargs="+", help="final.pt of an expr_to_pos run; several "
            "(seeds): the one whose train_summary.json has the lowest best_val_loss"),
        opt("--h5ad", required=True, type=Path, help="AnnData of the cells (no coordinates needed)"),
        opt("--out", required=True, type=Path, help=".h5ad to write (the input plus the placement)"),
        opt("--group-key", dest="group_key", metavar="OBS",
            help="obs column naming each cell's tissue, one generated per group (default: all cells)"),
        opt("--draws", type=int, default=8, help="draws per tissue, aligned and averaged (default 8)"),
        opt("--layer", help="layer holding the expression (default X); counts or log-normalised"),
        opt("--min-gene-share", dest="min_gene_share", type=float, default=0.8, metavar="SHARE",
            help="refuse when fewer of the model's genes are in the file (default 0.8)"),
    ]),
    "evaluate": Stage("alphastomics.evaluation.evaluate", "score samples against the truth; write metrics.json + "
                      "sections.csv", [
        opt("--samples", required=True, type=Path),
        DATA_DIR,
        opt("--checkpoint", type=Path, help="for diagnostics (attention sinks, gates)"),
        opt("--train-summary", type=Path, help="train_summary.json (cost figures)"),
        opt("--run-id", dest="run_id", nargs=3, metavar=("DATASET", "VARIANT", "SEED"),
            help="what this run is (metrics.json's dataset, variant, seed; the verdict groups runs by it)"),
        opt("--out", required=True, type=Path, help="folder to write"),
        THREADS,
    ]),
    "verdict": Stage("alphastomics.analysis.decide", "the declared contrasts tested over seeds -> verdict.json", [
        RUNS,
        opt("--out", required=True, type=Path, help="verdict.json to write"),
        opt("--baseline", default="linear", metavar="VARIANT", help="variant the others are compared with"),
        opt("--contrasts", nargs="+", metavar="VARIANT:REFERENCE", help="declared contrasts (workflow: config "
            "'verdict.contrasts'; default: alphastomics.analysis.verdict.DEFAULT_CONTRASTS)"),
        opt("--primary-metrics", dest="primary_metrics", nargs="+", metavar="METRIC",
            help="declared primary metrics (workflow: config 'verdict.primary_metrics')"),
        opt("--with-verdict", dest="with_verdict", nargs="+", type=Path, metavar="PATH",
            help="other campaigns' verdict.json files: their data sets join the comparison across tissues (a "
            "missing file is a row saying which campaign to run; workflow: config 'compare_with')"),
        STABILITY,
    ]),
    "report": Stage("alphastomics.analysis.report", "the comparison HTML page from a verdict (or verdicts as the "
                    "Markdown results page, or a PNG of a page)", [
        opt("--verdict", type=Path, metavar="JSON", help="verdict.json written by the verdict stage"),
        RUNS,
        opt("--out", type=Path, help="HTML file to write (self-contained); with --markdown: the Markdown file"),
        opt("--markdown", type=Path, nargs="+", metavar="VERDICT",
            help="instead: the results page from these verdicts, in this order (each a verdict.json or a results "
            "folder holding one; a missing one is a line 'not run for this page'), printed, or written whole to "
            "--out (docs/results.md; make results-page)"),
        opt("--screenshot", nargs=2, type=Path, metavar=("PAGE_HTML", "OUT_PNG"),
            help="instead: render a page in headless Chromium to a PNG (docs/report.png)"),
        opt("--width", type=int, default=1280, help="--screenshot: window width (px)"),
        opt("--height", type=int, default=2400, help="--screenshot: window height (px)"),
        opt("--scale", type=float, default=0.5, help="--screenshot: shrink the PNG by this factor"),
        opt("--config-snapshot", dest="config_snapshot", type=Path, help="config file as run (provenance)"),
        STABILITY,
    ]),
    "baseline": Stage("alphastomics.evaluation.peers", "a peer method (knn, tangram, novosparc, celery) on held-out "
                      "sections", [
        opt("--method", required=True, choices=["knn", "tangram", "novosparc", "celery", "ceiling"]),
        DATA_DIR,
        opt("--out", required=True, type=Path, help="samples Parquet file to write (same format as sample)"),
        opt("--split", default="test", choices=["val", "test"]),
        opt("--seed", type=int, default=0),
    ]),
    "learning-curve": Stage("alphastomics.analysis.study", "collect the learning-curve study's scores (make "
                            "learning-curve runs its jobs): tables, the chosen budget, the figure", [
        opt("--out", type=Path, default=Path("results/study"), help="the study's folder (runs/ below it)"),
        opt("--datasets", nargs="+", help="default: every data set under --out/runs"),
        opt("--variants", nargs="+", help="default: alphastomics.analysis.study.DEFAULT_VARIANTS"),
        opt("--seeds", nargs="+", type=int, help="default: alphastomics.analysis.study.DEFAULT_SEEDS"),
        opt("--budgets", nargs="+", type=int, help="default: alphastomics.analysis.study.DEFAULT_BUDGETS"),
    ]),
    "stability": Stage("alphastomics.analysis.stability", "a learning-rate sweep's divergence, spikes and "
                       "convergence (make stability; docs/training.md)", [
        opt("--plan", type=Path, default=Path("config/stability.yaml"),
            help="the sweep's workflow config (data sets, variants, learning_rates, seeds)"),
        opt("--root", type=Path, default=Path("results"),
            help="folder holding the runs, {dataset}/{variant}_lr{rate}/seed{seed}"),
        opt("--out", type=Path, help="folder for stability.json, .md and .png (default: the plan's report_dir); "
            "with --markdown: the Markdown file"),
        opt("--markdown", type=Path, metavar="JSON",
            help="instead: the tables of a stability.json (or its folder), printed or written to --out"),
    ]),
    "variance": Stage("alphastomics.analysis.variance", "where the seed-to-seed spread comes from: training, "
                      "sections, draws", [
        opt("runs", nargs="+", type=Path, metavar="RESULTS_OR_RUN",
            help="a results folder (every */*/seed* run below it) or run folders"),
        opt("--metrics", nargs="+", metavar="METRIC",
            help="default: knn_preservation, distance_spearman, procrustes_rmsd_scaled"),
        opt("--contrasts", nargs="+", metavar="VARIANT:REFERENCE",
            help="also decompose these paired differences, e.g. gated_headwise:softmax"),
        opt("--datasets", nargs="+", metavar="NAME", help="only these data sets (folds pooled)"),
    ]),
    "timing": Stage("alphastomics.analysis.timing", "record how long a make target took, beside the verdict it "
                    "wrote (the Makefile calls it; docs/results.md shows it)", [
        opt("--verdict", required=True, type=Path, help="the verdict.json the target writes"),
        opt("--target", required=True, help='e.g. "make tissues"'),
        opt("--started", required=True, type=float, help="unix time make started"),
        opt("--set-up", dest="set_up", choices=["true", "false"], required=True,
            help="whether make built the virtual environment first (its time is included)"),
        opt("--cores", type=int, default=2),
    ]),
    "params": Stage("alphastomics.model.params", "parameter table of every attention variant", [
        opt("--data_dir", "--data-dir", dest="data_dir", type=Path,
            help="processed data set whose genes and dims size the heads (default: from the config)"),
    ]),
}

# Every stage reads the configuration: YAML files merged in order, then single keys.
COMMON = [
    opt("--config", action="append", default=[], metavar="FILE", help="YAML config; repeat to merge several "
        "(later wins)"),
    opt("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one key, e.g. --set training.learning_rate=1e-4 (repeatable)"),
]


def build_parser() -> argparse.ArgumentParser:
    """argparse from ``STAGES``: one subcommand per stage, the common options first."""
    parser = argparse.ArgumentParser(prog="python -m alphastomics", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"alphastomics {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help)
        for flags, kwargs in COMMON + stage.options:
            p.add_argument(*flags, **kwargs)
    return parser


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
        return importlib.import_module(STAGES[args.stage].module).main(args, cfg) or 0
    except AlphaSTomicsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
