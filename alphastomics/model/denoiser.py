"""The denoiser: a diffusion transformer over the set of cells of one section, predicting x0.

Cells are tokens; attention runs across cells (``alphastomics.model.attention``), there is no positional index
over cells, so the model is permutation-equivariant. Positions enter every block as "direction + distance"
features of the coordinates centred over real cells (LUNA, Yu et al. 2025; the design note), and each block
refines the coordinates (iterative refinement). Diffusion time enters every block through adaptive
LayerNorm with zero-initialised residual gates (adaLN-Zero, Peebles & Xie, "Scalable Diffusion Models with
Transformers", ICCV 2023), with one time embedding per modality so the conditioning modality can be clean.

Shape legend:
    B  batch (sections)            N  cells (tokens)            G  genes
    D  coordinate dims (2 or 3)    H  attention heads           C  model width (d_model)
    F  position features
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alphastomics.artifacts import DataError, load_checkpoint
from alphastomics.config import (
    Config,
    ModelConfig,
    config_from_dict,
    generates_expression,
    generates_positions,
)
from alphastomics.model.attention import Attention
from alphastomics.seeds import name_seed
from alphastomics.variants import VARIANTS

Diagnostics = dict[str, Tensor | None]


def masked_centre(x: Tensor, mask: Tensor) -> Tensor:
    """Subtract the mean over real cells; padding rows become zero. x (B, N, D), mask (B, N)."""
    m = mask[..., None].to(x.dtype)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return (x - mean) * m


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features (B, dim) of t in [0, 1] (scaled to 0..1000 as in DDPM/DiT)."""
    half = dim // 2
    dtype = t.dtype if t.dtype == torch.float64 else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = 1000.0 * t.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def position_features(positions: Tensor, mask: Tensor, num_frequencies: int) -> Tensor:
    """Direction + distance features of coordinates centred over real cells -> (B, N, F).

    F = 2 D + 1 + 2 num_frequencies: the centred coordinates, the unit direction, the radius and Fourier
    features of the radius (octaves of pi), so both coarse and fine radial structure are visible.
    """
    p = masked_centre(positions, mask)
    # The epsilon keeps the gradient of |p| finite for a cell at the centre.
    r = torch.sqrt((p * p).sum(-1, keepdim=True) + 1e-8)  # (B, N, 1)
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, device=p.device, dtype=p.dtype)
    angles = r * freqs  # (B, N, num_frequencies)
    feats = torch.cat([p, p / r, r, torch.sin(angles), torch.cos(angles)], dim=-1)
    return feats * mask[..., None].to(p.dtype)


