"""Diffusion over both modalities: cosine schedule, noising, losses and the sampler (x0 prediction).

- Schedule: the cosine schedule of Nichol & Dhariwal ("Improved Denoising Diffusion Probabilistic Models",
  ICML 2021), T = ``num_timesteps``, betas clipped at 0.999.
- Positions are centred over real cells before noising and the noise is centred too (the zero centre-of-mass
  subspace of E(n) diffusion models, Hoogeboom et al. 2022), so translation never has to be learned.
- Modes (DESIGN section 5): ``expr_to_pos`` (LUNA's tissue reassembly), ``pos_to_expr`` (imputation),
  ``joint``; the conditioning modality stays clean and the model is told so through its own time (t = 0).
- Losses: expression MSE over real cells; position MSE between predicted and true pairwise-distance matrices
  over real cells (invariant to rotation, reflection and translation), in row chunks with a closed-form
  gradient so memory stays O(chunk x N) in the forward and the backward pass; masked diffusion (design
  note): a fraction of expression entries is hidden and reconstructed towards the clean x0. Every term is a
  mean per section (over its cells, pairs or hidden entries), then a mean over the sections of the batch: a
  1,000-cell section weighs as much as a 300-cell one, and k micro-batches of b sections (or k ranks) give
  the gradient of one batch of k b sections.
- Sampler: strided steps, DDIM (Song et al., ICLR 2021; ``ddim_eta``) or ancestral with the DDPM posterior
  variance (LUNA used the standard deviation where the variance belongs). Because the distance loss leaves
  the orientation of the predicted coordinates free, every predicted x0 is first aligned onto the current
  x_t by orthogonal Procrustes (Kabsch, reflections allowed) over real cells; docs/model.md says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from alphastomics.config import ConfigError, DiffusionConfig, Mode, generates_expression, generates_positions
from alphastomics.model.denoiser import masked_centre


class BatchLike(Protocol):
    """What diffusion needs from ``alphastomics.data.batches.Batch``."""

    expression: Tensor  # (B, N, G)
    positions: Tensor  # (B, N, D)
    mask: Tensor  # (B, N) bool


def cosine_alpha_bar(num_timesteps: int, s: float = 0.008) -> Tensor:
    """alpha_bar[t] for t = 0..T (float64, alpha_bar[0] = 1), betas clipped at 0.999."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    # Draw on the generator's device so a CPU generator gives the same numbers whatever the model's device.
    return generator.device if generator is not None else device


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _row_distances(rows: Tensor, points: Tensor) -> Tensor:
    """(B, c, D), (B, N, D) -> (B, c, N) Euclidean distances."""
    # Differences (not |a|^2 + |b|^2 - 2ab) keep self-distances exactly 0; the clamp zeroes their
    # gradient instead of the infinite gradient of sqrt at 0.
    return torch.sqrt(_row_sq_distances(rows, points).clamp_min(1e-12))


def _row_sq_distances(rows: Tensor, points: Tensor) -> Tensor:
    """(B, c, D), (B, N, D) -> (B, c, N) squared distances, one coordinate at a time: D planes of (B, c, N)
    instead of one (B, c, N, D) tensor summed over its short last axis (several times faster on the CPU)."""
    sq = None
    for k in range(rows.shape[-1]):
        diff = rows[:, :, None, k] - points[:, None, :, k]
        sq = diff * diff if sq is None else torch.addcmul(sq, diff, diff)
    return sq


def _chunk_sse(
    pred_rows: Tensor, pred: Tensor, true_rows: Tensor, true: Tensor, m_rows: Tensor, m: Tensor
) -> Tensor:
    """(B,) sums of squared distance errors over the pairs of one row chunk."""
    err = _row_distances(pred_rows, pred) - _row_distances(true_rows, true)
    pair_mask = m_rows[:, :, None] * m[:, None, :]  # (B, c, N), built here so checkpointing frees it
    return (err * err * pair_mask).sum((1, 2))


def _chunk_weights(d: Tensor, sq: Tensor, t: Tensor, m_rows: Tensor, m: Tensor) -> Tensor:
    """(B, c, N) w = m_i m_j (d - t) / d of one row chunk, 0 for pairs closer than 1e-6 (see _DistanceSSE)."""
    w = (d - t) / d * (m_rows[:, :, None] * m[:, None, :])
    return w.masked_fill(sq < 1e-12, 0.0)


