"""Peer methods on the same held-out sections: the ``baseline`` stage.

Each peer places the held-out cells (split ``test`` or ``val``) from their expression alone, with the training
sections as reference, and writes ``samples.parquet`` in the format of the ``sample`` stage
(docs/architecture.md, "Samples"), so ``evaluate`` scores peers and AlphaSTomics variants alike.

- ``knn``: k-nearest-neighbour regression of coordinates from expression (scikit-learn); always available.
- ``tangram``: Biancalani et al., "Deep learning and alignment of spatially resolved single-cell
  transcriptomes with Tangram", Nat. Methods 18, 1352 (2021); PyPI ``tangram-sc``.
- ``novosparc``: Nitzan et al., "Gene expression cartography", Nature 576, 132 (2019); Moriel et al.,
  Nat. Protoc. 16, 4177 (2021); PyPI ``novosparc``.
- ``celery``: Zhang et al., "Inference of cell locations from single-cell transcriptomes by CeLEry",
  Nat. Commun. 14, 4963 (2023); PyPI ``celerypy``, imported as ``CeLEry``.

Frame: like the model, every peer works in the per-section centred frame (the training reference pools the
training sections, each centred on itself), so a prediction is a position relative to its section's centre;
``main`` adds the held-out section's centre and the global scale back (manifest) to give original units. On
synthetic data each section carries its own random rotation; the generator knows it, and ``common_frame``
undoes it on the training sections, so the pooled reference is one tissue frame (the held-out sections keep
theirs: every metric is invariant to rotation). Measured data is pooled as measured.
Tangram and novoSpaRc are mapping methods: they put each cell at one reference location (the most probable
one), so their predictions can only be training-cell positions.

Long because each peer method (kNN, the ceiling, Tangram, novoSpaRc, CeLEry) is a short adapter to its
library, and they share loading and the samples format.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from alphastomics import AlphaSTomicsError
from alphastomics.artifacts import samples_table, write_samples
from alphastomics.config import PeersConfig
from alphastomics.layout import CEILINGS  # predict_ceiling: a reference that reads the truth, no method

Method = Literal["knn", "tangram", "novosparc", "celery", "ceiling"]
METHODS: tuple[str, ...] = ("knn", "tangram", "novosparc", "celery", "ceiling")

# method -> (module to import, PyPI name, extra of alphastomics that installs it)
OPTIONAL: dict[str, tuple[str, str, str]] = {
    "tangram": ("tangram", "tangram-sc", "tangram"),
    "novosparc": ("novosparc", "novosparc", "novosparc"),
    "celery": ("CeLEry", "celerypy", "celery"),
}


NOVOSPARC_MAX_EPSILON = 0.5  # novoSpaRc's ceiling for its epsilon search (Tissue.reconstruct)


class PeerError(AlphaSTomicsError):
    """A peer cannot run on this input (missing optional package, empty split, ...)."""


@dataclass(frozen=True)
class PeerData:
    """Reference (training sections) and query (held-out cells), model space: centred, scaled coordinates."""

    ref_expression: np.ndarray  # (R, G) standardised with training statistics
    ref_log_expression: np.ndarray  # (R, G) standardisation undone (log-normalised scale, >= 0 for counts)
    ref_positions: np.ndarray  # (R, D)
    query_expression: np.ndarray  # (Q, G)
    query_log_expression: np.ndarray  # (Q, G)
    genes: list[str]
    scale: float  # model units -> original units
    # The held-out cells' own truth, read by the expression ceiling alone (never by a method).
    query_positions: np.ndarray | None = None  # (Q, D) model space, centred per section
    query_sections: np.ndarray | None = None  # (Q,) section of each query cell


# --------------------------------------------------------------------------------------------------------
# Optional dependencies


def require(method: str) -> Any:
    """Import the optional package of ``method``; a missing one is a one-line error naming the extra."""
    module, pypi, extra = OPTIONAL[method]
    hint = f"install it with: pip install 'alphastomics[{extra}]' (or pip install {pypi})"
    if importlib.util.find_spec(module) is None:
        raise PeerError(f"--method {method}: the optional package '{pypi}' is not installed; {hint}")
    try:
        return importlib.import_module(module)
    except Exception as err:  # a broken install must not look like a crash inside our code
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PeerError(f"--method {method}: importing '{module}' failed ({first}); {hint}") from None


def available(method: str) -> bool:
    """True when ``method`` can run here (knn always can)."""
    return method in ("knn", *CEILINGS) or importlib.util.find_spec(OPTIONAL[method][0]) is not None


def runnable(methods: list[str]) -> tuple[list[str], list[str]]:
    """(methods that can run here, one warning per skipped one naming the extra to install).

    The workflow uses it so that a peer listed in config but not installed never breaks the default run."""
    kept = [m for m in methods if available(m)]
    skipped = [
        f"baseline '{m}' skipped: its package is not installed "
        f"(pip install -e '.[{OPTIONAL[m][2]}]', or run the workflow with --sdm conda)"
        for m in methods
        if m not in kept
    ]
    return kept, skipped


# --------------------------------------------------------------------------------------------------------
# The methods: (PeerData, seed, settings) -> (Q, D) positions in model space


def predict_knn(data: PeerData, seed: int, s: PeersConfig) -> np.ndarray:
    from sklearn.neighbors import KNeighborsRegressor

    k = min(s.knn_k, len(data.ref_positions))
    knn = KNeighborsRegressor(n_neighbors=k, weights=s.knn_weights, algorithm="auto")
    knn.fit(data.ref_expression, data.ref_positions)
    return knn.predict(data.query_expression)


def predict_ceiling(data: PeerData, seed: int, s: PeersConfig) -> np.ndarray:
    """What expression alone can place within a section: each held-out cell at the mean true position of its
    ``knn_k`` nearest cells in expression **of its own section** (itself left out). It reads the held-out
    coordinates, so it is no method but a reference: how far a placement from expression could get if
    the section's other cells were already placed, which in a layered cortex leaves the position along a
    layer open (docs/peers.md, "The expression ceiling")."""
    from sklearn.neighbors import NearestNeighbors

    if data.query_positions is None or data.query_sections is None:
        raise PeerError("--method ceiling: the held-out positions were not loaded; report this as a bug")
    out = np.empty_like(data.query_positions, dtype=np.float64)
    for name in np.unique(data.query_sections):
        rows = np.flatnonzero(data.query_sections == name)
        k = min(s.knn_k, len(rows) - 1)
        if k < 1:  # a one-cell section has no neighbour: its centre
            out[rows] = 0.0
            continue
        nn = NearestNeighbors(n_neighbors=k + 1).fit(data.query_expression[rows])
        idx = nn.kneighbors(data.query_expression[rows], return_distance=False)
        # drop each cell itself (the first neighbour, or wherever it ties with an identical profile)
        others = np.array([[j for j in r if j != i][:k] for i, r in enumerate(idx)])
        out[rows] = data.query_positions[rows][others].mean(axis=1)
    return out


def _anndata(expression: np.ndarray, genes: list[str], prefix: str) -> Any:
    import anndata
    import pandas as pd

    obs = pd.DataFrame(index=[f"{prefix}{i}" for i in range(len(expression))])
    var = pd.DataFrame(index=list(genes))
    return anndata.AnnData(X=np.ascontiguousarray(expression, dtype=np.float32), obs=obs, var=var)


def predict_tangram(data: PeerData, seed: int, s: PeersConfig) -> np.ndarray:
    tg = require("tangram")
    # Tangram fits the cell-by-spot map on non-negative, log-normalised expression (cosine similarity per
    # gene); every shared gene is a training gene (genes=None), as the package does by default.
    sc_data = _anndata(data.query_log_expression, data.genes, "q")
    sp_data = _anndata(data.ref_log_expression, data.genes, "r")
    tg.pp_adatas(sc_data, sp_data, genes=None)
    # pp_adatas lists the genes in the order of a Python set, which changes with the process's hash seed, and
    # the fit follows that order (sums over genes): sorted, a rerun gives the same map.
    for adata in (sc_data, sp_data):
        for key in ("training_genes", "overlap_genes"):
            adata.uns[key] = sorted(adata.uns[key])
    # Tangram seeds only when `if random_state:` holds, so seed 0 (the workflow's baseline_seeds) would start
    # from an unseeded map: it draws from NumPy's and torch's global generators, which are seeded here (and
    # restored afterwards) for every seed.
    import torch

    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            np.random.seed(seed)
            torch.manual_seed(seed)
            mapping = tg.map_cells_to_space(
                sc_data,
                sp_data,
                mode="cells",
                density_prior=s.tangram_density_prior,
                num_epochs=s.tangram_epochs,
                learning_rate=s.tangram_learning_rate,
                device="cpu",
                random_state=seed,
                verbose=False,
            )
    finally:
        np.random.set_state(numpy_state)
    # Each cell goes to its most probable spot (a reference cell), Tangram's own cell-to-spot assignment.
    spot = np.asarray(mapping.X).argmax(axis=1)
    return data.ref_positions[spot]


def predict_novosparc(data: PeerData, seed: int, s: PeersConfig) -> np.ndarray:
    nc = require("novosparc")
    # Atlas-guided reconstruction: target space = reference locations, atlas = their expression of all genes
    # (markers). The transport plan is deterministic (no random initialisation), so seed is not used.
    query = _anndata(data.query_log_expression, data.genes, "q")
    tissue = nc.cm.Tissue(
        dataset=query,
        locations=np.asarray(data.ref_positions, dtype=np.float64),
        atlas_matrix=np.asarray(data.ref_log_expression, dtype=np.float64),
        markers_to_use=np.arange(len(data.genes)),
    )
    with _quiet():
        tissue.setup_reconstruction(
            num_neighbors_s=s.novosparc_neighbors, num_neighbors_t=s.novosparc_neighbors, verbose=False
        )
    # novoSpaRc means to retry with 10x epsilon when Sinkhorn reports numerical errors (search_epsilon), but
    # it looks for the report on stdout while POT now raises a warning, so the search never fires. Do it here:
    # the warning becomes an error, which also stops a doomed run at its first bad Sinkhorn call.
    epsilon = s.novosparc_epsilon
    while True:
        try:
            with _quiet(), warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*numerical errors.*")
                tissue.reconstruct(
                    alpha_linear=s.novosparc_alpha, epsilon=epsilon, search_epsilon=False, verbose=False
                )
            break
        except UserWarning:
            if epsilon * 10 >= NOVOSPARC_MAX_EPSILON:
                raise PeerError(
                    f"--method novosparc: Sinkhorn failed up to epsilon {epsilon:g}; "
                    "set a larger peers.novosparc_epsilon"
                ) from None
            epsilon *= 10
    if epsilon != s.novosparc_epsilon:
        print(f"novosparc: epsilon raised to {epsilon:g} after Sinkhorn numerical errors", file=sys.stderr)
    gw = np.asarray(tissue.gw)
    if not np.all(np.isfinite(gw)):
        raise PeerError("--method novosparc: the transport plan has non-finite values; try a larger epsilon")
    return data.ref_positions[gw.argmax(axis=1)]


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def predict_celery(data: PeerData, seed: int, s: PeersConfig) -> np.ndarray:
    celery = require("celery")
    import pandas as pd

    # CeLEry's tutorial z-scores reference and query each on their own statistics; coordinates are given in
    # original units, because CeLEry pads the coordinate range by 1 unit before mapping it to [0, 1].
    ref = _anndata(_zscore(data.ref_log_expression), data.genes, "r")
    query = _anndata(_zscore(data.query_log_expression), data.genes, "q")
    pos = data.ref_positions * data.scale
    dims = pos.shape[1]
    # CeLEry regresses 2D coordinates only: one model per axis pair; in 3D the pairs (x, y) and (x, z) give
    # every axis, x predicted twice and averaged.
    pairs = [(0, 1)] if dims == 2 else [(0, 1), (0, 2)]
    sums = np.zeros((len(query), dims))
    counts = np.zeros(dims)
    with tempfile.TemporaryDirectory(prefix="celery-") as tmp, _quiet():
        for a, b in pairs:
            name = f"celery_{a}{b}"
            loc = pd.DataFrame({"x": pos[:, a], "y": pos[:, b]}, index=ref.obs_names)
            celery.Fit_cord(
                data_train=ref,
                location_data=loc,
                hidden_dims=list(s.celery_hidden_dims),
                num_epochs_max=s.celery_epochs,
                path=tmp,
                filename=name,
                batch_size=s.celery_batch_size,
                num_workers=0,  # in-process loading: same numbers, no worker process per epoch
                initial_learning_rate=s.celery_learning_rate,
                seednum=seed,  # Fit_cord (1.2.1) seeds random, numpy, torch and its loader with it; 0 too
            )
            unit = np.asarray(celery.Predict_cord(data_test=query, path=tmp, filename=name))
            for col, axis in enumerate((a, b)):
                # invert CeLEry's label scaling: (c - (min - 1)) / ((max + 1) - (min - 1))
                lo, hi = pos[:, axis].min() - 1.0, pos[:, axis].max() + 1.0
                sums[:, axis] += lo + unit[:, col] * (hi - lo)
                counts[axis] += 1
    return sums / counts / data.scale


PREDICT = {
    "knn": predict_knn,
    "tangram": predict_tangram,
    "novosparc": predict_novosparc,
    "celery": predict_celery,
    "ceiling": predict_ceiling,
}


def predict(
    method: str, data: PeerData, *, seed: int = 0, settings: PeersConfig | None = None
) -> np.ndarray:
    """(Q, D) predicted positions of the query cells in model space (centred per section, scaled)."""
    if method not in PREDICT:
        raise PeerError(f"--method {method}: unknown peer; use one of {', '.join(METHODS)}")
    out = np.asarray(PREDICT[method](data, seed, settings or PeersConfig()), dtype=np.float64)
    if out.shape != (len(data.query_expression), data.ref_positions.shape[1]) or not np.all(np.isfinite(out)):
        raise PeerError(
            f"--method {method}: produced {out.shape} or non-finite positions; report this as a bug"
        )
    return out


def _quiet() -> Any:
    """Silence the peers' progress prints (stdout) so the stage log stays readable."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