def position_feature_dim(dims: int, num_frequencies: int) -> int:
    return 2 * dims + 1 + 2 * num_frequencies


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class TimeEmbedding(nn.Module):
    """t (B,) in [0, 1] -> (B, C): sinusoidal features, then an MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = cfg.time_embed_dim
        self.mlp = nn.Sequential(
            nn.Linear(cfg.time_embed_dim, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class GatedSelfAttentionModel(nn.Module):
    """The design note's block interface: attention across cells with position and time conditioning.

    ``(expression_features (B,N,C), diffusion_time (B,C), positions (B,N,D), mask (B,N)) ->
    (expression_features, positions, diffusion_time)``. The time features are conditioning: each block
    reads them through its own adaLN and passes them on unchanged.
    """

    def __init__(self, cfg: ModelConfig, dims: int, update_positions: bool = True) -> None:
        super().__init__()
        c = cfg.d_model
        self.num_frequencies = cfg.num_position_frequencies
        self.pos_embed = nn.Linear(position_feature_dim(dims, cfg.num_position_frequencies), c)
        self.norm = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 3 * c))  # shift, scale, residual gate
        self.attn = Attention(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        # Built only where the updated coordinates are read (not in the last block of a model that does not
        # generate them). No biases: masked_centre subtracts the mean over cells, which cancels any constant
        # shift, so a bias would be a parameter without a gradient.
        self.pos_norm = nn.LayerNorm(c, eps=1e-6, bias=False) if update_positions else None
        self.pos_update = nn.Linear(c, dims, bias=False) if update_positions else None

    def forward(
        self, h: Tensor, time: Tensor, positions: Tensor, mask: Tensor, need_weights: bool = False,
        padded: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Diagnostics | None]:
        h = h + self.pos_embed(position_features(positions, mask, self.num_frequencies))
        shift, scale, gate = self.modulation(time)[:, None].chunk(3, dim=-1)  # (B, 1, C) each
        x = modulate(self.norm(h), shift, scale)
        diag = None
        if need_weights:
            y, diag = self.attn(x, mask, need_weights=True)
        else:
            y = self.attn(x, mask, padded=padded)
        h = h + gate * self.dropout(y)
        if self.pos_update is not None:
            positions = masked_centre(positions + self.pos_update(self.pos_norm(h)), mask)
        return h, positions, time, diag


class TransformerLayer(nn.Module):
    """GatedSelfAttentionModel + a time-modulated feed-forward; same interface as the block."""

    def __init__(self, cfg: ModelConfig, dims: int, update_positions: bool = True) -> None:
        super().__init__()
        c = cfg.d_model
        self.attention = GatedSelfAttentionModel(cfg, dims, update_positions)
        self.norm = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 3 * c))
        self.ff = nn.Sequential(
            nn.Linear(c, cfg.ff_mult * c),
            nn.GELU(approximate="tanh"),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ff_mult * c, c),
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, h: Tensor, time: Tensor, positions: Tensor, mask: Tensor, need_weights: bool = False,
        padded: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Diagnostics | None]:
        h, positions, time, diag = self.attention(h, time, positions, mask, need_weights, padded)
        shift, scale, gate = self.modulation(time)[:, None].chunk(3, dim=-1)
        h = h + gate * self.dropout(self.ff(modulate(self.norm(h), shift, scale)))
        return h, positions, time, diag


class Denoiser(nn.Module):
    """Predicts clean expression (B,N,G) and clean centred coordinates (B,N,D) from noisy ones.

    Heads are built only for what is trained (DiT builds its learned-sigma head only when asked): the
    expression head when the mode generates expression or masked diffusion reconstructs it, the position
    head (and the last block's position update) when the mode generates coordinates. A modality without a
    head is returned as given (it is the clean conditioning), so every parameter gets a gradient.
    """

    def __init__(
        self, cfg: ModelConfig, n_genes: int, dims: int, *, predict_expression: bool = True,
        predict_positions: bool = True,
    ) -> None:
        super().__init__()
        # Drawn before any submodule exists (their constructors draw from the global generator, as many
        # numbers as the variant has weights): a function of the global seed alone, the same for every
        # variant.
        init_key = int(torch.randint(0, 2**62, (1,)))
        c = cfg.d_model
        self.cfg, self.n_genes, self.dims = cfg, n_genes, dims
        self.expression_in = nn.Linear(n_genes, c)
        self.expression_time = TimeEmbedding(cfg)
        self.position_time = TimeEmbedding(cfg)
        last = cfg.num_layers - 1
        self.layers = nn.ModuleList(
            TransformerLayer(cfg, dims, update_positions=predict_positions or i < last) for i in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))
        self.expression_out = nn.Linear(c, n_genes) if predict_expression else None
        self.position_out = nn.Linear(c, dims, bias=False) if predict_positions else None  # bias: see pos_update
        self._init_weights(init_key)

    @classmethod
    def from_config(cls, cfg: Config, n_genes: int, dims: int) -> Denoiser:
        """The denoiser that ``cfg``'s diffusion mode trains: heads for what that mode learns to predict."""
        mode = cfg.diffusion.mode
        return cls(
            cfg.model, n_genes, dims,
            predict_expression=generates_expression(mode) or cfg.diffusion.mask_fraction > 0,
            predict_positions=generates_positions(mode),
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu"
    ) -> tuple[Denoiser, Config, dict[str, Any]]:
        """The denoiser of a checkpoint, rebuilt from the checkpoint alone, with its EMA weights, in eval
        mode -> (model, the config it was trained with, the checkpoint dict)."""
        ckpt = load_checkpoint(path)
        for key in ("config", "ema", "n_genes", "dims"):
            if key not in ckpt:
                raise DataError(f"{path}: checkpoint has no '{key}'; rerun train with this version")
        cfg = config_from_dict(ckpt["config"], source=str(path))
        model = cls.from_config(cfg, ckpt["n_genes"], ckpt["dims"])
        model.load_state_dict(ckpt["ema"])
        model.to(device).eval()
        return model, cfg, ckpt

    def _init_weights(self, key: int) -> None:
        # Xavier everywhere, then DiT's choices: small normal time MLPs, and zeros for every adaLN
        # modulation and every output layer, so each block starts as the identity and the first
        # prediction is x0 = (gene mean, current coordinates): stable from step one at any depth.
        # Common random numbers: each weight matrix draws from a generator of its own, keyed by `key` and
        # its name, so the variants of one seed start from the same weights wherever they have the same
        # parameter (training draws are keyed by seed and step already, alphastomics.seeds), and a paired
        # contrast compares two architectures, not two draws of the initial weights as well (docs/model.md).
        def generator(name: str) -> torch.Generator:
            return torch.Generator().manual_seed(name_seed(key, name))

        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator(name))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for name, module in self.named_modules():
            if isinstance(module, Attention) and module.gate_dim:
                # The gate projection is fused into the query projection for speed; it is initialised as the
                # matrix of its own that it is, and the query rows as an ungated model's query projection.
                d = module.to_q.in_features
                nn.init.xavier_uniform_(module.to_q.weight[:d], generator=generator(f"{name}.to_q"))
                nn.init.xavier_uniform_(module.to_q.weight[d:], generator=generator(f"{name}.gate"))
        for emb_name in ("expression_time", "position_time"):
            for name, module in getattr(self, emb_name).mlp.named_children():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02, generator=generator(f"{emb_name}.mlp.{name}"))
        zero = [self.final_modulation[-1], self.expression_out, self.position_out]
        for layer in self.layers:
            zero += [layer.modulation[-1], layer.attention.modulation[-1], layer.attention.pos_update]
        for module in filter(None, zero):
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def has_gates(self) -> bool:
        """Whether any attention layer has an output gate (its statistics are worth a diagnostics pass)."""
        return any(getattr(m, "gate_dim", 0) for m in self.modules())

    def forward(
        self,
        expression: Tensor,
        positions: Tensor,
        t: Tensor,
        mask: Tensor,
        *,
        expression_t: Tensor | None = None,
        position_t: Tensor | None = None,
        return_diagnostics: bool = False,
        padded: bool | None = None,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, list[Diagnostics]]:
        """expression (B,N,G), positions (B,N,D), t (B,) in [0, 1], mask (B,N) -> x0 of both modalities.

        ``expression_t`` / ``position_t`` override ``t`` per modality (t = 0: that modality is clean).
        ``padded``: whether any cell is padding (``Batch.padded``, known on the host); None reads it from the
        mask, one host sync per forward.
        """
        if padded is None:
            padded = not bool(mask.all())
        b = expression.shape[0]
        t = torch.as_tensor(t, device=expression.device).to(expression.dtype).expand(b)
        t_expr = t if expression_t is None else torch.as_tensor(expression_t, device=t.device).expand(b)
        t_pos = t if position_t is None else torch.as_tensor(position_t, device=t.device).expand(b)
        time = self.expression_time(t_expr) + self.position_time(t_pos)  # (B, C)
        m = mask[..., None].to(expression.dtype)
        h = self.expression_in(expression * m)  # (B, N, C)
        pos = given = masked_centre(positions, mask)
        diagnostics = []
        for layer in self.layers:
            h, pos, time, diag = layer(h, time, pos, mask, need_weights=return_diagnostics, padded=padded)
            diagnostics.append(diag)
        shift, scale = self.final_modulation(time)[:, None].chunk(2, dim=-1)
        x = modulate(self.final_norm(h), shift, scale)
        expression_x0 = self.expression_out(x) * m if self.expression_out is not None else expression * m
        positions_x0 = masked_centre(pos + self.position_out(x), mask) if self.position_out is not None else given
        if return_diagnostics:
            return expression_x0, positions_x0, diagnostics
        return expression_x0, positions_x0


