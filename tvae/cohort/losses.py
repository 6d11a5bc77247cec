"""The loss terms of one step for K members at once: the formulas of `tvae.losses` and `tvae.radius_terms`
with a leading member axis (K, ...), each member's own weights as (K,) tensors, plain autograd.

Every function returns one value per member (K,) or per member and path (K, P); members never mix (no
reduction runs over K), so a member whose numbers go non-finite leaves the others' values and gradients alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tvae.geometry import distance
from tvae.losses import GEODESIC_SAVED, geodesic_pair_grad, geodesic_pair_terms


def _bmv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(K, a, b) @ (K, b) -> (K, a) as a batched matmul: each member's result does not depend on K (einsum and
    matmul may pick another kernel for K = 1)."""
    return torch.bmm(m, v.unsqueeze(-1)).squeeze(-1)


def _bvm(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(K, a) @ (K, a, b) -> (K, b), batched as `_bmv`."""
    return torch.bmm(v.unsqueeze(1), m).squeeze(1)


def reconstruction(logits: torch.Tensor, classes: torch.Tensor, row_w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over a member's rows and 9 positions: logits (K, B, 9, 3), classes (K, B, 9);
    ``row_w`` (K, B): each row's weight in the mean (1/len on a member's valid rows, 0 on padding)."""
    picked = logits.gather(-1, classes.unsqueeze(-1)).squeeze(-1)
    per_row = (torch.logsumexp(logits, -1) - picked).mean(-1)                   # (K, B)
    return per_row.mean(-1) if row_w is None else (per_row * row_w).sum(-1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, free_bits: torch.Tensor, row_w: torch.Tensor) -> torch.Tensor:
    """Sum over dimensions of max(batch-mean KL_d, free_bits) against N(0, I); (K, B, d) -> (K,)."""
    kl = -0.5 * (1.0 + logvar - mu * mu - logvar.exp())
    per_dim = (kl * row_w.unsqueeze(-1)).sum(1)                                  # (K, d)
    return torch.maximum(per_dim, free_bits.unsqueeze(1)).sum(-1)


def coverage_radial(r: torch.Tensor, v: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    pi: torch.Tensor, pj: torch.Tensor, delta: float, margin_weight: torch.Tensor,
                    row_w: torch.Tensor) -> torch.Tensor:
    """`tvae.losses.radial` of one path (r, v: (K, B); pairs (K, n)) over each member's valid rows."""
    primary = (weights[v] * (r - targets[v]) ** 2 * row_w).sum(-1)
    vi, vj = torch.gather(v, 1, pi), torch.gather(v, 1, pj)
    keep = (vi > vj).to(r.dtype)
    pen = F.relu(0.5 * (vi - vj).to(r.dtype) * delta - (torch.gather(r, 1, pj) - torch.gather(r, 1, pi)))
    margin = (pen * keep).sum(-1) / keep.sum(-1).clamp_min(1)
    return primary + margin_weight * margin


def radius_terms(r: torch.Tensor, step: dict[str, torch.Tensor], w: dict[str, torch.Tensor],
                 targets: torch.Tensor, path_weights: torch.Tensor, use_zero: bool) -> torch.Tensor:
    """`radius_terms_reference`, with the gradient of its first five terms written out (`_RadiusTerms`: about
    half the operations of autograd's); the zero-structure term (off by default) keeps plain autograd."""
    if not (torch.is_grad_enabled() and r.requires_grad):
        return radius_terms_reference(r, step, w, targets, path_weights, use_zero)
    five = _RadiusTerms.apply(r, step, w, targets, path_weights)
    zero = _zero_term(r, step, w, path_weights) if use_zero else torch.zeros_like(five[:, 0])
    return torch.cat([five, zero.unsqueeze(1)], 1)


def radius_terms_reference(r: torch.Tensor, step: dict[str, torch.Tensor], w: dict[str, torch.Tensor],
                           targets: torch.Tensor, path_weights: torch.Tensor, use_zero: bool) -> torch.Tensor:
    """The six weighted radius terms (hierarchy, richness, separation, radial, rank, zero) of r (K, P, B), the
    last path z_B's, differentiated by autograd; ``step`` holds the step's `tvae.radius_terms.step_constants`
    with a leading K axis."""
    five, _ = _radius_forward(r, step, w, targets, path_weights)
    zero = _zero_term(r, step, w, path_weights) if use_zero else torch.zeros_like(five[:, 0])
    return torch.cat([five, zero.unsqueeze(1)], 1)                              # (K, 6)


def _radius_forward(r, step, w, targets, path_weights) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The first five terms (K, 5) and the intermediates their gradient needs (`_RadiusTerms.backward`)."""
    K, P, _ = r.shape
    n1, n2 = step["rad_i"].shape[1], step["rank_i"].shape[1]
    idx = torch.cat([step["rad_i"], step["rad_j"], step["rank_i"], step["rank_j"]], 1)
    pair = torch.gather(r, 2, idx.unsqueeze(1).expand(K, P, idx.shape[1]))
    rad_ri, rad_rj, rank_ri, rank_rj = pair.split([n1, n1, n2, n2], dim=2)
    diff = r - step["t_v"].unsqueeze(1)
    wd = step["w_v"].unsqueeze(1) * diff
    marg_arg = step["rad_gap"].unsqueeze(1) - (rad_rj - rad_ri)
    radial = (wd * diff).mean(-1) + w["margin_weight"].unsqueeze(1) * _bmv(marg_arg.clamp_min(0), step["rad_w"])
    sig = torch.sigmoid(step["rank_s"].unsqueeze(1) * (rank_rj - rank_ri))
    rank = _bmv(sig, step["rank_w"])
    r_B, onehot = r[:, -1], step["onehot"]                                      # (K, B), (K, B, L)
    mean = _bvm(r_B, onehot) * step["inv_counts"]
    dev = r_B - _bmv(onehot, mean)
    var = _bvm(dev * dev, onehot) * step["inv_counts1"]
    short = (w["min_richness_ratio"].unsqueeze(1) - var * step["inv_var_orig"]).clamp_min(0)
    hier = ((mean - targets) ** 2 * step["present_w"]).sum(-1)
    richness = (short * short * step["var_w"]).sum(-1)
    sep_arg = _bmv(step["sep"], mean) + w["separation_margin"].unsqueeze(1)
    separation = (sep_arg.clamp_min(0) * step["sep_valid"]).sum(-1)
    five = torch.stack([w["hierarchy"] * hier, w["richness"] * richness, w["separation"] * separation,
                        w["radial"] * (radial * path_weights).sum(-1), w["rank"] * (rank * path_weights).sum(-1)], 1)
    return five, (wd, marg_arg, sig, dev, short, sep_arg, mean, idx)


def _zero_term(r: torch.Tensor, step: dict[str, torch.Tensor], w: dict[str, torch.Tensor],
               path_weights: torch.Tensor) -> torch.Tensor:
    """`tvae.losses.zero_structure` per member, summed over the paths with their weights: (K,)."""
    e = r - step["zero_t"].unsqueeze(1)
    val = F.smooth_l1_loss(e, torch.zeros_like(e), reduction="none", beta=1.0).mean(-1)
    r_std = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-8)
    corr = (step["n0_std"].unsqueeze(1) * r_std).mean(-1)
    zero = w["zero_valuation"].unsqueeze(1) * val \
        + w["zero_sparsity"].unsqueeze(1) * (corr - w["zero_target_correlation"].unsqueeze(1)) ** 2
    return (zero * path_weights).sum(-1)


class _RadiusTerms(torch.autograd.Function):
    """The first five terms of `radius_terms_reference` for r (K, P, B), with their gradient with respect to r
    written out per member (the derivatives of `tvae.radius_terms._RadiusTerms`, with a member axis)."""

    @staticmethod
    def forward(ctx, r, step, w, targets, path_weights):
        five, saved = _radius_forward(r, step, w, targets, path_weights)
        ctx.save_for_backward(*saved)
        ctx.args = (step, w, targets, path_weights)
        return five

    @staticmethod
    def backward(ctx, grad):
        wd, marg_arg, sig, dev, short, sep_arg, mean, idx = ctx.saved_tensors
        step, w, targets, path_weights = ctx.args
        K, P, B = wd.shape
        g_h, g_rich, g_sep, g_rad, g_rank = grad.unbind(1)
        c_rad = (g_rad * w["radial"]).unsqueeze(1) * path_weights                  # (K, P)
        c_rank = (g_rank * w["rank"]).unsqueeze(1) * path_weights
        dr = (2.0 / B) * c_rad.unsqueeze(2) * wd
        g_marg = (w["margin_weight"].unsqueeze(1) * c_rad).unsqueeze(2) * step["rad_w"].unsqueeze(1) * (marg_arg > 0)
        g_u = c_rank.unsqueeze(2) * (step["rank_w"] * step["rank_s"]).unsqueeze(1) * sig * (1.0 - sig)
        dr.scatter_add_(2, idx.unsqueeze(1).expand(K, P, idx.shape[1]), torch.cat([g_marg, -g_marg, -g_u, g_u], 2))
        active = (sep_arg > 0).to(wd.dtype) * step["sep_valid"]
        g_mean = (2.0 * g_h * w["hierarchy"]).unsqueeze(1) * (mean - targets) * step["present_w"] \
            + _bvm((g_sep * w["separation"]).unsqueeze(1) * active, step["sep"])
        g_var = (-2.0 * g_rich * w["richness"]).unsqueeze(1) * short * step["inv_var_orig"] * step["var_w"]
        per_level = torch.bmm(step["onehot"], torch.stack([g_mean * step["inv_counts"], g_var * step["inv_counts1"]], 2))
        dr[:, -1] += per_level[..., 0] + 2.0 * dev * per_level[..., 1]
        return dr, None, None, None, None


def geodesic(z: torch.Tensor, target: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """`geodesic_reference` with its gradient written out (`_Geodesic`)."""
    if not (torch.is_grad_enabled() and z.requires_grad):
        return geodesic_reference(z, target, pi, pj, c)
    return _Geodesic.apply(z, target, pi, pj, c)


def geodesic_reference(z: torch.Tensor, target: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor,
                       c: torch.Tensor) -> torch.Tensor:
    """`tvae.losses.geodesic` per member and path: z (K, P, B, d), target and pairs (K, n) -> (K, P)."""
    K, P, _, d = z.shape
    n = pi.shape[1]
    gather = lambda idx: torch.gather(z, 2, idx.view(K, 1, n, 1).expand(K, P, n, d))  # noqa: E731
    dist = distance(gather(pi), gather(pj), c)                                   # (K, P, n)
    return F.smooth_l1_loss(dist, target.unsqueeze(1).expand_as(dist), reduction="none", beta=1.0).mean(-1)


class _Geodesic(torch.autograd.Function):
    """`geodesic_reference` (beta = 1, fixed curvature) with its gradient with respect to z written out (the
    derivatives of `tvae.losses._Geodesic`, with a member axis). z is gathered as rows of a (K * B, P * d) copy,
    so the backward is one row-wise index_add."""

    @staticmethod
    def forward(ctx, z, target, pi, pj, c):
        K, P, B, d = z.shape
        n = pi.shape[1]
        rows = z.permute(0, 2, 1, 3).reshape(K * B, P * d)
        offset = (torch.arange(K, device=z.device) * B).unsqueeze(1)
        gidx = torch.cat([pi + offset, pj + offset], 1).reshape(-1)                 # member-major: i's, then j's
        xy = rows.index_select(0, gidx).view(K, 2, n, P, d)
        t = geodesic_pair_terms(xy, target, c)                                   # the single run's arithmetic
        ctx.save_for_backward(gidx, xy, c, *(t[k] for k in GEODESIC_SAVED))
        ctx.shape = (K, P, B, d, n)
        return t["loss"]                                                          # (K, P)

    @staticmethod
    def backward(ctx, grad):
        gidx, xy, c, *saved = ctx.saved_tensors
        K, P, B, d, n = ctx.shape
        g_xy = geodesic_pair_grad(grad, xy, dict(zip(GEODESIC_SAVED, saved)), c)      # (K, 2, n, P, d)
        grad_rows = torch.zeros(K * B, P * d, dtype=xy.dtype, device=xy.device).index_add_(
            0, gidx, g_xy.reshape(K * 2 * n, P * d))
        return grad_rows.view(K, B, P, d).permute(0, 2, 1, 3), None, None, None, None
