"""Self-attention across the cells of a section: every variant of the ablation behind one module.

Kernels (small pure functions; q, k, v are (B, H, N, dh), mask is (B, N) bool with True = real cell):

- ``linear_attention``: the "efficient attention" of Shen et al. (WACV 2021, arXiv 1812.01243) as LUNA
  (Yu et al. 2025) used it through ``linear_attention_transformer``: queries softmaxed over features, keys
  softmaxed over cells (padding keys excluded), ``out = q (k^T v)`` in O(N dh^2), never an N x N matrix.
- ``softmax_attention``: ``F.scaled_dot_product_attention`` with a boolean key mask, so flash /
  memory-efficient kernels run on GPU.

Around the kernel (Qiu et al., "Gated Attention for Large Language Models", NeurIPS 2025, arXiv
2505.06708; the Qwen3-Next layout): optional QK-norm (RMSNorm over the head dimension on q and k) and an
optional output gate at the paper's G1 position, ``y = attn(q, k, v) * sigmoid(x W_g)``, x the block's
normalised input, whose projection is fused into the query projection; headwise = one scalar per head and
cell, elementwise = one per channel. Then the output projection.

The three settings are orthogonal (``alphastomics.variants``): ``attention`` picks the kernel, ``gate`` and
``qk_norm`` wrap whichever kernel runs. LUNA's linear baseline is ``attention: linear, gate: none, qk_norm:
false`` (the design note's ``use_gated_attention: false``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alphastomics.config import ConfigError, ModelConfig


def _key_mask(mask: Tensor) -> Tensor:
    return mask[:, None, :, None]  # (B, 1, N, 1): broadcasts over heads and features


def linear_attention_weights(q: Tensor, k: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Feature-softmaxed queries and cell-softmaxed keys, (B, H, N, dh) each; padding keys weigh 0."""
    q = q.softmax(dim=-1)
    # finfo.min rather than -inf: a batch row without any real cell gives uniform weights, not NaN.
    k = k.masked_fill(~_key_mask(mask), torch.finfo(k.dtype).min).softmax(dim=-2)
    return q, k


def linear_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Shen et al. efficient attention, O(N dh^2): softmax_feat(q) (softmax_cells(k)^T v).

    LUNA's implementation also multiplied q by dh^-0.5 after the softmax; that constant is absorbed by the
    output projection, and leaving it out keeps the implied attention matrix row-stochastic, so
    attention-sink statistics compare across kernels.
    """
    q, k = linear_attention_weights(q, k, mask)
    context = k.transpose(-2, -1) @ v  # (B, H, dh, dh)
    return q @ context  # (B, H, N, dh)


def linear_attention_matrix(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """The explicit (B, H, N, N) matrix A = softmax_feat(q) softmax_cells(k)^T; rows sum to 1."""
    q, k = linear_attention_weights(q, k, mask)
    return q @ k.transpose(-2, -1)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, padded: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(dh)) v over real keys, through the fused SDPA kernels.

    ``padded`` False (the caller knows every cell is real, e.g. from ``Batch.padded``, computed once per
    batch on the host) drops the mask: the flash kernel takes no boolean mask, so a padded batch runs the
    memory-efficient kernel and an unpadded one (whole sections, equal crops) can run flash. Reading the
    flag here from the mask would cost a host sync per layer and a graph break under torch.compile."""
    attn_mask = mask[:, None, None, :] if padded else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def softmax_attention_matrix(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """The explicit (B, H, N, N) softmax matrix (diagnostics only: O(N^2) memory)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention over cells; the variant is chosen by ``cfg`` (see module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.num_heads:
            raise ConfigError(
                f"config: 'TransformerLayer_setting.d_model' ({cfg.d_model}) must be divisible by "
                f"'num_heads' ({cfg.num_heads}); change one of them"
            )
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.d_model // cfg.num_heads
        self.kernel = cfg.attention
        self.gate_type = cfg.gate
        self.gate_dim = {"none": 0, "headwise": cfg.num_heads, "elementwise": cfg.d_model}[cfg.gate]
        d = cfg.d_model
        # The gate projection is fused into the query projection (Qwen3-Next): one matmul for both.
        self.to_q = nn.Linear(d, d + self.gate_dim, bias=False)
        self.to_kv = nn.Linear(d, 2 * d, bias=False)
        self.to_out = nn.Linear(d, d, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else None

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, dh)

    def forward(
        self, x: Tensor, mask: Tensor, need_weights: bool = False, padded: bool = True
    ) -> Tensor | tuple[Tensor, dict[str, Tensor | None]]:
        """x (B, N, D) normalised block input, mask (B, N) -> (B, N, D) [, {"attn", "gate"}]; ``padded``:
        whether some cell of the batch is padding (False lets softmax attention drop the mask)."""
        b, n, d = x.shape
        q, gate_logits = self.to_q(x).split([d, self.gate_dim], dim=-1)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if self.q_norm is not None:
            # In the norm's own dtype (fp32 under bf16 autocast): a bf16 input with fp32 weights makes torch
            # fall back from its fused kernel (it warns); the cast back keeps SDPA in the autocast dtype.
            w = self.q_norm.weight.dtype
            q, k = self.q_norm(q.to(w)).to(v.dtype), self.k_norm(k.to(w)).to(v.dtype)

        attn = None
        if need_weights:
            # Diagnostics only: the explicit matrix, whatever the kernel, so both compare alike.
            matrix = linear_attention_matrix if self.kernel == "linear" else softmax_attention_matrix
            attn = matrix(q, k, mask)
            y = attn @ v
        elif self.kernel == "linear":
            y = linear_attention(q, k, v, mask)
        else:
            y = softmax_attention(q, k, v, mask, padded)
        y = y.transpose(1, 2)  # (B, N, H, dh)

        gate = None
        if self.gate_dim:
            gate = torch.sigmoid(gate_logits)  # (B, N, H) or (B, N, D)
            if self.gate_type == "headwise":
                y = y * gate[..., None]
            else:
                y = y * gate.view(b, n, self.num_heads, self.head_dim)
        y = self.to_out(y.reshape(b, n, d))
        if need_weights:
            return y, {"attn": attn, "gate": gate}
        return y