def count_parameters(module: nn.Module, within: type[nn.Module] | None = None) -> int:
    """Parameters of ``module``; with ``within``, only those inside its submodules of that type (e.g.
    ``Attention``: the parameters attention variants differ in)."""
    if within is None:
        return sum(p.numel() for p in module.parameters())
    return sum(p.numel() for m in module.modules() if isinstance(m, within) for p in m.parameters())


# The design note's claims per attention layer at d_model 256, 8 heads (relative to linear).
_CLAIMED_OVERHEAD = {
    "gated_headwise": "+4 %",
    "gated_elementwise": "+50 %",
    "gated_headwise_no_qknorm": "+4 %",
}


def variant_config(cfg: ModelConfig, name: str) -> ModelConfig:
    """``cfg`` with the attention settings of the named variant (``alphastomics.variants.VARIANTS``)."""
    return dataclasses.replace(cfg, **VARIANTS[name].settings())


def parameter_table(cfg: ModelConfig, n_genes: int, dims: int) -> list[dict[str, Any]]:
    """Per variant: attention parameters per layer, parameters per layer, total, overheads vs linear."""
    rows = []
    for name in VARIANTS:
        model = Denoiser(variant_config(cfg, name), n_genes, dims)
        layer = model.layers[0]
        rows.append(
            {
                "variant": name,
                "attention_per_layer": count_parameters(layer.attention.attn),
                "layer": count_parameters(layer),
                "total": count_parameters(model),
            }
        )
    base = rows[0]
    for row in rows:
        for key in ("attention_per_layer", "total"):
            row[f"{key}_vs_linear"] = row[key] / base[key] - 1.0
        row["claimed"] = _CLAIMED_OVERHEAD.get(row["variant"], "")
    return rows
