"""The radius-only terms of a structure step: the hand-written gradient against autograd of the definitions."""
import pytest
import torch

from tvae import radius_terms
from tvae.losses import level_targets


def _step(B=96, k1=300, k2=400, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    v = torch.cat([torch.arange(10), torch.randint(0, 4, (B - 10,), generator=g)])   # every level present
    v[10:14] = 9                                                                     # a level with > 2 members
    onehot = torch.nn.functional.one_hot(v, 10).to(dtype)
    counts = onehot.sum(0)
    raw = {
        "v": v, "onehot": onehot, "counts": counts, "present": (counts > 0).to(dtype),
        "var_levels": (counts > 1).to(dtype), "r_orig": torch.rand(B, generator=g, dtype=dtype) * 3,
        "rad_i": torch.randint(0, B, (k1,), generator=g), "rad_j": torch.randint(0, B, (k1,), generator=g),
        "rank_i": torch.randint(0, B, (k2,), generator=g), "rank_j": torch.randint(0, B, (k2,), generator=g),
        "zero_t": torch.rand(B, generator=g, dtype=dtype) * 3,
        "n0_std": torch.randn(B, generator=g, dtype=dtype),
    }
    present = torch.arange(10)
    levels = radius_terms.Levels(level_targets(0.08, 0.9).to(dtype),
                                 1.0 + torch.exp(0.4 * torch.arange(10, dtype=dtype)), present[:-1], present[1:])
    return raw, levels


def _weights(zero: bool) -> radius_terms.Weights:
    return radius_terms.Weights(hierarchy=5.0, richness=2.0, separation=3.0, radial=0.5, rank=0.5,
                                min_richness_ratio=0.5, separation_margin=0.01, margin_weight=0.5,
                                delta=(0.9 - 0.08) / 9, temperature=0.1, zero_valuation=0.25 if zero else 0.0,
                                zero_sparsity=0.15 if zero else 0.0, zero_target_correlation=-0.3)


def _with_constants(raw, levels, w):
    """The step dict the trainer builds: raw inputs plus `step_constants` (computed with a leading step axis)."""
    batched = {k: t.unsqueeze(0) for k, t in raw.items()}
    consts = radius_terms.step_constants(batched["v"], batched["onehot"], batched["counts"], batched["present"],
                                         batched["var_levels"], batched["r_orig"], batched["rad_i"],
                                         batched["rad_j"], batched["rank_i"], batched["rank_j"], levels, w)
    return raw | {k: t[0] for k, t in consts.items()}


@pytest.mark.parametrize("paths", [1, 2])
@pytest.mark.parametrize("zero", [False, True])
def test_hand_written_gradient_equals_autograd_of_the_definitions(paths, zero):
    raw, levels = _step()
    w = _weights(zero)
    step = _with_constants(raw, levels, w)
    path_weights = torch.tensor([0.7, 1.0][-paths:], dtype=torch.float64)
    r = (torch.rand(paths, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
    fast = radius_terms.terms(r, step, w, path_weights, levels)
    ref = radius_terms.reference(r, step, w, path_weights, levels)
    assert fast.shape == (6,)
    assert torch.allclose(fast, ref, rtol=1e-12, atol=1e-12)
    assert (fast[:5] != 0).all() and ((fast[5] != 0) == zero)          # every term is exercised
    upstream = torch.randn(6, dtype=torch.float64)                       # each term weighted differently
    g_fast, = torch.autograd.grad(fast, r, upstream)
    g_ref, = torch.autograd.grad(ref, r, upstream)
    assert torch.allclose(g_fast, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda rr: radius_terms.terms(rr, step, w, path_weights, levels), (r,))


def test_active_hinges_are_exercised():
    """The margin, separation and richness hinges are on for some inputs and off for others, so a wrong
    mask in the backward would show in the gradient test above."""
    raw, levels = _step()
    w = _weights(False)
    step = _with_constants(raw, levels, w)
    r = torch.rand(1, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    marg_arg = step["rad_gap"] - (r[0, raw["rad_j"]] - r[0, raw["rad_i"]])
    active = (marg_arg > 0) & (step["rad_w"] > 0)
    assert active.any() and ((~active) & (step["rad_w"] > 0)).any()
    mean = (r[0] @ step["onehot"]) * step["inv_counts"]
    sep_arg = levels.sep @ mean + w.separation_margin
    assert (sep_arg > 0).any() and (sep_arg <= 0).any()


def test_the_constants_match_one_step_at_a_time():
    """step_constants over a stack of steps equals it step by step (it is vectorised over the first axis)."""
    w = _weights(True)
    steps = [_step(seed=s) for s in range(3)]
    levels = steps[0][1]
    stacked = {k: torch.stack([raw[k] for raw, _ in steps]) for k in steps[0][0]}
    together = radius_terms.step_constants(stacked["v"], stacked["onehot"], stacked["counts"], stacked["present"],
                                           stacked["var_levels"], stacked["r_orig"], stacked["rad_i"],
                                           stacked["rad_j"], stacked["rank_i"], stacked["rank_j"], levels, w)
    for s, (raw, _) in enumerate(steps):
        alone = _with_constants(raw, levels, w)
        for k, t in together.items():
            assert torch.allclose(t[s], alone[k], rtol=1e-12, atol=0), k