class _DistanceSSE(torch.autograd.Function):
    """Per example (B,): sum over pairs of (|p_i - p_j| - |x_i - x_j|)^2 m_i m_j, with a closed-form gradient
    for ``pred``.

    d/dp_k = 4 sum_j w_kj (p_k - p_j), w_kj = m_k m_j (d_kj - t_kj) / d_kj (w is symmetric, every ordered
    pair counts), = 4 (p_k sum_j w_kj - (w p)_k): one (chunk, N) block at a time, a matrix product instead
    of autograd through the element-wise chain. Pairs closer than 1e-6 get w = 0, as the clamp in
    _row_distances gives them zero gradient. When all of w fits ``WEIGHTS_KEPT_BYTES`` (a section of up to
    ~5,000 cells in float32), the forward pass keeps it and the backward pass is the matrix products alone;
    beyond that only the inputs (O(N D)) are kept and the backward pass recomputes w chunk by chunk, the same
    numbers either way.
    """

    WEIGHTS_KEPT_BYTES = 256 * 2**20

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, pred: Tensor, true: Tensor, m: Tensor, chunk_size: int
    ) -> Tensor:
        ctx.chunk_size = chunk_size
        keep = pred.shape[0] * pred.shape[1] ** 2 * pred.element_size() <= _DistanceSSE.WEIGHTS_KEPT_BYTES
        chunks = []
        total = pred.new_zeros(pred.shape[0])
        for start in range(0, pred.shape[1], chunk_size):
            rows = slice(start, start + chunk_size)
            sq = _row_sq_distances(pred[:, rows], pred)
            d = torch.sqrt(sq.clamp_min(1e-12))
            t = _row_distances(true[:, rows], true)
            err = d - t
            total = total + (err * err * (m[:, rows, None] * m[:, None, :])).sum((1, 2))
            if keep:
                chunks.append(_chunk_weights(d, sq, t, m[:, rows], m))
        ctx.weights = chunks if keep else None
        ctx.save_for_backward(pred, true, m)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        pred, true, m = ctx.saved_tensors
        out = torch.empty_like(pred)
        for i, start in enumerate(range(0, pred.shape[1], ctx.chunk_size)):
            rows = slice(start, start + ctx.chunk_size)
            p_rows = pred[:, rows]
            if ctx.weights is not None:
                w = ctx.weights[i]
            else:
                sq = _row_sq_distances(p_rows, pred)
                d = torch.sqrt(sq.clamp_min(1e-12))
                w = _chunk_weights(d, sq, _row_distances(true[:, rows], true), m[:, rows], m)
            out[:, rows] = 4.0 * (p_rows * w.sum(-1, keepdim=True) - w @ pred)
        ctx.weights = None
        return out * grad[:, None, None], None, None, None


def section_mean(sums: Tensor, counts: Tensor) -> Tensor:
    """Mean over the sections that have something to count of ``sums / counts`` (both (B,)); 0 when none has.

    The loss reduction of every term: each section weighs the same, whatever its size."""
    has = counts > 0
    per_section = sums / counts.clamp_min(1.0)
    return (per_section * has).sum() / has.sum().clamp_min(1)


def pairwise_distance_mse(pred: Tensor, true: Tensor, mask: Tensor, chunk_size: int = 1024) -> Tensor:
    """Mean over sections of the mean over their real pairs i != j of (|p_i - p_j| - |x_i - x_j|)^2;
    pred, true (B, N, D), mask (B, N).

    Rows are processed ``chunk_size`` at a time, so no N x N tensor is built at once; the gradient for
    ``pred`` is computed in closed form chunk by chunk (_DistanceSSE, which keeps the pair weights between the
    passes only while they fit its memory cap); when
    ``true`` needs a gradient too, autograd runs through checkpointed chunks instead.
    """
    m = mask.to(pred.dtype)
    n = m.sum(1)
    pairs = n * (n - 1)
    if torch.is_grad_enabled() and pred.requires_grad and not true.requires_grad:
        return section_mean(_DistanceSSE.apply(pred, true, m, chunk_size), pairs)
    # Gradients for the truth too (not used by training): autograd, each chunk checkpointed.
    total = pred.new_zeros(pred.shape[0])
    for start in range(0, pred.shape[1], chunk_size):
        rows = slice(start, start + chunk_size)
        args = (pred[:, rows], pred, true[:, rows], true, m[:, rows], m)
        if torch.is_grad_enabled() and pred.requires_grad:
            total = total + checkpoint(_chunk_sse, *args, use_reentrant=False)
        else:
            total = total + _chunk_sse(*args)
    return section_mean(total, pairs)


