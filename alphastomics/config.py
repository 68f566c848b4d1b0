"""Typed, frozen configuration, built from YAML at one boundary.

Every default lives here and nowhere else. ``load_config`` rejects unknown keys and wrong types with a
sentence that names the file, the key and the fix. Section names follow the design note
("Gated Attention for AlphaSTomics"): ``TransformerLayer_setting`` and ``training`` keep its key names so its
ablation YAML works as written.

Long because every setting of every stage is declared here once, with its default and its check.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alphastomics import AlphaSTomicsError
from alphastomics.plan import merge
from alphastomics.variants import DESIGN_NOTE_KEYS, Gate, Kernel, from_design_note

Source = Literal["bdtnp", "synthetic", "h5ad", "csv", "rdata"]
Mode = Literal["expr_to_pos", "pos_to_expr", "joint"]


def generates_expression(mode: Mode) -> bool:
    """Whether a diffusion mode generates expression (else expression is the clean conditioning)."""
    return mode in ("pos_to_expr", "joint")


def generates_positions(mode: Mode) -> bool:
    """Whether a diffusion mode generates coordinates (else coordinates are the clean conditioning)."""
    return mode in ("expr_to_pos", "joint")


class ConfigError(AlphaSTomicsError, ValueError):
    """A config file or override is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Deterministic layered tissue with known ground truth (``source: synthetic``)."""

    num_sections: int = 6
    min_cells: int = 500
    max_cells: int = 1200
    num_genes: int = 100
    num_cell_types: int = 6
    dims: Literal[2, 3] = 2
    noise: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class RemoteFile:
    """A published file named by address and checksum: fetch-data takes it from the mirror or downloads it,
    and refuses any other bytes."""

    name: str  # file name in the raw folder and in the mirror folder
    url: str
    sha256: str


@dataclass(frozen=True)
class RDataConfig:
    """Which R objects hold what (``source: rdata``): R data are read by config keys, never converted by a
    script, so the published file stays the one whose checksum is pinned."""

    counts: str | None = None  # object (.RData/.rda) or list element (.rds) holding the expression matrix
    obs: str | None = None  # object or list element holding the per-cell data frame
    # Both are named lists with one entry per section (the list names are the section names).
    per_section: bool = False
    genes_by_cells: bool = False  # counts are genes x cells (R/Seurat habit): transposed when read


@dataclass(frozen=True)
class DatasetConfig:
    """Where raw data come from and how they become sections and splits."""

    name: str = "bdtnp"
    source: Source = "bdtnp"
    # h5ad / csv: one file, or a directory of files (one per section); bdtnp: optional local copy of the
    # two text files (dge.txt, geometry.txt), used instead of downloading when given.
    path: str | None = None
    # Public files by address and sha256 (any reader): taken from the mirror's mirror_folder when there,
    # else downloaded; the mirror itself is named by the workflow (data_mirror / ALPHASTOMICS_DATA_MIRROR).
    files: tuple[RemoteFile, ...] = ()
    mirror_folder: str | None = None
    coordinate_key: str = "spatial"  # h5ad: obsm key
    # Two or three columns holding x, y[, z]: h5ad obs columns instead of obsm[coordinate_key] (empty = use
    # obsm); csv columns instead of coord_X/coord_Y[/coord_Z]; rdata columns of the obs data frame.
    coordinate_obs: tuple[str, ...] = ()
    section_key: str | None = "section"  # h5ad obs column / csv column (csv default cell_section)
    cell_type_key: str | None = "cell_type"
    cell_id_key: str | None = None  # csv column of cell ids (default cell_id when present)
    meta_columns: tuple[str, ...] = ()  # csv: non-gene columns left out of the expression (e.g. cell_volume)
    # Extra per-cell labels kept as cells.parquet columns annotation_<name>: output name -> obs/csv column.
    annotation_keys: dict[str, str] = field(default_factory=dict)
    coordinate_units: str | None = None  # e.g. microns, pixels: recorded in the manifest next to the scale
    rdata: RDataConfig = field(default_factory=RDataConfig)
    layer: str | None = None  # h5ad: layer holding expression (None = X)
    genes_file: str | None = None  # optional gene list (one name per line) to keep; wins over n_top_genes
    # Highly variable genes (scanpy, flavor "seurat") chosen on training sections only, when the data have
    # more genes than this; null keeps every gene.
    n_top_genes: int | None = 2000
    # Sections for data without them (bdtnp): cut into K parallel slabs along one axis.
    num_slabs: int = 8
    slab_axis: Literal["x", "y", "z"] = "x"
    # Held-out sections by section, never by cell. Explicit lists win over fractions.
    val_sections: tuple[str, ...] = ()
    test_sections: tuple[str, ...] = ()
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    split_seed: int = 0
    # Cross-validation fold (the workflow's `folds: K` sets these): fold i of num_folds tests the i-th group
    # of sections (alphastomics.data.splits.fold_splits); fold_of names the data set the folds pool into.
    fold: int = 0
    num_folds: int = 1
    fold_of: str | None = None
    # How a run is validated. "section": whole held-out sections (val_fraction / val_sections, or a fold's
    # validation group). "cells": a spatially contiguous patch of val_fraction of the cells of every
    # training section, withheld from training; with few sections (leave-one-section-out on 3-4 sections)
    # every section but the test one trains (docs/data.md, "Few sections").
    validation: Literal["section", "cells"] = "section"
    # auto: integer counts -> library size + log1p; non-integer values > 30 (counts per cell volume) -> log1p;
    # else kept (alphastomics.data.normalization.detect_input)
    normalization: Literal["auto", "counts", "scaled", "normalized"] = "auto"
    target_sum: float = 1.0e4
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class DataConfig:
    """How Parquet sections become batches."""

    max_cells: int = 1024  # a training example is a section or a subset of at most this many cells
    crop: Literal["contiguous", "random", "mixed"] = "mixed"
    rotate: bool = True
    reflect: bool = True
    num_workers: int = 0
    pin_memory: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """The denoiser; YAML section ``TransformerLayer_setting`` (design-note key names)."""

    d_model: int = 256
    num_layers: int = 6
    num_heads: int = 8
    ff_mult: int = 4
    dropout: float = 0.1
    # The attention variant (alphastomics.variants): kernel, output gate, QK-norm. The design note's keys
    # use_gated_attention / gate_type / use_qk_norm are read too and mapped onto these.
    attention: Kernel = "softmax"
    gate: Gate = "headwise"
    qk_norm: bool = True
    time_embed_dim: int = 128
    num_position_frequencies: int = 8


@dataclass(frozen=True)
class DiffusionConfig:
    mode: Mode = "expr_to_pos"
    num_timesteps: int = 1000
    sampling_steps: int = 50
    sampler: Literal["ddim", "ancestral"] = "ddim"
    ddim_eta: float = 0.0
    expression_loss_weight: float = 1.0
    position_loss_weight: float = 1.0
    # Masked diffusion (design note): hide a fraction of expression features, reconstruct clean x0.
    mask_fraction: float = 0.0
    mask_loss_weight: float = 1.0
    distance_chunk_size: int = 1024  # bounds memory of the pairwise-distance loss


@dataclass(frozen=True)
class TrainConfig:
    """YAML section ``training`` (design-note key names kept)."""

    batch_size: int = 4
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    learning_rate: float = 3.0e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 2000
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.999
    val_every: int = 100
    val_batches: int = 8
    checkpoint_every: int = 200
    early_stopping_patience: int = 0  # validations without improvement; 0 disables
    # Steps at which to keep a copy of the checkpoint (checkpoints/step{N:06d}.pt, EMA weights inside):
    # the learning-curve study scores one run at several budgets.
    keep_checkpoints: tuple[int, ...] = ()
    max_nonfinite_steps: int = 5
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    log_every: int = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 10
    neighborhood_k: int = 15  # neighbours used for cell-type composition clustering
    num_random_references: int = 5
    diagnostics_max_cells: int = 2048  # attention maps are N x N: diagnostics run on at most this many
    # Diagnostics look at attention and gates mid-trajectory, where both the noisy modality and the condition
    # still matter (t = 1 is pure noise, t = 0 the clean input).
    diagnostic_time: float = 0.5
    # Diffusion times (fractions of diffusion.num_timesteps, each in (0, 1]) at which the diagnostics also
    # measure gate scores per layer (diagnostics.gate_over_t): does the gate change with the noise level?
    gate_times: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    # Share of expression entries hidden for the masked-reconstruction MSE; one value for every variant so
    # the figure compares across them, whatever mask_fraction each was trained with.
    masked_fraction: float = 0.15
    # Reverse-diffusion draws per held-out section (the sample stage): each is scored, and a section's value
    # is their mean, so the sampling noise of a model's value shrinks as 1 / draws while its training noise
    # stays (docs/metrics.md, "Variance and resolution", measured the shares).
    sampling_draws: int = 1
    # What is scored: every draw ("draws": a section's value is their mean), or one placement, the mean of
    # the draws after Procrustes alignment ("mean": alphastomics.model.placement.mean_placement), the estimate
    # kNN regression makes too. docs/metrics.md, "Draws or their mean".
    placement: Literal["draws", "mean"] = "draws"
    seed: int = 0

    def __post_init__(self) -> None:
        times = self.gate_times
        if not times or not all(isinstance(x, (int, float)) and 0.0 < x <= 1.0 for x in times):
            raise ConfigError(
                f"config: 'evaluation.gate_times' is {list(times)!r}; use a list of one or more numbers in "
                f"(0, 1] (fractions of diffusion.num_timesteps)"
            )


@dataclass(frozen=True)
class PeersConfig:
    """Peer baselines (``python -m alphastomics baseline``): the values their authors document (docs/peers.md)."""

    knn_k: int = 5
    # Uniform, not 1/distance: an exact expression match would otherwise snap a cell onto one reference
    # cell; the mean of k neighbours is the lower-variance estimate (measured: docs/peers.md).
    knn_weights: Literal["uniform", "distance"] = "uniform"
    tangram_epochs: int = 1000  # map_cells_to_space default
    tangram_learning_rate: float = 0.1  # map_cells_to_space default
    # Tangram's tutorial: 'uniform' when the spatial data are at single-cell resolution (ours are).
    tangram_density_prior: Literal["uniform", "rna_count_based"] = "uniform"
    novosparc_alpha: float = 0.5  # novoSpaRc's bdtnp-with-markers script
    novosparc_epsilon: float = 5e-4  # Tissue.reconstruct default (raised automatically on numerical errors)
    novosparc_neighbors: int = 5  # num_neighbors_s = num_neighbors_t, setup_reconstruction default
    celery_hidden_dims: tuple[int, ...] = (30, 25, 15)  # Fit_cord default
    celery_epochs: int = 500  # Fit_cord default (num_epochs_max)
    celery_batch_size: int = 4  # Fit_cord default
    celery_learning_rate: float = 1e-4  # Fit_cord default



@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    TransformerLayer_setting: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)

    @property
    def model(self) -> ModelConfig:
        return self.TransformerLayer_setting

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# --------------------------------------------------------------------------------------------------------
# YAML boundary

_FLOAT_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping of keys, got {type(value).__name__}")
        return _build(tp, value, where, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _coerce(value, rest[0], where, source)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: '{where}' is {value!r}; use one of {choices}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping (name: value), got {value!r}")
        return {_coerce(k, args[0], f"{where}", source): _coerce(v, args[1], f"{where}.{k}", source)
                for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{where}' must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{where}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads 1e-4 (no dot) as a string; accept any numeric literal, reject other strings.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{source}: '{where}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: '{where}' must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{source}: '{where}' has unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, values: dict[str, Any], where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{source}: unknown key '{path}'; remove it or use one of: {known}")
        kwargs[key] = _coerce(value, hints[key], path, source)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ConfigError(f"{source}: '{where}' lacks key(s) {', '.join(missing)}; add them")
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a section's own check (__post_init__) names the key; name the file too
        message = str(err)
        if message.startswith("config:"):
            message = f"{source}:{message[len('config:'):]}"
        raise ConfigError(message) from None


def parse_override(text: str) -> dict[str, Any]:
    """``'training.learning_rate=1e-4'`` -> ``{'training': {'learning_rate': '1e-4'}}`` (value read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    path, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    out: dict[str, Any] = {}
    node = out
    keys = path.strip().split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return out


def load_config(
    paths: str | Path | list[str | Path] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Merge YAML files (later wins), then ``section.key=value`` overrides, into a validated Config."""
    if paths is None:
        paths = []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict[str, Any] = {}
    sources = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found; pass an existing YAML file to --config")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            at = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"{p}: not valid YAML{at}; fix the syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
        merged = merge(merged, _design_note_keys(data, str(p)))
        sources.append(str(p))
    if isinstance(overrides, dict):
        merged = merge(merged, _design_note_keys(overrides, "overrides"))
        sources.append("overrides")
    else:
        for text in overrides or []:
            merged = merge(merged, _design_note_keys(parse_override(text), "--set"))
        if overrides:
            sources.append("--set")
    return _build(Config, merged, "", " + ".join(sources) or "config")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (lists for tuples) that ``load_config`` reads back to an equal Config."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def config_from_dict(data: dict[str, Any], source: str = "checkpoint") -> Config:
    return _build(Config, _design_note_keys(data, source), "", source)


def _design_note_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The design note's attention keys checked under their own names, then rewritten to the package's (one
    source at a time, so a later file or override still wins over an earlier one)."""
    section = data.get("TransformerLayer_setting")
    if not isinstance(section, dict):
        return data
    for key, tp in DESIGN_NOTE_KEYS.items():
        if key in section:
            _coerce(section[key], tp, f"TransformerLayer_setting.{key}", source)
    return {**data, "TransformerLayer_setting": from_design_note(section)}


# --------------------------------------------------------------------------------------------------------
# Which settings each workflow stage reads. The workflow reruns a stage only when one of these changes
# (workflow/rules/common.smk), and training resumes a checkpoint whose training settings match even when a
# sampling or evaluation setting changed since (alphastomics/training/train.py).

# diffusion keys used only when generating: sample reads them from its own --config, not the checkpoint.
SAMPLING_KEYS = ("sampling_steps", "sampler", "ddim_eta")

# stage -> section -> keys read (None: the whole section; a leading "-" list: the whole section but those).
STAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "train": {
        "dataset": None,
        "data": None,
        "TransformerLayer_setting": None,
        "training": None,
        "diffusion": ("-",) + SAMPLING_KEYS,
    },
    "sample": {"diffusion": SAMPLING_KEYS, "evaluation": ("seed", "sampling_draws", "placement")},
    "evaluate": {"evaluation": None},
    "baseline": {"peers": None},
}


def stage_settings(stage: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a (full or partial) nested config dict that ``stage`` reads; see STAGE_SETTINGS."""
    out: dict[str, Any] = {}
    for section, keys in STAGE_SETTINGS[stage].items():
        block = settings.get(section)
        if not isinstance(block, dict):
            continue
        if keys is None:
            kept = dict(block)
        elif keys[:1] == ("-",):
            kept = {k: v for k, v in block.items() if k not in keys[1:]}
        else:
            kept = {k: v for k, v in block.items() if k in keys}
        if kept:
            out[section] = kept
    return out
