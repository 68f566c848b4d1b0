"""Every file format that stages hand each other, defined once (docs/architecture.md, "Contracts").

- the processed data set's ``manifest.json`` (``FORMAT``, ``read_manifest`` validates it) and the schema of
  its ``cells.parquet`` (``cells_schema``);
- the samples table (``SAMPLE_POSITION_COLUMNS``, one builder ``samples_table``, ``write_samples`` /
  ``read_samples``), written by the sample stage and by the peer baselines, read by evaluate;
- checkpoints (``save_checkpoint`` / ``load_checkpoint``): plain tensors, dicts, lists, strings and numbers
  only, read back with ``torch.load(weights_only=True)``, so opening a checkpoint someone shared cannot run
  code; ``check_compatible`` says whether a checkpoint fits a processed data set;
- atomic writes (``atomic_file``, ``atomic_write_text``, ``atomic_dir``): a stage that fails never leaves a
  half-written output behind;
- JSON files: ``json_safe`` (what strict JSON can hold: NaN -> null) and ``read_json`` (a file that is not
  JSON is a one-line error naming it and the fix).

A stage imports this module and libraries, never another stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alphastomics import AlphaSTomicsError

FORMAT = 1  # of manifest.json and cells.parquet; bump when either changes incompatibly
MANIFEST_KEYS = ("format", "genes", "n_genes", "dims", "splits", "cells_per_section", "normalization",
                 "coordinates")
SAMPLE_POSITION_COLUMNS = ("x_true", "y_true", "z_true", "x_pred", "y_pred", "z_pred")


class DataError(AlphaSTomicsError, ValueError):
    """Bad input data or a bad artifact; the message names the file, the field and the fix."""


# --------------------------------------------------------------------------------------------------------
# Atomic writes


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` on success and is deleted on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` on success, delete it on any error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final folder should look like any other
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        # os.replace cannot replace a non-empty folder: move the old one aside first, drop it after.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# JSON files


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can hold it: NaN/inf -> None (null), numpy scalars -> Python numbers,
    tuples -> lists, recursively through dicts and lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path: str | Path, fix: str, error: type[Exception] = DataError) -> Any:
    """The content of the JSON file ``path``; one line (``error``: the caller's error class) when it is not
    JSON: the file, the line and ``fix``, what to do about it. A missing file is the caller's to report."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise error(f"{path}: not valid JSON{where}; {fix}") from None


# --------------------------------------------------------------------------------------------------------
# manifest.json of a processed data set


def gene_std_floored(std: np.ndarray) -> np.ndarray:
    """The manifest's ``gene_std`` as expression is divided by it: a gene constant over the training cells
    (std below 1e-6) is divided by 1, not by ~0. Written by preprocess, applied again by whoever reads it."""
    return np.where(std < 1e-6, 1.0, std)


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The validated manifest of a folder written by preprocess (fields: docs/architecture.md)."""
    data_dir = Path(data_dir)
    path = data_dir / "manifest.json"
    if not path.is_file() or not (data_dir / "cells.parquet").is_file():
        raise DataError(f"{data_dir}: manifest.json or cells.parquet missing; run "
                        "`python -m alphastomics preprocess` first")
    manifest = read_json(path, "rerun preprocess")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise DataError(f"{path}: missing field(s) {missing}; rerun preprocess with this version")
    if manifest["format"] != FORMAT:
        raise DataError(f"{path}: format is {manifest['format']}, this code reads {FORMAT}; rerun preprocess")
    return manifest


# --------------------------------------------------------------------------------------------------------
# cells.parquet of a processed data set (written by preprocess; read by data, sample and evaluate)


def cells_schema(genes: list[str], parameters: dict[str, Any],
                 annotations: list[str] | None = None) -> pa.Schema:
    """One row per cell (docs/architecture.md, "Processed data"); the gene list and the dataset config that
    made the file travel in the schema metadata. ``annotations`` (``dataset.annotation_keys``): extra
    per-cell labels, each a dictionary column ``annotation_<name>`` after ``expression``."""
    return pa.schema(
        [
            ("cell_id", pa.string()),
            ("section", pa.dictionary(pa.int32(), pa.string())),
            ("split", pa.dictionary(pa.int8(), pa.string())),
            ("x", pa.float32()),
            ("y", pa.float32()),
            ("z", pa.float32()),
            ("cell_type", pa.dictionary(pa.int32(), pa.string())),
            ("expression", pa.list_(pa.float32(), len(genes))),
            *((f"annotation_{a}", pa.dictionary(pa.int32(), pa.string())) for a in annotations or ()),
        ],
        metadata={"alphastomics.genes": json.dumps(genes), "alphastomics.parameters": json.dumps(parameters)},
    )


# --------------------------------------------------------------------------------------------------------
# Samples tables (sample stage and peer baselines -> evaluate)


def samples_table(
    cell_id: pa.Array, section: pa.Array, cell_type: pa.Array, true: np.ndarray, pred: np.ndarray, *,
    expression_true: np.ndarray | None = None, expression_pred: np.ndarray | None = None,
    meta: dict[str, str] | None = None, draw: int | None = None,
) -> pa.Table:
    """The samples table (docs/architecture.md "Samples"), the one builder for the sample stage and the peers.

    ``true``/``pred`` (n, D) coordinates in original units (stored as x/y/z float64, z = 0 in 2D); expression
    (n, G) on the log-normalised scale, stored as fixed-size float32 lists; ``draw``: which reverse-diffusion
    draw of the section these rows are (an int32 column; absent = a single draw); ``meta`` keys get the
    ``alphastomics.`` prefix."""
    n = len(true)
    columns: dict[str, Any] = {"cell_id": cell_id, "section": section, "cell_type": cell_type}
    if draw is not None:
        columns["draw"] = pa.array(np.full(n, draw, np.int32))
    for kind, values in (("true", true), ("pred", pred)):
        for a, axis in enumerate("xyz"):
            columns[f"{axis}_{kind}"] = pa.array(values[:, a] if a < values.shape[1] else np.zeros(n), pa.float64())
    for name, values in (("expression_true", expression_true), ("expression_pred", expression_pred)):
        if values is not None:
            flat = pa.array(np.asarray(values, np.float32).ravel(), pa.float32())
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    table = pa.table(columns)
    return with_samples_meta(table, meta) if meta else table


def with_samples_meta(table: pa.Table, meta: dict[str, str]) -> pa.Table:
    """``table`` with ``meta`` as its schema metadata, each key under the ``alphastomics.`` prefix."""
    return table.replace_schema_metadata({f"alphastomics.{k}".encode(): v.encode() for k, v in meta.items()})


def write_samples(table: pa.Table, out: str | Path) -> None:
    """Write a samples table (docs/architecture.md "Samples") atomically, with the code that wrote it
    (``alphastomics.code``: ``provenance.code()``) in its metadata."""
    from alphastomics.provenance import code

    meta = dict(table.schema.metadata or {})
    meta[b"alphastomics.code"] = json.dumps(code()).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_file(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def samples_code(path: str | Path) -> dict[str, Any] | None:
    """The ``provenance.code()`` record of the job that wrote a samples file (None: written without one)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"alphastomics.code")
    return json.loads(raw) if raw else None


