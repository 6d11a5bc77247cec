"""The v5.12.4 losses, vectorised.

Per-level statistics use a (B, 10) one-hot matrix (matmuls, no loops over levels or samples). Radius tensors
may carry a leading axis of 2 (z_A and z_B stacked); the radial, rank, zero-structure and geodesic terms then
return one value per path (shape (2,)), which the trainer weights and sums (upstream: A + B). Random pairs are drawn by the
caller (once per epoch for all steps) and passed in as index tensors. Nothing here calls ``.item()``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tvae.geometry import _EPS, distance


def level_targets(inner: float, outer: float, n_levels: int = 10, device=None) -> torch.Tensor:
    """Target hyperbolic radius per level: outer - (v/9)(outer - inner)."""
    v = torch.arange(n_levels, dtype=torch.float32, device=device)
    return outer - v / (n_levels - 1) * (outer - inner)


def level_mean_var(r: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level mean and unbiased variance of r (..., B) given onehot (B, L) and counts (L,).
    Levels with < 1 (mean) or < 2 (variance) members give 0."""
    mean = (r @ onehot) / counts.clamp_min(1)
    dev = r - mean @ onehot.T
    var = (dev * dev) @ onehot / (counts - 1).clamp_min(1)
    return mean, var


def rich_hierarchy(r_B: torch.Tensor, r_orig: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor,
                   targets: torch.Tensor, present: torch.Tensor, var_levels: torch.Tensor,
                   sep_lo: torch.Tensor, sep_hi: torch.Tensor, min_ratio: float, margin: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hierarchy, richness, separation) terms of RichHierarchyLoss on z_B's radii (unweighted).

    hierarchy  = mean over present levels of (mean r_v - t_v)^2
    richness   = sum over levels with >= 2 members of relu(min_ratio - Var(r|v)/(Var(r_orig|v)+1e-8))^2,
                 divided by the number of present levels
    separation = sum over consecutive present levels (a < b) of relu(mean r_b - mean r_a + margin)
    ``present``/``var_levels`` are float masks; ``sep_lo``/``sep_hi`` index consecutive present levels."""
    mean, var = level_mean_var(r_B, onehot, counts)
    n_present = present.sum().clamp_min(1)
    hierarchy = (((mean - targets) ** 2) * present).sum() / n_present
    _, var_orig = level_mean_var(r_orig, onehot, counts)
    ratio = var / (var_orig + 1e-8)
    richness = ((F.relu(min_ratio - ratio) ** 2) * var_levels).sum() / n_present
    separation = F.relu(mean[sep_hi] - mean[sep_lo] + margin).sum()
    return hierarchy, richness, separation


def reconstruction(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all B*9 positions; classes = trits + 1 (log-sum-exp form: cheaper than
    F.cross_entropy for 3 classes)."""
    picked = logits.gather(-1, classes.unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(logits, -1) - picked).mean()


def radial(r: torch.Tensor, v: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
           pi: torch.Tensor, pj: torch.Tensor, delta: float, margin_weight: float) -> torch.Tensor:
    """RadialHierarchyLoss: mean_i w_v (r_i - t_v)^2 + margin_weight * mean over pairs with v_i > v_j of
    relu(0.5 (v_i - v_j) delta - (r_j - r_i)). One value per leading A/B path."""
    primary = (weights[v] * (r - targets[v]) ** 2).mean(-1)
    vi, vj = v[pi], v[pj]
    keep = (vi > vj).to(r.dtype)
    pen = F.relu(0.5 * (vi - vj).to(r.dtype) * delta - (r[..., pj] - r[..., pi]))
    margin = (pen * keep).sum(-1) / keep.sum().clamp_min(1)
    return primary + margin_weight * margin


def rank(r: torch.Tensor, v: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor, temperature: float) -> torch.Tensor:
    """GlobalRankLoss: mean over pairs with v_i != v_j of |v_i - v_j| sigmoid(-sign(v_i - v_j)(r_j - r_i)/T)."""
    dv = (v[pi] - v[pj]).to(r.dtype)
    keep = (dv != 0).to(r.dtype)
    pen = dv.abs() * torch.sigmoid(-torch.sign(dv) * (r[..., pj] - r[..., pi]) / temperature)
    return (pen * keep).sum(-1) / keep.sum().clamp_min(1)


def zero_structure(r: torch.Tensor, zero_target: torch.Tensor, n_zero_std: torch.Tensor,
                   valuation_weight: float, sparsity_weight: float, target_correlation: float) -> torch.Tensor:
    """CombinedZeroStructureLoss, each weight applied once:
    valuation_weight * SmoothL1(r, target by zero-valuation) + sparsity_weight * (corr(n0, r) - target)^2.
    ``n_zero_std`` is the batch-standardised zero count (computed by the caller, it has no gradient)."""
    val = F.smooth_l1_loss(r, zero_target.expand_as(r), reduction="none", beta=1.0).mean(-1)
    r_std = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-8)
    corr = (n_zero_std * r_std).mean(-1)
    return valuation_weight * val + sparsity_weight * (corr - target_correlation) ** 2


def geodesic(z: torch.Tensor, pair_target: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor,
             c: torch.Tensor) -> torch.Tensor:
    """PAdicGeodesicLoss: SmoothL1(d(z_i, z_j), D exp(-v(|i-j|)/s)), mean over pairs, per path.

    With a fixed curvature the loss and its gradient are one hand-written autograd node (`_Geodesic`: about
    half the cost of the ~30 autograd nodes of the plain expression on a CPU); a learnable curvature takes the
    plain expression, which also differentiates with respect to c, and so does torch.compile (which fuses it).
    Both compute the same formula."""
    if c.requires_grad or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return _geodesic_reference(z, pair_target, pi, pj, c)
    return _Geodesic.apply(z, pair_target, pi, pj, c)