# --------------------------------------------------------------------------------------------------------
# Processed data in, samples out


@dataclass(frozen=True)
class HeldOut:
    """The query cells with their truth in original units, in file order."""

    cell_id: pa.Array
    section: list[str]  # per cell
    cell_type: pa.Array
    true: np.ndarray  # (Q, 3) original units, z = 0 in 2D
    centers: np.ndarray  # (Q, 3) centre of each cell's section


def load(data_dir: str | Path, split: str = "test") -> tuple[PeerData, HeldOut, dict[str, Any]]:
    """Training sections as reference, ``split`` sections as query (docs/architecture.md, Processed data)."""
    from alphastomics.data.batches import ProcessedData, original_positions, undo_normalization

    data = ProcessedData(data_dir)
    manifest = data.manifest
    for name in ("train", split):
        if not data.splits.get(name):
            raise PeerError(
                f"{data.path / 'manifest.json'}: splits.{name} has no sections; peers need training "
                f"sections and held-out ones (pick another --split or preprocess with more sections)"
            )
    ref = [data.part(s, "train") for s in data.splits["train"]]  # validation cells (if any) left out, as in training
    query = [data.section(s) for s in data.splits[split]]
    ref_expr = np.concatenate([s.expression for s in ref]).astype(np.float64)
    query_expr = np.concatenate([s.expression for s in query]).astype(np.float64)
    frames = common_frame(manifest, data.path / "manifest.json")
    ref_pos = np.concatenate(
        [s.positions @ frames[s.name] if frames else s.positions for s in ref]
    ).astype(np.float64)
    for name, arr in (("expression", ref_expr), ("expression", query_expr), ("x/y/z", ref_pos)):
        if not np.all(np.isfinite(arr)):
            raise PeerError(f"{data.path / 'cells.parquet'}: field '{name}' holds NaN/inf; rerun preprocess")

    peer = PeerData(
        ref_expression=ref_expr,
        ref_log_expression=undo_normalization(ref_expr, manifest),
        ref_positions=ref_pos,
        query_expression=query_expr,
        query_log_expression=undo_normalization(query_expr, manifest),
        genes=list(data.genes),
        scale=float(manifest["coordinates"]["scale"]),
        query_positions=np.concatenate([s.positions for s in query]).astype(np.float64),
        query_sections=np.array([s.name for s in query for _ in range(len(s))], dtype=object),
    )
    true = np.zeros((len(query_expr), 3))
    centers = np.zeros((len(query_expr), 3))
    start = 0
    for sec in query:
        rows = slice(start, start + len(sec))
        true[rows, : data.dims] = original_positions(sec.positions.astype(np.float64), sec.name, manifest)
        centers[rows, : data.dims] = original_positions(np.zeros((1, data.dims)), sec.name, manifest)
        start += len(sec)
    names = np.array([None, *data.cell_types], dtype=object)  # code -1 (no label) -> None
    held = HeldOut(
        cell_id=pa.array(np.concatenate([s.cell_ids for s in query]).tolist(), pa.string()),
        section=[s.name for s in query for _ in range(len(s))],
        cell_type=pa.array(names[np.concatenate([s.cell_type for s in query]) + 1].tolist(), pa.string()),
        true=true,
        centers=centers,
    )
    return peer, held, manifest