def read_samples(path: str | Path) -> tuple[pa.Table, dict[str, str]]:
    """The samples table and its ``alphastomics.*`` metadata (mode, method, ...), without the prefix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: samples file not found; run sample (or baseline) first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err}); rerun sample") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    meta = {k.removeprefix("alphastomics."): v for k, v in meta.items() if k.startswith("alphastomics.")}
    for name in ("cell_id", "section", *SAMPLE_POSITION_COLUMNS):
        if name not in table.column_names:
            raise DataError(f"{path}: field '{name}' is missing; write samples as in docs/architecture.md")
    return table, meta


# --------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """torch.save atomically; ``state`` holds tensors, dicts, lists, strings and numbers only."""
    import torch

    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: data only, no code runs while it is read."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; pass the final.pt written by the train stage")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__}); rerun train") from None


def check_compatible(manifest: dict[str, Any], ckpt: dict[str, Any], data_dir: Path, checkpoint: Path) -> None:
    """The dims and the genes (in order) the model was trained on must be those of ``data_dir``."""
    where = Path(data_dir) / "manifest.json"
    if int(manifest.get("dims", -1)) != int(ckpt["dims"]):
        raise DataError(
            f"{where}: dims is {manifest.get('dims')} but {checkpoint} was trained with dims {ckpt['dims']}; "
            f"sample with data of the same dimensionality"
        )
    genes = list(manifest.get("genes", []))
    trained = list((ckpt.get("manifest") or {}).get("genes", genes))
    if genes != trained or len(genes) != int(ckpt["n_genes"]):
        mismatch = (f"'{a}' vs '{b}'" for a, b in zip(genes, trained) if a != b)
        first = next(mismatch, f"{len(genes)} vs {len(trained)}")
        raise DataError(
            f"{where}: genes differ from those {checkpoint} was trained on ({first}); preprocess with the "
            f"gene list of the training data (dataset.genes_file)"
        )
