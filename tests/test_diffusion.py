"""Diffusion: schedule, losses (invariances, chunks, masking), sampler (posterior, frames, seeds), training."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from torch import nn

from alphastomics.config import ConfigError, DiffusionConfig, ModelConfig
from alphastomics.model import diffusion as diffusion_module
from alphastomics.model.denoiser import Denoiser, masked_centre
from alphastomics.model.diffusion import (
    Diffusion,
    _DistanceSSE,
    cosine_alpha_bar,
    kabsch_align,
    masked_reconstruction,
    pairwise_distance_mse,
)

G = 5



def batch(b: int = 2, n: int = 12, dims: int = 2, pad: int = 0, seed: int = 0) -> SimpleNamespace:
    """Random cells; the last ``pad`` rows of example 0 are padding (zeros), as data.Batch pads."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    if pad:
        mask[0, n - pad :] = False
    m = mask[..., None].float()
    return SimpleNamespace(
        expression=torch.randn(b, n, G, generator=g) * m,
        positions=torch.randn(b, n, dims, generator=g) * m,
        mask=mask,
    )


def random_orthogonal(dims: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dims, dims, generator=generator, dtype=torch.float64))
    if torch.rand(1, generator=generator) < 0.5:
        q = q @ torch.diag(torch.tensor([-1.0] + [1.0] * (dims - 1), dtype=torch.float64))  # a reflection
    return q.to(dtype)


