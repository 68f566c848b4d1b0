"""Attention: every variant of the ablation, the kernels' equivalences, padding, the gate, diagnostics."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alphastomics.config import ConfigError, ModelConfig, load_config
from alphastomics.model import attention as attention_module
from alphastomics.model.attention import (
    Attention,
    linear_attention,
    linear_attention_matrix,
    softmax_attention,
    softmax_attention_matrix,
)

SMALL = ModelConfig(d_model=32, num_heads=4, num_layers=1, dropout=0.0)

# (softmax kernel?, gate, qk_norm): the linear baseline + softmax x gate x QK-norm.
VARIANTS = [(False, "none", False)] + [
    (True, gate, qk) for gate in ("none", "headwise", "elementwise") for qk in (True, False)
]
IDS = ["linear"] + [f"softmax-{g}-{'qk' if qk else 'noqk'}" for _, g, qk in VARIANTS[1:]]



def make(gated: bool, gate: str, qk: bool, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(SMALL, attention="softmax" if gated else "linear", gate=gate, qk_norm=qk)
    module = Attention(cfg)
    # Random RMSNorm weights, so QK-norm is not the identity-scaled default.
    for p in module.parameters():
        if p.ndim == 1:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    return module


def inputs(b: int = 2, n: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, SMALL.d_model, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, -3:] = False  # the second example has 4 real cells and 3 padding rows
    return x, mask


def qkv(b: int = 2, h: int = 3, n: int = 9, dh: int = 5, seed: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, dh, generator=g, dtype=torch.float64) for _ in range(3)]


def test_linear_kernel_equals_its_explicit_quadratic_form():
    q, k, v = qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    # A_ij = sum_f softmax_f(q_i)_f softmax_cells(k)_jf, written out by hand.
    qs = q.softmax(-1)
    ks = torch.where(mask[:, None, :, None], k.exp(), torch.zeros_like(k))
    ks = ks / ks.sum(-2, keepdim=True)
    explicit = torch.einsum("bhif,bhjf->bhij", qs, ks)
    torch.testing.assert_close(linear_attention_matrix(q, k, mask), explicit)
    torch.testing.assert_close(linear_attention(q, k, v, mask), explicit @ v)


def test_sdpa_equals_explicit_softmax():
    q, k, v = qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 2:] = False
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / 5**0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    explicit = scores.softmax(-1)
    torch.testing.assert_close(softmax_attention_matrix(q, k, mask), explicit)
    torch.testing.assert_close(softmax_attention(q, k, v, mask), explicit @ v)


@pytest.mark.parametrize("kernel", [linear_attention_matrix, softmax_attention_matrix])
def test_attention_rows_are_distributions_over_real_cells(kernel):
    q, k, _ = qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    a = kernel(q, k, mask)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 9, dtype=torch.float64))
    assert (a >= 0).all()
    assert (a[0, :, :, 6:] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_forward_backward_finite(variant):
    module = make(*variant)
    x, mask = inputs()
    x.requires_grad_(True)
    y = module(x, mask)
    assert y.shape == x.shape
    y[mask].pow(2).sum().backward()
    grads = [p.grad for p in module.parameters()] + [x.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_diagnostics_path_matches_training_path(variant):
    module = make(*variant)
    x, mask = inputs()
    y_fast = module(x, mask)
    y_slow, diag = module(x, mask, need_weights=True)
    torch.testing.assert_close(y_slow, y_fast, rtol=1e-5, atol=1e-5)
    attn = diag["attn"]
    assert attn.shape == (2, SMALL.num_heads, 7, 7)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, SMALL.num_heads, 7))
    assert (attn[1, :, :, -3:] == 0).all()
    gated, gate, _ = variant
    if not gated or gate == "none":
        assert diag["gate"] is None
    else:
        width = SMALL.num_heads if gate == "headwise" else SMALL.d_model
        assert diag["gate"].shape == (2, 7, width)
        assert ((diag["gate"] > 0) & (diag["gate"] < 1)).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_padding_leaves_real_cells_unchanged(variant):
    module = make(*variant)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5, SMALL.d_model, generator=g)
    garbage = 100 * torch.randn(1, 4, SMALL.d_model, generator=g)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    y_alone = module(x, torch.ones(1, 5, dtype=torch.bool))
    y_padded = module(torch.cat([x, garbage], 1), mask)
    torch.testing.assert_close(y_padded[:, :5], y_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_training_path_never_builds_the_attention_matrix(variant, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("explicit N x N matrix built on the training path")

    monkeypatch.setattr(attention_module, "linear_attention_matrix", forbidden)
    monkeypatch.setattr(attention_module, "softmax_attention_matrix", forbidden)
    x, mask = inputs()
    assert torch.isfinite(make(*variant)(x, mask)).all()


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_gate_of_all_ones_reproduces_ungated_attention(gate):
    gated, plain = make(True, gate, True, seed=4), make(True, "none", True, seed=5)
    d = SMALL.d_model
    with torch.no_grad():
        # Same q, k, v, output weights; the gate reads only input channel 0, set to 1 with a huge weight,
        # so sigmoid(x W_g) == 1 exactly in float32.
        gated.to_q.weight[:d] = plain.to_q.weight
        gated.to_q.weight[d:] = 0.0
        gated.to_q.weight[d:, 0] = 1e4
        gated.to_kv.weight.copy_(plain.to_kv.weight)
        gated.to_out.weight.copy_(plain.to_out.weight)
        gated.q_norm.weight.copy_(plain.q_norm.weight)
        gated.k_norm.weight.copy_(plain.k_norm.weight)
    x, mask = inputs()
    x[..., 0] = 1.0
    y, diag = gated(x, mask, need_weights=True)
    assert (diag["gate"] == 1.0).all()
    torch.testing.assert_close(y, plain(x, mask))
    # and a gate that is not all ones does change the output
    with torch.no_grad():
        gated.to_q.weight[d:, 0] = 0.0
    assert not torch.allclose(gated(x, mask), plain(x, mask), atol=1e-4)


def test_design_note_linear_baseline_ignores_gate_type_and_qk_norm():
    # use_gated_attention: false is LUNA's kernel whatever the other two design-note keys say beside it.
    for gate in ("none", "headwise", "elementwise"):
        for qk in (True, False):
            section = {"use_gated_attention": False, "gate_type": gate, "use_qk_norm": qk}
            cfg = load_config(overrides={"TransformerLayer_setting": {**section, "d_model": 32, "num_heads": 4}})
            assert (cfg.model.attention, cfg.model.gate, cfg.model.qk_norm) == ("linear", "none", False)
            module = Attention(cfg.model)
            assert module.kernel == "linear" and module.gate_dim == 0 and module.q_norm is None
            assert sum(p.numel() for p in module.parameters()) == 4 * SMALL.d_model**2


def test_gate_and_qk_norm_compose_with_the_linear_kernel():
    # The three settings are orthogonal: a gated linear attention is a variant like any other.
    module = make(False, "headwise", True)
    assert module.kernel == "linear" and module.gate_dim == SMALL.num_heads and module.q_norm is not None
    x, mask = torch.randn(2, 9, SMALL.d_model), torch.ones(2, 9, dtype=torch.bool)
    y, diag = module(x, mask, need_weights=True)
    torch.testing.assert_close(y, module(x, mask), rtol=1e-4, atol=1e-5)
    assert diag["gate"].shape == (2, 9, SMALL.num_heads)


def test_parameter_counts_by_hand():
    d, h = SMALL.d_model, SMALL.num_heads
    dh = d // h
    count = {
        (True, "none", False): 4 * d * d,
        (True, "none", True): 4 * d * d + 2 * dh,
        (True, "headwise", True): 4 * d * d + d * h + 2 * dh,
        (True, "elementwise", True): 5 * d * d + 2 * dh,
    }
    for variant, expected in count.items():
        assert sum(p.numel() for p in make(*variant).parameters()) == expected


def test_width_not_divisible_by_heads_is_a_config_error():
    with pytest.raises(ConfigError, match="d_model.*divisible.*num_heads"):
        Attention(dataclasses.replace(SMALL, d_model=30, num_heads=4))


def test_qk_norm_under_bf16_autocast_runs_fused_in_the_norm_dtype(recwarn):
    """fp32 RMSNorm weights with a bf16 input would fall back from the fused kernel (torch warns)."""
    attn = make(True, "headwise", True)
    x, mask = torch.randn(2, 9, SMALL.d_model), torch.ones(2, 9, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, mask)
    assert not [w for w in recwarn if "Cannot dispatch to fused" in str(w.message)]
    assert torch.isfinite(y.float()).all()
    assert torch.allclose(y.float(), attn(x, mask), rtol=0.1, atol=0.05)  # bf16 tracks fp32
