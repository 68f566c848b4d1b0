"""The ``params`` stage: the parameter table of every attention variant (attention per layer, layer, total,
and the overhead against linear attention next to the design note's claim).

``python -m alphastomics params [--data_dir results/data/NAME/processed]``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alphastomics.artifacts import DataError, read_manifest
from alphastomics.config import Config
from alphastomics.model.denoiser import parameter_table

BDTNP_GENES, BDTNP_DIMS = 84, 3  # the bundled atlas (DESIGN section 3): 84 genes, 3D coordinates

def _genes_and_dims(cfg: Config, data_dir: Path | None) -> tuple[int, int]:
    """G and D of the data set: from a processed folder's manifest, else what the config generates or bundles.
    Only the input/output heads depend on them; attention counts do not."""
    if data_dir is not None:
        manifest = read_manifest(data_dir)
        return int(manifest["n_genes"]), int(manifest["dims"])
    if cfg.dataset.source == "synthetic":
        return cfg.dataset.synthetic.num_genes, cfg.dataset.synthetic.dims
    if cfg.dataset.source == "bdtnp":
        return BDTNP_GENES, BDTNP_DIMS
    raise DataError(f"params: dataset.source is {cfg.dataset.source!r}; pass --data_dir with the data set's "
                    "processed folder (results/data/NAME/processed) so the heads have its genes and dims")


def format_parameter_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'variant':<26}{'attn/layer':>12}{'vs linear':>11}{'claimed':>9}"
        f"{'layer':>10}{'total':>11}{'vs linear':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['variant']:<26}{r['attention_per_layer']:>12,}{r['attention_per_layer_vs_linear']:>+10.1%} "
            f"{r['claimed']:>8}{r['layer']:>10,}{r['total']:>11,}{r['total_vs_linear']:>+10.1%} "
        )
    return "\n".join(lines)


def main(args: Any, cfg: Config) -> int:
    """``python -m alphastomics params [--data_dir PROC]``: the table, printed."""
    n_genes, dims = _genes_and_dims(cfg, getattr(args, "data_dir", None))
    m = cfg.model
    print(
        f"d_model {m.d_model}, {m.num_heads} heads, {m.num_layers} layers, ff_mult {m.ff_mult}; "
        f"G = {n_genes} genes, D = {dims} (dataset '{cfg.dataset.name}')"
    )
    print(format_parameter_table(parameter_table(m, n_genes, dims)))
    return 0