def rigid_rmsd(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMSD after centring and the best rotation/reflection (scipy, independent of the package)."""
    a = a.double().numpy() - a.double().numpy().mean(0)
    b = b.double().numpy() - b.double().numpy().mean(0)
    r, _ = orthogonal_procrustes(a, b)
    return float(np.sqrt(((a @ r - b) ** 2).sum(1).mean()))


class Oracle(nn.Module):
    """Returns the true x0; positions under a fresh arbitrary rotation/reflection at every call (what a
    model trained with the distance loss may do). Records the noisy coordinates it is given."""

    def __init__(self, truth: SimpleNamespace, rotate: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.expression = truth.expression
        self.positions = masked_centre(truth.positions, truth.mask)
        self.rotate = rotate
        self.g = torch.Generator().manual_seed(seed)
        self.seen: list[tuple[torch.Tensor, float]] = []

    def forward(self, expression, positions, t, mask, *, expression_t=None, position_t=None, padded=None):
        self.seen.append((positions.clone(), float(position_t[0])))
        x0 = self.positions
        if self.rotate:
            x0 = torch.stack([p @ random_orthogonal(p.shape[-1], self.g) for p in x0])
        return self.expression.clone(), x0


# ------------------------------------------------------------------------------------------------------
# schedule


def test_cosine_schedule_by_hand():
    ab = cosine_alpha_bar(1000)
    s = 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert ab[0] == 1.0
    assert ab[500].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-12)
    assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < 1e-4
    betas = 1 - ab[1:] / ab[:-1]
    assert betas.max() <= 0.999 + 1e-12


def test_timesteps_are_strided_from_T_to_0():
    d = Diffusion(DiffusionConfig(num_timesteps=1000))
    ts = d.timesteps(50)
    assert ts[0] == 1000 and ts[-1] == 0 and len(ts) == 51
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert Diffusion(DiffusionConfig(num_timesteps=10)).timesteps(50) == list(range(10, -1, -1))


@pytest.mark.parametrize(
    "key,value",
    [("mask_fraction", 1.0), ("sampling_steps", 0), ("ddim_eta", -0.1), ("distance_chunk_size", 0)],
)
def test_bad_diffusion_config_is_a_config_error(key, value):
    with pytest.raises(ConfigError, match=f"diffusion.{key}"):
        Diffusion(dataclasses.replace(DiffusionConfig(), **{key: value}))


# ------------------------------------------------------------------------------------------------------
# position loss


def test_distance_loss_by_hand():
    true = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])  # distances 3, 4, 5
    pred = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 4.0]]])  # distances 1, 4, sqrt(17)
    mask = torch.ones(1, 3, dtype=torch.bool)
    expected = ((1 - 3) ** 2 + 0 + (math.sqrt(17) - 5) ** 2) * 2 / 6
    assert pairwise_distance_mse(pred, true, mask).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_distance_loss_invariant_to_rigid_motions_of_either_argument(dims):
    b = batch(2, 15, dims, pad=4, seed=1)
    pred = b.positions + 0.3 * batch(2, 15, dims, pad=4, seed=2).positions
    base = pairwise_distance_mse(pred, b.positions, b.mask)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        q = random_orthogonal(dims, g)  # rotations and reflections
        shift = torch.randn(dims, generator=g) * 10
        moved_pred = (pred @ q + shift) * b.mask[..., None]
        moved_true = (b.positions @ q.T - shift) * b.mask[..., None]
        torch.testing.assert_close(pairwise_distance_mse(moved_pred, b.positions, b.mask), base)
        torch.testing.assert_close(pairwise_distance_mse(pred, moved_true, b.mask), base)
    assert base > 0


def test_distance_loss_chunked_equals_unchunked_with_gradients():
    b = batch(2, 13, 3, pad=5, seed=4)
    pred0 = b.positions + 0.5 * batch(2, 13, 3, seed=5).positions
    results = []
    for chunk in (1, 4, 13, 1000):
        pred = pred0.clone().requires_grad_(True)
        loss = pairwise_distance_mse(pred, b.positions, b.mask, chunk_size=chunk)
        loss.backward()
        results.append((loss.detach(), pred.grad))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        torch.testing.assert_close(grad, results[0][1])


@pytest.mark.parametrize("weights_kept", [True, False])
def test_distance_loss_closed_form_gradient_equals_autograd_of_the_naive_loss(weights_kept, monkeypatch):
    # Training takes the closed-form backward (pred needs a gradient, the truth does not); the reference is
    # autograd through the whole N x N formula, in float64, with padding and two coincident real cells.
    # Both ways to the pair weights: kept from the forward pass (under the memory cap) or recomputed.
    monkeypatch.setattr(_DistanceSSE, "WEIGHTS_KEPT_BYTES", 2**40 if weights_kept else 0)
    b = batch(2, 11, 3, pad=4, seed=21)
    pred0 = (b.positions + 0.4 * batch(2, 11, 3, seed=22).positions).double()
    pred0[0, 1] = pred0[0, 0]
    true, m = b.positions.double(), b.mask.double()

    def naive(p):
        def dist(x):
            return torch.sqrt(((x[:, :, None] - x[:, None]) ** 2).sum(-1).clamp_min(1e-12))

        pair = m[:, :, None] * m[:, None, :]
        # each section's mean over its pairs, then the mean over sections
        return (((dist(p) - dist(true)) ** 2 * pair).sum((1, 2)) / (m.sum(1) * (m.sum(1) - 1))).mean()

    ref = pred0.clone().requires_grad_(True)
    naive(ref).backward()
    for chunk in (1, 4, 1000):
        pred = pred0.clone().requires_grad_(True)
        loss = pairwise_distance_mse(pred, true, b.mask, chunk_size=chunk)
        loss.backward()
        torch.testing.assert_close(loss, naive(pred0))
        torch.testing.assert_close(pred.grad, ref.grad, rtol=1e-10, atol=1e-12)
    assert ref.grad.abs().sum() > 0


def test_distance_loss_kept_weights_give_the_same_gradient_bit_for_bit(monkeypatch):
    b = batch(2, 300, 2, pad=20, seed=5)
    grads = []
    for cap in (2**40, 0):
        monkeypatch.setattr(_DistanceSSE, "WEIGHTS_KEPT_BYTES", cap)
        pred = (b.positions * 1.3 + 0.2).requires_grad_(True)
        pairwise_distance_mse(pred, b.positions, b.mask, chunk_size=64).backward()
        grads.append(pred.grad)
    assert torch.equal(grads[0], grads[1])


def test_distance_loss_backward_above_the_cap_keeps_no_n_by_n_tensor(monkeypatch):
    monkeypatch.setattr(_DistanceSSE, "WEIGHTS_KEPT_BYTES", 0)
    n, chunk = 256, 64
    b = batch(1, n, 2, seed=17)
    pred = (b.positions + 0.1).requires_grad_(True)
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pairwise_distance_mse(pred, b.positions, b.mask, chunk_size=chunk)
    loss.backward()
    # Checkpointed chunks keep only their inputs (O(N D) each), not the (chunk, N) distance blocks:
    # everything kept for the backward pass together is far below one N x N matrix.
    assert sum(saved) < n * n / 4, sum(saved)
    assert torch.isfinite(pred.grad).all()


def test_distance_loss_ignores_padding_and_has_finite_gradient_for_coincident_cells():
    b = batch(1, 8, 2, pad=3, seed=6)
    pred = b.positions.clone()
    pred[0, 1] = pred[0, 0]  # two real cells on the same spot
    garbage = pred.clone()
    garbage[0, 5:] = 1e3
    pred.requires_grad_(True)
    loss = pairwise_distance_mse(pred, b.positions, b.mask)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    torch.testing.assert_close(pairwise_distance_mse(garbage, b.positions, b.mask), loss.detach())


def test_kabsch_recovers_a_rotation_and_reflection():
    b = batch(1, 20, 3, pad=6, seed=7)
    x = masked_centre(b.positions, b.mask)
    q = random_orthogonal(3, torch.Generator().manual_seed(8))
    torch.testing.assert_close(kabsch_align(x @ q, x, b.mask), x, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------
# training losses


@pytest.mark.parametrize("mode", ["expr_to_pos", "pos_to_expr", "joint"])
def test_oracle_has_zero_loss_in_every_mode_with_masking(mode):
    b = batch(2, 10, 3, pad=3, seed=9)
    cfg = DiffusionConfig(mode=mode, mask_fraction=0.3)
    losses = Diffusion(cfg).training_losses(Oracle(b, rotate=True), b, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "expression", "position", "masked"}
    for key, value in losses.items():
        assert value.item() == pytest.approx(0.0, abs=1e-8), key


class Spy(nn.Module):
    """Records the model's inputs and predicts zeros."""

    def forward(self, expression, positions, t, mask, *, expression_t=None, position_t=None, padded=None):
        self.inputs = (expression, positions, mask, expression_t, position_t)
        return torch.zeros_like(expression), torch.zeros_like(positions)


def test_noising_centres_positions_keeps_condition_clean_and_masks_features():
    b = batch(2, 30, 2, pad=10, seed=10)
    b.positions = b.positions + 5.0 * b.mask[..., None]  # off-centre input
    spy = Spy()
    cfg = DiffusionConfig(mode="expr_to_pos", mask_fraction=0.25)
    losses = Diffusion(cfg).training_losses(spy, b, torch.Generator().manual_seed(1))
    expr_in, pos_in, mask, t_e, t_p = spy.inputs
    torch.testing.assert_close(masked_centre(pos_in, mask), pos_in, atol=1e-5, rtol=0)
    assert (pos_in[~mask] == 0).all()
    assert (t_e == 0).all() and (t_p > 0).all()
    hidden = (expr_in == 0) & (b.expression != 0) & mask[..., None]
    kept = ~hidden & mask[..., None]
    torch.testing.assert_close(expr_in[kept], b.expression[kept])  # the condition is clean
    assert 0.15 < hidden.sum().item() / (mask.sum().item() * G) < 0.35
    # zero predictions: the masked term is each section's mean square of its hidden clean values, averaged
    # over the sections
    per_section = [b.expression[i][hidden[i]].pow(2).mean() for i in range(2)]
    torch.testing.assert_close(losses["masked"], torch.stack(per_section).mean())
    assert losses["expression"] == 0 and losses["position"] > 0


def test_loss_weights_from_config():
    b = batch(2, 10, 2, seed=11)
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    cfg = DiffusionConfig(mode="joint", mask_fraction=0.2)
    base = Diffusion(cfg).training_losses(Spy(), b, gen())
    weighted = Diffusion(
        dataclasses.replace(cfg, expression_loss_weight=2.0, position_loss_weight=0.5, mask_loss_weight=3.0)
    ).training_losses(Spy(), b, gen())
    expected = 2.0 * base["expression"] + 0.5 * base["position"] + 3.0 * base["masked"]
    torch.testing.assert_close(weighted["loss"], expected)


def test_masked_reconstruction_metric():
    b = batch(2, 10, 2, pad=2, seed=12)
    assert masked_reconstruction(Oracle(b), b, 0.3, torch.Generator().manual_seed(0)) == pytest.approx(0.0)
    value = masked_reconstruction(Spy(), b, 0.3, torch.Generator().manual_seed(0))
    draw = torch.rand(b.expression.shape, generator=torch.Generator().manual_seed(0))
    hidden = (draw < 0.3) & b.mask[..., None]
    per_section = [b.expression[i][hidden[i]].pow(2).mean().item() for i in range(2)]
    assert value == pytest.approx(sum(per_section) / 2, rel=1e-6)


# ------------------------------------------------------------------------------------------------------
# sampler


def test_ancestral_step_is_the_ddpm_posterior():
    d = Diffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(13)
    x_t, x0, z = (torch.randn(1, 6, 2, generator=g, dtype=torch.float64) for _ in range(3))
    ab = d.alpha_bar
    for t, s in [(1000, 980), (500, 499), (40, 20), (20, 0)]:
        var = (1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s])  # beta_tilde of the strided step
        noisy = d.ancestral_step(x_t, x0, t, s, z)
        mean = d.ancestral_step(x_t, x0, t, s, torch.zeros_like(z))
        # the noise is scaled by the standard deviation sqrt(variance), not by the variance (LUNA's slip)
        torch.testing.assert_close(noisy - mean, var.sqrt() * z)
        torch.testing.assert_close(d.ddim_step(x_t, x0, t, s, z, eta=1.0), noisy)
    torch.testing.assert_close(d.ancestral_step(x_t, x0, 20, 0, z), x0)


