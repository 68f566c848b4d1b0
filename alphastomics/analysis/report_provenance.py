"""Provenance of a report: the configuration each data set really ran with, source checksums, code and machine.

Read from the run folders (train summaries), the processed data sets' ``manifest.json`` and the config
snapshot the workflow passes; the report renders what ``provenance`` returns. The training machines and
their torch come from each run's ``train_summary.json`` (``alphastomics.provenance.machine``, recorded by the
training job itself).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from alphastomics import AlphaSTomicsError, __version__
from alphastomics.analysis.runs import Run, _read_json
from alphastomics.layout import parse_run_path
from alphastomics.provenance import _cpu_name, _gpu_name, code, describe

NOT_MEASURED = "not measured"


class ProvenanceError(AlphaSTomicsError, ValueError):
    """A provenance input (config snapshot, data folder) is missing; the message says which and the fix."""


def _training_machines(runs: list[Run]) -> tuple[str, str]:
    """(devices, torch versions) of the training jobs, from their summaries; NOT_MEASURED without any."""
    devices, torches = set(), set()
    for r in runs:
        s = r.summary or {}
        m = s.get("machine") or {}
        if "device" in s:
            gpus = ", ".join(m.get("gpus") or []) or m.get("cpu")
            devices.add(f"{s['device']}" + (f" ({gpus})" if gpus else ""))
        if m.get("torch"):
            torches.add(m["torch"] + (f", CUDA {m['cuda']}" if m.get("cuda") else ""))
    return ("; ".join(sorted(devices)) or NOT_MEASURED), ("; ".join(sorted(torches)) or NOT_MEASURED)


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _manifests(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """dataset -> manifest.json: any manifest.json under the runs' results folder."""
    roots = {r.path.resolve().parents[2] for r in runs if parse_run_path(r.path.resolve())}
    paths = [p for root in roots for p in sorted(root.glob("**/manifest.json"))[:50]]
    out = {}
    for p in paths:
        m = _read_json(p)
        if isinstance(m, dict):
            out.setdefault(str(m.get("dataset", p.parent.name)), m | {"_path": str(p)})
    return out


def _datasets_as_run(manifests: dict[str, dict[str, Any]], config_text: str) -> str:
    """YAML of each data set as preprocess really ran it (its manifest), plus the workflow's overrides for it."""
    import yaml

    if not manifests:
        return ""
    try:
        workflow_cfg = yaml.safe_load(config_text)
    except yaml.YAMLError:
        workflow_cfg = None
    entries = workflow_cfg.get("datasets") if isinstance(workflow_cfg, dict) else None
    out = {}
    for ds, m in sorted(manifests.items()):
        entry = entries.get(ds) if isinstance(entries, dict) else None
        out[ds] = {
            "dataset": m.get("parameters"),
            "overrides": (entry or {}).get("overrides") or {},
            "gene_selection": m.get("gene_selection"),
            "cells": m.get("n_cells"),
            "genes": m.get("n_genes"),
            "dims": m.get("dims"),
            "splits": m.get("splits"),
            "normalization": {k: v for k, v in (m.get("normalization") or {}).items() if k in ("input", "applied", "target_sum")},
            "source_files": m.get("source_files") or {},
            "source_sha256": m.get("source_checksums") or {},
        }
    return "\n# Data sets as preprocessed (from each manifest.json)\n" + yaml.safe_dump({"datasets_as_run": out}, sort_keys=False)


def provenance(runs: list[Run], cfg: Any, config_snapshot: Path | None) -> dict[str, Any]:
    import yaml

    from alphastomics.config import to_dict

    if config_snapshot is not None:
        if not Path(config_snapshot).is_file():
            raise ProvenanceError(
                f"{config_snapshot}: config snapshot not found; pass the config file the run used"
            )
        config_text = Path(config_snapshot).read_text()
        config_src = str(config_snapshot)
    else:
        config_text = yaml.safe_dump(to_dict(cfg), sort_keys=False) if cfg is not None else NOT_MEASURED
        config_src = "configuration given to the report stage"
    manifests = _manifests(runs)
    # Source files by the user's own path (fetch-data records it), each with its sha256.
    checksums = {
        ds: {(m.get("source_files") or {}).get(f, f): h for f, h in (m.get("source_checksums") or {}).items()}
        for ds, m in manifests.items()
    }
    config_text += _datasets_as_run(manifests, config_text)
    train_devices, train_torch = _training_machines(runs)
    return {
        "config_text": config_text,
        "config_src": config_src,
        "version": __version__,
        "commit": describe(code()),
        "checksums": checksums,
        # what the reader noted (a missing optional column, constant z dropped ...): shown with the verdict
        "data_notes": {ds: list(m.get("notes") or []) for ds, m in manifests.items()},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "gpu": _gpu_name(),
        "train_devices": train_devices,
        "snakemake": _version("snakemake"),
        "python": platform.python_version(),
        # torch as the training jobs saw it; the report's own environment needs none
        "torch": train_torch if train_torch != NOT_MEASURED else f"{_version('torch')} (report environment)",
    }
