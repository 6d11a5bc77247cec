"""The structure step's terms that depend on the radii alone, as one weighted vector, with its gradient
written out.

Hierarchy, richness and separation (z_B only), radial, rank and zero-structure (per path, summed with the path
weights) are six functions of the radii r (P, B). Autograd of their definitions runs ~180 small operations per
step (forward and backward, views not counted), many of them on the step's constants (pair valuations, level
counts, reference variances). `step_constants` computes those for every step of an epoch at once, and
`_RadiusTerms` evaluates the six terms and their gradient with respect to r in ~95. `reference` composes the definitions in `tvae.losses` (the readable formulas; used
under torch.compile and when a test compares the two). Both give the same numbers up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tvae import losses

# the order of the output vector; it is the order of these terms in the trainer's TERMS
NAMES = ("hierarchy", "richness", "separation", "radial", "rank", "zero")


@dataclass(frozen=True)
class Weights:
    """The scalars of the six terms (config values; ``radial`` already holds the phase's factor)."""
    hierarchy: float
    richness: float
    separation: float
    radial: float
    rank: float
    min_richness_ratio: float
    separation_margin: float
    margin_weight: float
    delta: float                      # radial margin per valuation step: (outer - inner) / 9
    temperature: float
    zero_valuation: float
    zero_sparsity: float
    zero_target_correlation: float

    @property
    def use_zero(self) -> bool:       # a switched-off zero-structure term is skipped
        return self.zero_valuation != 0.0 or self.zero_sparsity != 0.0


@dataclass
class Levels:
    """Per-level tables of a run: radius targets, radial weights, and the consecutive present levels whose
    means the separation term compares (``sep``: row k = e_hi[k] - e_lo[k], so its arguments are sep @ means)."""
    targets: torch.Tensor
    radial_weights: torch.Tensor
    sep_lo: torch.Tensor
    sep_hi: torch.Tensor
    sep: torch.Tensor = field(init=False)

    def __post_init__(self):
        eye = torch.eye(len(self.targets), dtype=self.targets.dtype, device=self.targets.device)
        self.sep = eye[self.sep_hi] - eye[self.sep_lo]


def step_constants(v: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor, present: torch.Tensor,
                   var_levels: torch.Tensor, r_orig: torch.Tensor, rad_i: torch.Tensor, rad_j: torch.Tensor,
                   rank_i: torch.Tensor, rank_j: torch.Tensor, levels: Levels, w: Weights) -> dict[str, torch.Tensor]:
    """Everything `_RadiusTerms` needs that does not depend on r, for all S steps at once (leading axis S).
    ``v`` (S, B) valuations; ``onehot`` (S, B, 10); ``counts``/``present``/``var_levels`` (S, 10); ``r_orig``
    (S, B) reference radii; pair indices (S, K) into the batch."""
    vi, vj = torch.gather(v, 1, rad_i), torch.gather(v, 1, rad_j)
    keep = (vi > vj).to(r_orig.dtype)
    rad_w = keep / keep.sum(1, keepdim=True).clamp_min(1)
    dv = (torch.gather(v, 1, rank_i) - torch.gather(v, 1, rank_j)).to(r_orig.dtype)
    keep_rank = (dv != 0).to(r_orig.dtype)
    inv_counts = 1.0 / counts.clamp_min(1)
    inv_counts1 = 1.0 / (counts - 1).clamp_min(1)
    n_present = present.sum(1, keepdim=True).clamp_min(1)
    mean_o = torch.einsum("sb,sbl->sl", r_orig, onehot) * inv_counts
    dev_o = r_orig - torch.einsum("sbl,sl->sb", onehot, mean_o)
    var_o = torch.einsum("sb,sbl->sl", dev_o * dev_o, onehot) * inv_counts1
    return {
        "t_v": levels.targets[v], "w_v": levels.radial_weights[v],
        "rad_gap": 0.5 * (vi - vj).to(r_orig.dtype) * w.delta, "rad_w": rad_w,
        "rank_w": dv.abs() * keep_rank / keep_rank.sum(1, keepdim=True).clamp_min(1),
        "rank_s": -torch.sign(dv) / w.temperature,
        "pair_idx": torch.cat([rad_i, rad_j, rank_i, rank_j], 1),      # one scatter in the backward
        "inv_counts": inv_counts, "inv_counts1": inv_counts1,
        "present_w": present / n_present, "var_w": var_levels / n_present,
        "inv_var_orig": 1.0 / (var_o + 1e-8),
    }


def terms(r: torch.Tensor, step: dict[str, torch.Tensor], w: Weights, path_weights: torch.Tensor,
          levels: Levels) -> torch.Tensor:
    """The six weighted terms (NAMES order) of radii ``r`` (P, B) (the last path is z_B's). ``step`` holds the
    step's raw inputs and its `step_constants`."""
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return reference(r, step, w, path_weights, levels)
    return _RadiusTerms.apply(r, step, w, path_weights, levels)


def reference(r: torch.Tensor, step: dict[str, torch.Tensor], w: Weights, path_weights: torch.Tensor,
              levels: Levels) -> torch.Tensor:
    """`terms` from the loss definitions in `tvae.losses` (plain autograd)."""
    h, richness, separation = losses.rich_hierarchy(
        r[-1], step["r_orig"], step["onehot"], step["counts"], levels.targets, step["present"], step["var_levels"],
        levels.sep_lo, levels.sep_hi, w.min_richness_ratio, w.separation_margin)
    v = step["v"]
    radial = losses.radial(r, v, levels.targets, levels.radial_weights, step["rad_i"], step["rad_j"], w.delta,
                           w.margin_weight)
    rank = losses.rank(r, v, step["rank_i"], step["rank_j"], w.temperature)
    zero = (losses.zero_structure(r, step["zero_t"], step["n0_std"], w.zero_valuation, w.zero_sparsity,
                                  w.zero_target_correlation) if w.use_zero else torch.zeros_like(radial))
    return torch.stack([w.hierarchy * h, w.richness * richness, w.separation * separation,
                        w.radial * (path_weights @ radial), w.rank * (path_weights @ rank), path_weights @ zero])


class _RadiusTerms(torch.autograd.Function):
    """`reference` with the gradient with respect to r written out (r: (P, B); the weights and constants have
    no gradient). Derivatives used (B = batch, per path p):
      radial  = mean_b w_v (r - t_v)^2 + m * sum_k a_k relu(gap_k - (r_j - r_i)):  2 w_v (r - t_v) / B; +-m a_k
      rank    = sum_k c_k sigmoid(s_k (r_j - r_i)):  c_k s_k sigma (1 - sigma), + at j, - at i
      zero    = vw mean SmoothL1(r - t0) + sw (corr - tc)^2, corr = sum n (r - m) / (B (sd + 1e-8)):
                vw clip(r - t0, -1, 1) / B; d corr/d r = (n - mean n) / D - corr (r - m) / ((B - 1) sd (sd + 1e-8))
      level means mu_l = sum_b 1[v_b = l] r_b / n_l and unbiased variances var_l (z_B):
                d mu_l / d r_b = 1[v_b = l] / n_l;  d var_l / d r_b = 2 (r_b - mu_l) 1[v_b = l] / (n_l - 1)
      hierarchy = sum_l present_l (mu_l - t_l)^2 / n_present;  separation = sum relu(mu_hi - mu_lo + margin);
      richness  = sum_l [n_l >= 2] relu(min_ratio - var_l / (var_orig_l + 1e-8))^2 / n_present"""

    @staticmethod
    def forward(ctx, r, step, w: Weights, path_weights, levels: Levels):
        P, B = r.shape
        k1 = step["rad_i"].shape[0]
        pair = r[:, step["pair_idx"]]                                   # (P, 2 k1 + 2 k2): i, j, i, j
        rad_ri, rad_rj, rank_ri, rank_rj = pair.split([k1, k1, (pair.shape[1] - 2 * k1) // 2,
                                                       (pair.shape[1] - 2 * k1) // 2], dim=1)
        wd = step["w_v"] * (r - step["t_v"])                            # (P, B)
        marg_arg = step["rad_gap"] - (rad_rj - rad_ri)                  # (P, K1)
        radial = (wd * (r - step["t_v"])).mean(-1) + w.margin_weight * (marg_arg.clamp_min(0) @ step["rad_w"])
        sig = torch.sigmoid(step["rank_s"] * (rank_rj - rank_ri))       # (P, K2)
        rank = sig @ step["rank_w"]
        # z_B's level statistics
        r_B, onehot = r[-1], step["onehot"]
        mean = (r_B @ onehot) * step["inv_counts"]                      # (L,)
        dev = r_B - onehot @ mean                                       # (B,)
        var = ((dev * dev) @ onehot) * step["inv_counts1"]
        short = (w.min_richness_ratio - var * step["inv_var_orig"]).clamp_min(0)
        sep_arg = levels.sep @ mean + w.separation_margin
        hier = (mean - levels.targets).square() @ step["present_w"]
        richness = short.square() @ step["var_w"]
        separation = sep_arg.clamp_min(0).sum()
        out = [w.hierarchy * hier, w.richness * richness, w.separation * separation,
               w.radial * (path_weights @ radial), w.rank * (path_weights @ rank)]
        saved = [r, wd, marg_arg, sig, dev, short, sep_arg, mean]
        if w.use_zero:
            e = r - step["zero_t"]
            abs_e = e.abs()
            val = torch.where(abs_e < 1.0, 0.5 * e * e, abs_e - 0.5).mean(-1)
            rc = r - r.mean(-1, keepdim=True)
            sd = (rc.square().sum(-1) / (B - 1)).sqrt()                 # unbiased std, like torch.std
            den = B * (sd + 1e-8)
            corr = (step["n0_std"] * rc).sum(-1) / den
            zero = w.zero_valuation * val + w.zero_sparsity * (corr - w.zero_target_correlation).square()
            out.append(path_weights @ zero)
            saved += [e, rc, sd, den, corr]
        else:
            out.append(torch.zeros((), dtype=r.dtype, device=r.device))
        ctx.save_for_backward(*saved)
        ctx.args = (step, w, path_weights, levels)
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad):
        r, wd, marg_arg, sig, dev, short, sep_arg, mean, *zero_saved = ctx.saved_tensors
        step, w, path_weights, levels = ctx.args
        P, B = r.shape
        g_h, g_rich, g_sep, g_rad, g_rank, g_zero = grad.unbind()
        c_rad = (g_rad * w.radial) * path_weights                       # (P,)
        c_rank = (g_rank * w.rank) * path_weights
        dr = (2.0 / B) * c_rad.unsqueeze(1) * wd
        g_marg = (w.margin_weight * c_rad).unsqueeze(1) * step["rad_w"] * (marg_arg > 0)      # d/d r_i; -d/d r_j
        g_u = c_rank.unsqueeze(1) * step["rank_w"] * sig * (1.0 - sig) * step["rank_s"]        # d/d r_j; -d/d r_i
        dr.index_add_(1, step["pair_idx"], torch.cat([g_marg, -g_marg, -g_u, g_u], 1))
        # z_B's level statistics: d/d mean and d/d var, pulled back through the one-hot matrix
        g_mean = (2.0 * g_h * w.hierarchy) * (mean - levels.targets) * step["present_w"] \
            + (g_sep * w.separation) * ((sep_arg > 0).to(r.dtype) @ levels.sep)
        g_var = (-2.0 * g_rich * w.richness) * short * step["inv_var_orig"] * step["var_w"]
        per_level = step["onehot"] @ torch.stack([g_mean * step["inv_counts"], g_var * step["inv_counts1"]], 1)
        dr[-1] += per_level[:, 0] + 2.0 * dev * per_level[:, 1]
        if w.use_zero:
            e, rc, sd, den, corr = zero_saved
            c_zero = g_zero * path_weights
            n0 = step["n0_std"]
            g_corr = (c_zero * w.zero_sparsity * 2.0 * (corr - w.zero_target_correlation)).unsqueeze(1)
            d_corr = (n0 - n0.mean()) / den.unsqueeze(1) \
                - (corr / ((B - 1) * sd * (sd + 1e-8))).unsqueeze(1) * rc
            dr += (c_zero * w.zero_valuation / B).unsqueeze(1) * e.clamp(-1.0, 1.0) + g_corr * d_corr
        return dr, None, None, None, None