def _rho(seen: list[tuple[torch.Tensor, float]], truth: torch.Tensor, d: Diffusion) -> list[float]:
    """Per call: min over rigid frames of |x_t - sqrt(ab) x0 Q| / sqrt(1 - ab), per noise coordinate."""
    out = []
    n, dims = truth.shape
    for pos, t in seen:
        ab = d.alpha_bar[round(t * d.T)].item()
        x = pos[0].double().numpy()
        y = math.sqrt(ab) * truth.double().numpy()
        r, _ = orthogonal_procrustes(y, x)
        out.append(float(np.linalg.norm(x - y @ r) / math.sqrt(1 - ab) / math.sqrt((n - 1) * dims)))
    return out


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("dims", [2, 3])
def test_sampler_with_frame_free_oracle_returns_truth_up_to_rigid_motion(sampler, dims, monkeypatch):
    b = batch(1, 40, dims, seed=14)
    truth = masked_centre(b.positions, b.mask)[0]
    d = Diffusion(DiffusionConfig(mode="expr_to_pos", sampler=sampler, sampling_steps=25))
    oracle = Oracle(b)
    expr, pos = d.sample(oracle, b, generator=torch.Generator().manual_seed(0))
    assert rigid_rmsd(pos[0], truth) < 1e-4
    torch.testing.assert_close(expr, b.expression)  # the condition is returned as given
    # Frame consistency: every x_t the model sees is sqrt(ab) x0 (some frame) + unit-variance noise.
    rho = _rho(oracle.seen, truth, d)
    assert max(rho) < 1.5
    if sampler == "ddim":  # deterministic DDIM can only shrink the residual noise (docs/model.md)
        assert all(b_ <= a * (1 + 1e-4) for a, b_ in zip(rho, rho[1:]))  # float32 slack
    # Without the alignment the frames mix and the inputs leave the noise model: the test can fail.
    monkeypatch.setattr(diffusion_module, "kabsch_align", lambda x, target, mask: x)
    oracle = Oracle(b)
    d.sample(oracle, b, generator=torch.Generator().manual_seed(0))
    assert max(_rho(oracle.seen, truth, d)) > 3.0


