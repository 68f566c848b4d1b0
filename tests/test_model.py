"""Denoiser: every variant in 2D and 3D, padding, permutation equivariance, time conditioning, params."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch

from alphastomics.__main__ import main as cli
from alphastomics.config import ModelConfig, load_config
from alphastomics.model.denoiser import (
    Denoiser,
    GatedSelfAttentionModel,
    TransformerLayer,
    masked_centre,
    parameter_table,
)
from alphastomics.model.diffusion import Diffusion
from alphastomics.variants import VARIANTS as NAMED_VARIANTS

SMALL = ModelConfig(d_model=32, num_heads=4, num_layers=2, dropout=0.0, time_embed_dim=16)
VARIANTS = [(False, "none", False)] + [
    (True, gate, qk) for gate in ("none", "headwise", "elementwise") for qk in (True, False)
]
IDS = ["linear"] + [f"softmax-{g}-{'qk' if qk else 'noqk'}" for _, g, qk in VARIANTS[1:]]
G = 6



def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: adaLN-Zero starts every block as the identity, which would make the
    padding and permutation tests pass without attention mixing any cells."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


# Equivalence tests run in float64: the Fourier features of the radius (up to 2^7 pi) amplify float32
# rounding differences of the centring sum order to ~1e-4, which is noise, not a broken property.
def denoiser(variant: tuple[bool, str, bool], dims: int, seed: int = 0) -> Denoiser:
    gated, gate, qk = variant
    cfg = dataclasses.replace(SMALL, attention="softmax" if gated else "linear", gate=gate, qk_norm=qk)
    return randomised(Denoiser(cfg, G, dims), seed).double()


def tensors(b: int, n: int, dims: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, n, G, generator=g, dtype=torch.float64),
        torch.randn(b, n, dims, generator=g, dtype=torch.float64),
        torch.rand(b, generator=g, dtype=torch.float64),
        torch.ones(b, n, dtype=torch.bool),
    )


@pytest.mark.parametrize("mask_fraction", [0.0, 0.15])
@pytest.mark.parametrize("mode", ["expr_to_pos", "pos_to_expr", "joint"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_every_parameter_gets_a_gradient_in_every_mode(variant, mode, mask_fraction):
    # The model builds only the heads its mode trains: no parameter is left without a gradient (DDP then
    # needs no find_unused_parameters, and no dead weight is saved in checkpoints).
    gated, gate, qk = variant
    settings = {"d_model": 32, "num_heads": 4, "num_layers": 2, "dropout": 0.0, "time_embed_dim": 16,
                "attention": "softmax" if gated else "linear", "gate": gate, "qk_norm": qk}
    cfg = load_config(overrides={"TransformerLayer_setting": settings,
                                 "diffusion": {"mode": mode, "mask_fraction": mask_fraction}})
    model = randomised(Denoiser.from_config(cfg, G, 2)).train()
    has_expression_head = mode != "expr_to_pos" or mask_fraction > 0
    assert (model.expression_out is not None) == has_expression_head
    assert (model.position_out is not None) == (mode != "pos_to_expr")
    expr, pos, _, mask = tensors(2, 12, 2)
    mask[1, 9:] = False
    batch = types.SimpleNamespace(expression=expr.float(), positions=pos.float(), mask=mask)
    losses = Diffusion(cfg.diffusion).training_losses(model, batch, generator=torch.Generator().manual_seed(0))
    losses["loss"].backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_forward_backward_finite(variant, dims):
    model = denoiser(variant, dims).train()
    expr, pos, t, mask = tensors(2, 9, dims)
    mask[1, 6:] = False
    e, p = model(expr, pos, t, mask)
    assert e.shape == (2, 9, G) and p.shape == (2, 9, dims)
    (e.pow(2).sum() + p.pow(2).sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("cls", [GatedSelfAttentionModel, TransformerLayer])
def test_block_interface_shapes(cls):
    block = randomised(cls(SMALL, 3)).double()
    h = torch.randn(2, 5, SMALL.d_model, dtype=torch.float64)
    time = torch.randn(2, SMALL.d_model, dtype=torch.float64)
    pos = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    h_out, pos_out, time_out, diag = block(h, time, pos, mask)
    assert h_out.shape == h.shape and pos_out.shape == pos.shape and diag is None
    torch.testing.assert_close(time_out, time)
    torch.testing.assert_close(pos_out.mean(1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_padding_leaves_real_cells_unchanged(variant):
    model = denoiser(variant, 2)
    expr, pos, t, mask = tensors(1, 8, 2)
    g = torch.Generator().manual_seed(9)
    pad_e = 50 * torch.randn(1, 5, G, generator=g, dtype=torch.float64)
    pad_p = 50 * torch.randn(1, 5, 2, generator=g, dtype=torch.float64)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], 1)
    e1, p1 = model(expr, pos, t, mask)
    e2, p2 = model(torch.cat([expr, pad_e], 1), torch.cat([pos, pad_p], 1), t, padded_mask)
    torch.testing.assert_close(e2[:, :8], e1, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(p2[:, :8], p1, rtol=1e-8, atol=1e-8)
    assert (e2[:, 8:] == 0).all() and (p2[:, 8:] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_permutation_equivariance(variant):
    model = denoiser(variant, 3)
    expr, pos, t, mask = tensors(2, 10, 3)
    mask[0, 7:] = False
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4))
    e1, p1 = model(expr, pos, t, mask)
    e2, p2 = model(expr[:, perm], pos[:, perm], t, mask[:, perm])
    torch.testing.assert_close(e2, e1[:, perm], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(p2, p1[:, perm], rtol=1e-8, atol=1e-8)


def test_outputs_are_centred_and_translation_invariant():
    model = denoiser((True, "headwise", True), 2)
    expr, pos, t, mask = tensors(2, 8, 2)
    mask[1, 5:] = False
    e1, p1 = model(expr, pos, t, mask)
    e2, p2 = model(expr, pos + torch.tensor([3.0, -7.0], dtype=torch.float64), t, mask)
    torch.testing.assert_close(p1, masked_centre(p1, mask), atol=1e-12, rtol=0)
    torch.testing.assert_close(p2, p1, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(e2, e1, rtol=1e-8, atol=1e-8)


def test_each_modality_has_its_own_time():
    model = denoiser((True, "headwise", True), 2)
    expr, pos, _, mask = tensors(1, 6, 2)
    a = torch.tensor([0.2], dtype=torch.float64)
    b = torch.tensor([0.8], dtype=torch.float64)
    e_ab, _ = model(expr, pos, a, mask, expression_t=a, position_t=b)
    e_ba, _ = model(expr, pos, a, mask, expression_t=b, position_t=a)
    e_default, _ = model(expr, pos, a, mask)  # t for both
    e_explicit, _ = model(expr, pos, b, mask, expression_t=a, position_t=a)
    assert not torch.allclose(e_ab, e_ba, atol=1e-4)
    torch.testing.assert_close(e_default, e_explicit)


def test_time_reaches_every_block():
    model = denoiser((True, "headwise", True), 2)
    g = torch.Generator().manual_seed(6)
    h = torch.randn(1, 6, SMALL.d_model, generator=g, dtype=torch.float64)
    pos = torch.randn(1, 6, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 6, dtype=torch.bool)
    early, late = (model.expression_time(torch.tensor([x], dtype=torch.float64)) for x in (0.05, 0.95))
    for layer in model.layers:
        assert not torch.allclose(layer(h, early, pos, mask)[0], layer(h, late, pos, mask)[0], atol=1e-4)


def test_initial_model_predicts_gene_mean_and_current_coordinates():
    # adaLN-Zero + zero heads: the untrained model is the identity on coordinates and predicts 0 expression.
    model = Denoiser(SMALL, G, 2).double()
    expr, pos, t, mask = tensors(2, 7, 2)
    e, p = model(expr, pos, t, mask)
    assert (e == 0).all()
    torch.testing.assert_close(p, masked_centre(pos, mask))


def _initial(variant_name: str, seed: int) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(dataclasses.replace(SMALL, **NAMED_VARIANTS[variant_name].settings()), G, 3)


def test_variants_of_one_seed_start_from_the_same_weights():
    # Common random numbers: every parameter two variants share starts equal, the query rows of a gated
    # model's fused query-and-gate projection included (old code: the larger fused matrix shifted every
    # later draw, so a gated and an ungated model of one seed shared no initial weight).
    reference = dict(_initial("softmax", 7).named_parameters())
    for name in ("linear", "gated_headwise", "gated_elementwise", "gated_headwise_no_qknorm"):
        params = dict(_initial(name, 7).named_parameters())
        # Only QK-norm's gains (initialised to 1, drawn from nothing) may be missing from one of the two.
        assert all("_norm." in key for key in set(reference) ^ set(params)), name
        for key, p in params.items():
            if key.endswith("to_q.weight") and p.shape != reference[key].shape:
                d = p.shape[1]
                torch.testing.assert_close(p[:d], reference[key], rtol=0, atol=0)
                gate = p[d:]
                bound = (6 / (d + gate.shape[0])) ** 0.5  # Xavier of the gate's own shape
                assert 0.5 * bound < gate.abs().max() <= bound
            elif key in reference:
                torch.testing.assert_close(p, reference[key], rtol=0, atol=0)
    # ... and another seed starts elsewhere; the same seed twice starts at the same place.
    other = dict(_initial("softmax", 8).named_parameters())
    again = dict(_initial("softmax", 7).named_parameters())
    key = "layers.0.attention.attn.to_q.weight"
    assert not torch.equal(other[key], reference[key])
    assert torch.equal(again[key], reference[key])


def test_diagnostics_per_layer():
    model = denoiser((True, "elementwise", True), 2)
    expr, pos, t, mask = tensors(2, 7, 2)
    mask[0, 4:] = False
    e, p, diags = model(expr, pos, t, mask, return_diagnostics=True)
    e_fast, p_fast = model(expr, pos, t, mask)
    torch.testing.assert_close(e, e_fast, rtol=1e-8, atol=1e-8)
    assert len(diags) == SMALL.num_layers
    for d in diags:
        assert d["attn"].shape == (2, SMALL.num_heads, 7, 7)
        assert d["gate"].shape == (2, 7, SMALL.d_model)


def test_design_note_config_block_builds_the_model(design_note_yaml):
    cfg = load_config(design_note_yaml)
    model = Denoiser(cfg.model, 84, 3)
    assert len(model.layers) == 6
    attn = model.layers[0].attention.attn
    assert attn.kernel == "softmax" and attn.gate_type == "headwise" and attn.q_norm is not None
    expr, pos, mask = torch.randn(1, 12, 84), torch.randn(1, 12, 3), torch.ones(1, 12, dtype=torch.bool)
    e, p = model(expr, pos, torch.rand(1), mask)
    assert e.shape == (1, 12, 84) and p.shape == (1, 12, 3)


def test_parameter_table_matches_hand_counts():
    cfg = ModelConfig()  # the design note's size: d_model 256, 8 heads, 6 layers
    d, h = cfg.d_model, cfg.num_heads
    rows = {r["variant"]: r for r in parameter_table(cfg, 84, 3)}
    assert list(rows) == list(NAMED_VARIANTS)
    linear = 4 * d * d
    assert rows["linear"]["attention_per_layer"] == linear
    assert rows["gated_headwise"]["attention_per_layer"] == linear + d * h + 2 * (d // h)
    assert rows["gated_elementwise"]["attention_per_layer"] == linear + d * d + 2 * (d // h)
    overhead = {name: row["attention_per_layer_vs_linear"] for name, row in rows.items()}
    assert overhead["gated_headwise"] == pytest.approx((d * h + 64) / linear)
    assert overhead["gated_elementwise"] == pytest.approx(0.25 + 64 / linear)
    extra = rows["gated_elementwise"]["total"] - rows["linear"]["total"]
    assert extra == cfg.num_layers * (d * d + 2 * (d // h))


@pytest.mark.parametrize("d_model,heads", [(256, 8), (64, 4), (96, 3)])
def test_counted_attention_parameters_match_the_module(d_model, heads):
    """The report counts attention parameters without torch (Variant.attention_parameters): the module's."""
    cfg = dataclasses.replace(ModelConfig(), d_model=d_model, num_heads=heads)
    for row in parameter_table(cfg, 84, 3):
        assert NAMED_VARIANTS[row["variant"]].attention_parameters(d_model, heads) == row["attention_per_layer"]


def test_params_cli_prints_every_variant(capsys):
    assert cli(["params", "--set", "TransformerLayer_setting.num_layers=2"]) == 0
    out = capsys.readouterr().out
    assert "2 layers" in out
    for name in NAMED_VARIANTS:
        assert name in out
    assert "+25.0%" in out  # elementwise gate: d^2 extra on 4 d^2


def test_params_sizes_the_heads_from_the_data_set(tiny_processed, capsys):
    manifest = json.loads((tiny_processed / "manifest.json").read_text())
    g, d = manifest["n_genes"], manifest["dims"]
    assert cli(["params", "--data_dir", str(tiny_processed)]) == 0
    assert f"G = {g} genes, D = {d}" in capsys.readouterr().out
    # a user's file without its processed folder: one line naming the fix, not bdtnp's shape
    assert cli(["params", "--set", "dataset.source=h5ad", "--set", "dataset.path=mine.h5ad"]) == 2
    assert "pass --data_dir" in capsys.readouterr().err