def _geodesic_reference(z, pair_target, pi, pj, c):
    d = distance(z[..., pi, :], z[..., pj, :], c)
    return F.smooth_l1_loss(d, pair_target.expand_as(d), reduction="none", beta=1.0).mean(-1)


def geodesic_pair_terms(xy: torch.Tensor, target: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
    """The forward quantities of the geodesic term for gathered pairs ``xy`` (..., 2, n, P, d) (the two ends on
    axis -4) and targets (..., n): every intermediate the written-out gradients need, and ``loss`` (..., P), the
    smooth-L1 (beta = 1) error of the Poincaré distance averaged over the n pairs. Shared by the single run's and
    the cohort's `_Geodesic` (a leading member axis is just one more batch axis here)."""
    x, y = xy.select(-4, 0), xy.select(-4, 1)                    # (..., n, P, d)
    diff = x - y
    sq = (diff * diff).sum(-1)                                   # (..., n, P)
    ab = 1.0 - c * (xy * xy).sum(-1)                             # (..., 2, n, P)
    a, b = ab.select(-3, 0), ab.select(-3, 1)
    den = a * b
    den_c = den.clamp_min(_EPS)
    arg = 1.0 + 2.0 * c * sq / den_c
    arg_c = arg.clamp_min(1.0 + _EPS)
    err = torch.acosh(arg_c) / c.sqrt() - target.unsqueeze(-1)
    abs_err = err.abs()
    loss = torch.where(abs_err < 1.0, 0.5 * err * err, abs_err - 0.5).mean(-2)
    return {"diff": diff, "sq": sq, "a": a, "b": b, "den": den, "den_c": den_c, "arg": arg, "arg_c": arg_c,
            "err": err, "loss": loss}


GEODESIC_SAVED = ("diff", "sq", "a", "b", "den", "den_c", "arg", "arg_c", "err")   # what the gradient reads


def geodesic_pair_grad(grad: torch.Tensor, xy: torch.Tensor, saved: dict[str, torch.Tensor],
                       c: torch.Tensor) -> torch.Tensor:
    """The gradient of `geodesic_pair_terms`'s ``loss`` (…, P) with respect to ``xy`` (…, 2, n, P, d), given the
    upstream ``grad`` (…, P) and the saved forward quantities (`GEODESIC_SAVED`)."""
    diff, sq, a, b, den, den_c, arg, arg_c, err = (saved[k] for k in GEODESIC_SAVED)
    n = err.shape[-2]
    g_d = (grad.unsqueeze(-2) / n) * err.clamp(-1.0, 1.0)                        # SmoothL1'(err) = clip(err)
    g_arg = (g_d / (c.sqrt() * torch.sqrt(arg_c * arg_c - 1.0))) * (arg >= 1.0 + _EPS)
    g_sq = g_arg * (2.0 * c / den_c)
    g_den = -g_arg * (2.0 * c * sq / (den_c * den_c)) * (den >= _EPS)
    # d den / d|x|^2 = -c b, d den / d|y|^2 = -c a; d|x|^2/dx = 2x; d sq/dx = 2 diff = -d sq/dy
    g_xy = (torch.stack([g_den * b, g_den * a], -3) * (-2.0 * c)).unsqueeze(-1) * xy   # (..., 2, n, P, d)
    g_diff = (2.0 * g_sq).unsqueeze(-1) * diff
    g_xy.select(-4, 0).add_(g_diff)
    g_xy.select(-4, 1).sub_(g_diff)
    return g_xy


class _Geodesic(torch.autograd.Function):
    """`_geodesic_reference` (beta = 1) with its gradient with respect to z written out. Works in a pair-major
    layout: z (P, B, d) is gathered as rows of a (B, P*d) copy, so the backward is one row-wise index_add
    (scattering along z's middle axis costs about 5x more on a CPU)."""

    @staticmethod
    def forward(ctx, z, target, pi, pj, c):
        single = z.dim() == 2                                      # one path: (B, d)
        zp = z.unsqueeze(0) if single else z                       # (P, B, d)
        P, B, d = zp.shape
        n = len(pi)
        rows = zp.transpose(0, 1).reshape(B, P * d)                # (B, P*d)
        xy = rows.index_select(0, torch.cat([pi, pj])).view(2, n, P, d)
        t = geodesic_pair_terms(xy, target, c)
        ctx.save_for_backward(pi, pj, xy, c, *(t[k] for k in GEODESIC_SAVED))
        ctx.shape = (single, P, B, d)
        return t["loss"][0] if single else t["loss"]                # (P,)

    @staticmethod
    def backward(ctx, grad):
        pi, pj, xy, c, *saved = ctx.saved_tensors
        single, P, B, d = ctx.shape
        n = xy.shape[1]
        g_xy = geodesic_pair_grad(grad.reshape(P), xy, dict(zip(GEODESIC_SAVED, saved)), c)   # (2, n, P, d)
        grad_rows = torch.zeros(B, P * d, dtype=xy.dtype, device=xy.device).index_add_(
            0, torch.cat([pi, pj]), g_xy.view(2 * n, P * d))
        grad_z = grad_rows.view(B, P, d).transpose(0, 1)
        return (grad_z[0] if single else grad_z), None, None, None, None


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Sum over dimensions of max(batch-mean KL_d, free_bits) against N(0, I)."""
    kl = -0.5 * (1.0 + logvar - mu * mu - logvar.exp())
    per_dim = kl.mean(0)
    if free_bits > 0:
        per_dim = per_dim.clamp_min(free_bits)
    return per_dim.sum()