def test_joint_and_pos_to_expr_sampling_with_oracle():
    b = batch(2, 16, 3, pad=5, seed=15)
    for mode in ("joint", "pos_to_expr"):
        d = Diffusion(DiffusionConfig(mode=mode, sampling_steps=10))
        expr, pos = d.sample(Oracle(b), b, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(expr, b.expression, atol=1e-5, rtol=1e-5)
        for i in range(2):
            real = b.mask[i]
            assert rigid_rmsd(pos[i][real], b.positions[i][real]) < 1e-4
        assert (pos[~b.mask] == 0).all() and (expr[~b.mask] == 0).all()
    torch.testing.assert_close(pos, masked_centre(b.positions, b.mask))  # pos_to_expr: condition as given


def tiny_model(dims: int, gated: bool = True, seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=32, num_heads=4, num_layers=2, dropout=0.0, time_embed_dim=16, attention="softmax" if gated else "linear"
    )
    return Denoiser(cfg, G, dims)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.5), ("ancestral", 0.0)])
def test_sampler_is_deterministic_for_a_seed(sampler, eta):
    model = tiny_model(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    b = batch(2, 9, 2, pad=2, seed=16)
    d = Diffusion(DiffusionConfig(mode="joint", sampler=sampler, ddim_eta=eta, sampling_steps=8))
    run = lambda seed: d.sample(model, b, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    e1, p1 = run(3)
    e2, p2 = run(3)
    e3, p3 = run(4)
    assert torch.equal(e1, e2) and torch.equal(p1, p2)
    assert not torch.allclose(p1, p3)
    assert torch.isfinite(e1).all() and torch.isfinite(p1).all()


# ------------------------------------------------------------------------------------------------------
# training


def section(n: int = 48, seed: int = 0) -> SimpleNamespace:
    """One small synthetic 2D section whose genes are smooth functions of position (so they place cells)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(1, n, 2, generator=g) * 2 - 1
    x, y = pos[..., 0], pos[..., 1]
    genes = [x, y, torch.sin(3 * x), torch.cos(3 * y), torch.exp(-4 * (x * x + y * y))]
    expr = torch.stack(genes, -1)
    expr = (expr - expr.mean(1, keepdim=True)) / expr.std(1, keepdim=True)
    return SimpleNamespace(expression=expr, positions=pos, mask=torch.ones(1, n, dtype=torch.bool))


def eval_loss(d: Diffusion, model: nn.Module, b: SimpleNamespace, draws: int = 16) -> float:
    with torch.no_grad():
        return sum(d.training_losses(model, b, torch.Generator().manual_seed(1000 + k))["loss"].item()
                   for k in range(draws)) / draws


def train(model: nn.Module, d: Diffusion, b: SimpleNamespace, steps: int, lr: float = 3e-3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        d.training_losses(model, b, gen)["loss"].backward()
        opt.step()


def test_a_training_step_lowers_the_loss_on_a_tiny_batch():
    b = section(24)
    model = tiny_model(2)
    d = Diffusion(DiffusionConfig(mode="joint", mask_fraction=0.2))
    fixed = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    before = d.training_losses(model, b, fixed())["loss"].item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        d.training_losses(model, b, fixed())["loss"].backward()
        opt.step()
    assert d.training_losses(model, b, fixed())["loss"].item() < before


@pytest.mark.slow
@pytest.mark.parametrize("gated", [False, True], ids=["linear", "gated"])
def test_overfits_one_small_section(gated):
    b = section()
    model = tiny_model(2, gated=gated)
    d = Diffusion(DiffusionConfig(mode="expr_to_pos"))
    before = eval_loss(d, model, b)
    train(model, d, b, steps=200)
    after = eval_loss(d, model, b)
    # A model or loss that cannot learn stays near its start; a working one drops by far more than 10x.
    assert after < 0.1 * before, (before, after)
