"""Where runs live: the run-folder layout and the peer prefix, read by the workflow (``common.smk``), the
report (``runs``) and the learning-curve study (``study``).

A run folder is ``{dataset}/{variant}/seed{seed}`` below a results root (``results/`` in the workflow,
``results/study/runs`` in the study); peer method M runs as the variant ``peer_M``. Plain Python, so
Snakemake imports it wherever it runs, also outside the package's environment.
"""

from __future__ import annotations

import re
from pathlib import Path

RUN_LAYOUT = "{dataset}/{variant}/seed{seed}"
PEER_PREFIX = "peer_"
# Peers that read the held-out truth (alphastomics.evaluation.peers.predict_ceiling): references, never a best peer.
CEILINGS = ("ceiling",)


def peer_variant(method: str) -> str:
    """The variant name a peer method's runs have (``knn`` -> ``peer_knn``)."""
    return PEER_PREFIX + method


def is_peer(variant: str) -> bool:
    return variant.startswith(PEER_PREFIX)


def is_ceiling(variant: str) -> bool:
    """Whether a run (``peer_ceiling``) or method (``ceiling``) is a reference that reads the truth."""
    return peer_method(variant) in CEILINGS


def peer_method(variant: str) -> str:
    """``peer_knn`` -> ``knn``; a model variant's name unchanged."""
    return variant.removeprefix(PEER_PREFIX)


def run_folder(root: str | Path, dataset: str, variant: str, seed: int) -> Path:
    return Path(root) / RUN_LAYOUT.format(dataset=dataset, variant=variant, seed=seed)


def parse_run_path(path: Path) -> tuple[str, str, int] | None:
    """``.../{dataset}/{variant}/seed{seed}`` -> (dataset, variant, seed); None for another shape."""
    m = re.fullmatch(r"seed(\d+)", path.name)
    if m is None or len(path.parts) < 3:
        return None
    return path.parent.parent.name, path.parent.name, int(m.group(1))