def common_frame(manifest: dict[str, Any], where: Path) -> dict[str, np.ndarray] | None:
    """Synthetic data: section -> the rotation its generator applied (``positions @ R`` undoes it), so the
    pooled training sections share one frame; None for measured data, whose sections share the frame they
    were measured in (an atlas' coordinates, serial slabs of one embryo)."""
    if manifest.get("source") != "synthetic":
        return None
    from alphastomics.config import SyntheticConfig
    from alphastomics.data.synthetic import synthetic_rotations

    params = (manifest.get("parameters") or {}).get("synthetic")
    if not isinstance(params, dict):
        raise PeerError(
            f"{where}: field 'parameters.synthetic' is missing; rerun preprocess with this version"
        )
    rotations = synthetic_rotations(SyntheticConfig(**params))
    missing = [s for s in manifest["splits"].get("train", []) if s not in rotations]
    if missing:
        raise PeerError(
            f"{where}: training section '{missing[0]}' is not one the synthetic generator "
            "(parameters.synthetic) makes; rerun fetch-data and preprocess together"
        )
    return rotations


def peer_samples(held: HeldOut, pred: np.ndarray, scale: float, meta: dict[str, str]) -> pa.Table:
    """The samples table of a peer's predictions (model-space ``pred`` mapped back to original units)."""
    dims = pred.shape[1]
    original = pred * scale + held.centers[:, :dims]  # z stays 0 in 2D, like the truth
    return samples_table(held.cell_id, pa.array(held.section, pa.string()), held.cell_type, held.true, original,
                         meta=meta)