def masked_mse(pred: Tensor, true: Tensor, entries: Tensor) -> Tensor:
    """Mean over sections (dim 0) of the mean of (pred - true)^2 over their True entries of ``entries``
    (broadcast to pred's shape, (B, N, F))."""
    entries = entries.expand_as(pred).to(pred.dtype)
    return section_mean(((pred - true) ** 2 * entries).sum((1, 2)), entries.sum((1, 2)))


def kabsch_align(x: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Rotate/reflect centred x (B, N, D) onto centred target over real cells: x R, R = argmin |x R - y|."""
    m = mask[..., None].to(x.dtype)
    h = (x * m).transpose(1, 2) @ (target * m)  # (B, D, D)
    u, _, vh = torch.linalg.svd(h)
    return (x @ (u @ vh)) * m


class Diffusion:
    """Schedule, training losses and sampler for the denoiser (``alphastomics.model.denoiser.Denoiser``)."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        checks = [
            (cfg.num_timesteps >= 1, "num_timesteps", "use an integer >= 1"),
            (cfg.sampling_steps >= 1, "sampling_steps", "use an integer >= 1"),
            (0.0 <= cfg.mask_fraction < 1.0, "mask_fraction", "use a number in [0, 1)"),
            (cfg.ddim_eta >= 0.0, "ddim_eta", "use a number >= 0"),
            (cfg.distance_chunk_size >= 1, "distance_chunk_size", "use an integer >= 1"),
        ]
        for ok, key, fix in checks:
            if not ok:
                raise ConfigError(f"config: 'diffusion.{key}' is {getattr(cfg, key)!r}; {fix}")
        self.cfg = cfg
        self.T = cfg.num_timesteps
        self.alpha_bar = cosine_alpha_bar(cfg.num_timesteps)

    def _ab(self, t: Tensor | int, like: Tensor) -> Tensor:
        """alpha_bar at integer t, broadcast as (B, 1, 1) against ``like``."""
        ab = self.alpha_bar[torch.as_tensor(t).cpu()].to(like.device, like.dtype)
        return ab.reshape(-1, 1, 1)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def noise_generated(
        self, x_e: Tensor, x_p: Tensor, mask: Tensor, t: Tensor, mode: Mode, generator: torch.Generator | None,
        noise: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Noise the modality that ``mode`` generates to integer time t (B,), keep the other clean.

        x_e (B,N,G) and x_p (B,N,D, centred) are clean; returns (in_e, t_e, in_p, t_p) with t_e / t_p in
        [0, 1] (0 = clean, as the model is told). Expression noise is drawn first, then position noise
        (centred over real cells), so validation and diagnostics draw alike; ``noise`` = (expression,
        position) standard normal noise drawn by the caller instead (training draws it per example).
        """
        b, device = x_e.shape[0], x_e.device
        m = mask[..., None].to(x_e.dtype)
        clean = torch.zeros(b, device=device)
        in_e, t_e, in_p, t_p = x_e, clean, x_p, clean
        if generates_expression(mode):
            eps = noise[0] if noise is not None else _randn(tuple(x_e.shape), generator, device)
            in_e, t_e = self.q_sample(x_e, t, eps * m), t / self.T
        if generates_positions(mode):
            eps = noise[1] if noise is not None else _randn(tuple(x_p.shape), generator, device)
            in_p, t_p = self.q_sample(x_p, t, masked_centre(eps.to(x_p.dtype), mask)), t / self.T
        return in_e, t_e, in_p, t_p

    def example_draws(
        self, seeds: Sequence[int], lengths: Sequence[int], n: int, g: int, d: int, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(t (B,), expression noise (B,N,G), position noise (B,N,D), uniforms for the mask (B,N,G)) drawn per
        example from its own seed (one generator per kind of draw) for its ``lengths[i]`` real cells, padding
        rows zero: an example draws the same values whatever batch it is in and however far that batch is
        padded, so k micro-batches, or k ranks, see exactly the draws of one batch of all their examples."""
        t = torch.empty(len(seeds), dtype=torch.long)
        e, p, u = torch.zeros(len(seeds), n, g), torch.zeros(len(seeds), n, d), torch.ones(len(seeds), n, g)
        for i, (seed, k) in enumerate(zip(seeds, lengths)):
            gens = [torch.Generator().manual_seed(int(seed) + j) for j in range(4)]
            t[i] = torch.randint(1, self.T + 1, (1,), generator=gens[0])[0]
            if generates_expression(self.cfg.mode):
                e[i, :k] = torch.randn((k, g), generator=gens[1])
            if generates_positions(self.cfg.mode):
                p[i, :k] = torch.randn((k, d), generator=gens[2])
            if self.cfg.mask_fraction > 0:
                u[i, :k] = torch.rand((k, g), generator=gens[3])
        return t.to(device), e.to(device), p.to(device), u.to(device)

    # ----------------------------------------------------------------------------------------------------
    # training

    def training_losses(
        self,
        model: nn.Module,
        batch: BatchLike,
        generator: torch.Generator | None = None,
        *,
        example_seeds: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """One noisy draw per example -> {"loss", "expression", "position", "masked"} (scalars, each a mean
        over the batch's sections of the section's own mean). Draws come from ``example_seeds`` (one per
        example: ``example_draws``) when given, else from ``generator``."""
        cfg, mask = self.cfg, batch.mask
        device = batch.expression.device
        b, n, g = batch.expression.shape
        m = mask[..., None].to(batch.expression.dtype)
        x_e = batch.expression * m
        x_p = masked_centre(batch.positions, mask)
        diffuse_e, diffuse_p = generates_expression(cfg.mode), generates_positions(cfg.mode)

        if example_seeds is not None:
            if len(example_seeds) != b:
                raise ValueError(f"training_losses: {len(example_seeds)} example seeds for {b} examples")
            lengths = getattr(batch, "lengths", None) or mask.sum(1).tolist()
            t, noise_e, noise_p, uniform = self.example_draws(example_seeds, lengths, n, g, x_p.shape[-1], device)
            in_e, t_e, in_p, t_p = self.noise_generated(x_e, x_p, mask, t, cfg.mode, None, (noise_e, noise_p))
        else:
            t = torch.randint(1, self.T + 1, (b,), generator=generator, device=_gen_device(generator, device))
            in_e, t_e, in_p, t_p = self.noise_generated(x_e, x_p, mask, t.to(device), cfg.mode, generator)
            uniform = _rand((b, n, g), generator, device) if cfg.mask_fraction > 0 else None
        hidden = None
        if cfg.mask_fraction > 0:
            hidden = (uniform < cfg.mask_fraction) & mask[..., None]
            in_e = in_e.masked_fill(hidden, 0.0)  # 0 = the gene mean after standardisation

        pred_e, pred_p = model(in_e, in_p, t_e, mask, expression_t=t_e, position_t=t_p,
                               padded=getattr(batch, "padded", None))
        # Losses in float32 even under bf16 autocast: distance differences lose too many bits otherwise.
        dtype = torch.promote_types(pred_p.dtype, torch.float32)  # float64 stays float64 (tests)
        pred_e, pred_p, x_e, x_p = (x.to(dtype) for x in (pred_e, pred_p, x_e, x_p))
        zero = pred_e.new_zeros(())
        chunk = cfg.distance_chunk_size
        losses = {
            "expression": masked_mse(pred_e, x_e, mask[..., None]) if diffuse_e else zero,
            "position": pairwise_distance_mse(pred_p, x_p, mask, chunk) if diffuse_p else zero,
            "masked": masked_mse(pred_e, x_e, hidden) if hidden is not None else zero,
        }
        losses["loss"] = (
            cfg.expression_loss_weight * losses["expression"]
            + cfg.position_loss_weight * losses["position"]
            + cfg.mask_loss_weight * losses["masked"]
        )
        return losses

    # ----------------------------------------------------------------------------------------------------
    # sampling

    def timesteps(self, steps: int) -> list[int]:
        """Strided integer times from T down to 0 (at most ``steps`` model calls)."""
        ts = torch.linspace(self.T, 0, min(steps, self.T) + 1).round().long().unique_consecutive()
        return ts.tolist()

    def ddim_step(self, x_t: Tensor, x0: Tensor, t: int, s: int, noise: Tensor | None, eta: float) -> Tensor:
        """x_t -> x_s given the predicted x0 (Song et al. eq. 12); eta = 1 is the DDPM posterior."""
        ab_t, ab_s = self._ab(t, x_t), self._ab(s, x_t)
        eps = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
        x_s = ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).clamp_min(0).sqrt() * eps
        return x_s + sigma * noise if noise is not None and eta > 0 else x_s

    def ancestral_step(self, x_t: Tensor, x0: Tensor, t: int, s: int, noise: Tensor) -> Tensor:
        """A draw from q(x_s | x_t, x0) for strided s < t: posterior mean + sqrt(posterior variance) z."""
        ab_t, ab_s = self._ab(t, x_t), self._ab(s, x_t)
        alpha = ab_t / ab_s  # the effective alpha of the strided step
        mean = (ab_s.sqrt() * (1 - alpha) * x0 + alpha.sqrt() * (1 - ab_s) * x_t) / (1 - ab_t)
        variance = (1 - ab_s) / (1 - ab_t) * (1 - alpha)
        return mean + variance.sqrt() * noise

    def _update(self, x_t: Tensor, x0: Tensor, t: int, s: int, generator: torch.Generator | None) -> Tensor:
        if self.cfg.sampler == "ancestral":
            return self.ancestral_step(x_t, x0, t, s, _randn(tuple(x_t.shape), generator, x_t.device))
        noise = _randn(tuple(x_t.shape), generator, x_t.device) if self.cfg.ddim_eta > 0 else None
        return self.ddim_step(x_t, x0, t, s, noise, self.cfg.ddim_eta)

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        batch: BatchLike,
        *,
        mode: Mode | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Generate the diffused modality given the other -> (expression (B,N,G), positions (B,N,D))."""
        mode = mode or self.cfg.mode
        steps = steps or self.cfg.sampling_steps
        mask = batch.mask
        device = batch.expression.device
        b, n, g = batch.expression.shape
        m = mask[..., None].to(batch.expression.dtype)
        diffuse_e, diffuse_p = generates_expression(mode), generates_positions(mode)
        x_e = _randn((b, n, g), generator, device) * m if diffuse_e else batch.expression * m
        x_p = masked_centre(batch.positions, mask)
        if diffuse_p:
            x_p = masked_centre(_randn(tuple(x_p.shape), generator, device), mask)

        padded = getattr(batch, "padded", None)
        if padded is None:
            padded = not bool(mask.all())  # once per section, not per model call
        was_training = model.training
        model.eval()
        try:
            times = self.timesteps(steps)
            for t, s in zip(times[:-1], times[1:]):
                time = torch.full((b,), t / self.T, device=device)
                zero = torch.zeros(b, device=device)
                t_e, t_p = (time if diffuse_e else zero), (time if diffuse_p else zero)
                pred_e, pred_p = model(x_e, x_p, time, mask, expression_t=t_e, position_t=t_p, padded=padded)
                pred_e, pred_p = pred_e.to(x_e.dtype), pred_p.to(x_p.dtype)
                if diffuse_p:
                    # The distance loss leaves the frame of pred_p free: bring it into x_t's frame first.
                    pred_p = kabsch_align(masked_centre(pred_p, mask), x_p, mask)
                    x_p = masked_centre(self._update(x_p, pred_p, t, s, generator), mask)
                if diffuse_e:
                    x_e = self._update(x_e, pred_e, t, s, generator) * m
        finally:
            model.train(was_training)
        return x_e, x_p


@torch.no_grad()
def masked_reconstruction(
    model: nn.Module, batch: BatchLike, fraction: float, generator: torch.Generator | None = None
) -> float:
    """Hide ``fraction`` of the clean expression entries, give the true positions, score the hidden ones.

    Returns the MSE over hidden entries of real cells (model space: standardised expression).
    """
    mask = batch.mask
    device = batch.expression.device
    b = batch.expression.shape[0]
    m = mask[..., None].to(batch.expression.dtype)
    x_e = batch.expression * m
    hidden = (_rand(tuple(x_e.shape), generator, device) < fraction) & mask[..., None]
    zero = torch.zeros(b, device=device)
    was_training = model.training
    model.eval()
    try:
        pred_e, _ = model(
            x_e.masked_fill(hidden, 0.0), masked_centre(batch.positions, mask), zero, mask,
            expression_t=zero, position_t=zero,
        )
    finally:
        model.train(was_training)
    return float(masked_mse(pred_e, x_e, hidden))