def run(
    method: str,
    data_dir: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    seed: int = 0,
    settings: PeersConfig | None = None,
) -> pa.Table:
    """Place the ``split`` cells with ``method``; write and return the samples table."""
    settings = settings or PeersConfig()
    if method == "knn" or method in CEILINGS:
        importlib.import_module("sklearn.neighbors")  # imports stay outside the timed part, as for the others
    else:
        require(method)  # fail before reading data when the optional package is missing
    data, held, manifest = load(data_dir, split)
    start = time.perf_counter()
    pred = predict(method, data, seed=seed, settings=settings)
    wall = time.perf_counter() - start
    own = {k: v for k, v in asdict(settings).items() if k.startswith(method)}
    meta = {
        "mode": "expr_to_pos",
        "method": method,
        "genes": json.dumps(manifest["genes"]),
        "split": split,
        "seed": str(seed),
        "wall_time_s": f"{wall:.3f}",  # fit + prediction, the peer's cost figure for the report
        "settings": json.dumps(own, default=list),
    }
    table = peer_samples(held, pred, data.scale, meta)
    write_samples(table, Path(out))
    return table


def main(args: argparse.Namespace, cfg: Any) -> int:
    """CLI entry (``python -m alphastomics baseline``); settings from the config's ``peers`` section."""
    settings = cfg.peers
    table = run(args.method, args.data_dir, args.out, split=args.split, seed=args.seed, settings=settings)
    wall = table.schema.metadata[b"alphastomics.wall_time_s"].decode()
    print(
        f"baseline {args.method}: {table.num_rows} cells of split '{args.split}' in {wall} s -> {args.out}",
        file=sys.stderr,
    )
    return 0
