"""The evaluation's metrics in torch, on the tensors' own device (the GPU path); definitions in `tvae.metrics`.

On a GPU the host-side numpy metric over `dist_corr`'s ~500,000 pairs would cost more than a whole training
epoch (measured 30 ms on an H200 machine's host); these versions run on the device and return 0-d float64
tensors, so the evaluation reads all its numbers back in one transfer. They never synchronise with the host
(no `bincount`, whose output size needs the input's maximum; no boolean indexing), so the whole evaluation can
be recorded as a CUDA graph. Definitions and tie handling are those of `tvae.metrics` (average ranks on both
sides); tests check them against the numpy ones.
"""
from __future__ import annotations

import torch

_SIGN = 1 << 31
_PAD = 1 << 36        # above every (value key << 4) | code


def monotone_keys(x: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2^32) whose order equals the float32 order of x (-0.0 treated as 0.0)."""
    bits = (x.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= _SIGN, 0xFFFFFFFF - bits, bits + _SIGN)


def spearman_discrete(x: torch.Tensor, codes: torch.Tensor, n_codes: int,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman between float values ``x`` and integer ``codes`` in [0, n_codes), n_codes <= 16; NaN when
    either side is constant or x holds a non-finite value. No host synchronisation.

    Batched: x and codes (P, L) give the P correlations at once (one sort for all), ``valid`` (P, L) saying
    which entries of each row take part (rows of different lengths, padded); fewer than two valid entries
    give NaN."""
    if n_codes > 16:
        raise ValueError(f"n_codes must be <= 16, got {n_codes}")
    single = x.dim() == 1
    if single:
        x, codes = x.unsqueeze(0), codes.unsqueeze(0)
        valid = None if valid is None else valid.unsqueeze(0)
    P, L = x.shape
    if L < 2:
        out = torch.full((P,), float("nan"), dtype=torch.float64, device=x.device)
        return out[0] if single else out
    keys = (monotone_keys(x) << 4) | codes.to(torch.int64)
    if valid is not None:        # padding sorts after every value (keys of values are below 2^36)
        keys = torch.where(valid, keys, _PAD)
    keys, _ = torch.sort(keys, dim=-1)
    grp = keys & 15
    value = keys >> 4
    # average rank of every sorted position: a run of equal values occupies positions [first, end), so its
    # members share the rank (first + end + 1)/2; binary searches in the sorted values find both ends
    # (a scan with cummax/cummin took 6 ms of a 10 ms evaluation on an H200)
    first = torch.searchsorted(value, value, side="left")
    end = torch.searchsorted(value, value, side="right")
    rank_x = (first + end + 1).to(torch.float64) / 2
    if valid is None:
        n = torch.full((P, 1), float(L), dtype=torch.float64, device=x.device)
        used = None
    else:
        n = valid.sum(-1, keepdim=True).to(torch.float64)
        used = torch.arange(L, device=x.device) < n           # the sorted positions of valid entries
    mean = (n + 1) / 2
    dev_x = rank_x - mean if used is None else (rank_x - mean) * used
    var_x = (dev_x ** 2).sum(-1)
    # rank sum and count per code, code by code (a one-hot of (P, L, n_codes) float64 would be large)
    per_code = [grp == k if used is None else (grp == k) & used for k in range(n_codes)]
    sum_x = torch.stack([(rank_x * is_k).sum(-1) for is_k in per_code], -1)
    cnt_y = torch.stack([is_k.sum(-1) for is_k in per_code], -1).to(torch.float64)
    rank_y = torch.cumsum(cnt_y, -1) - cnt_y + (cnt_y + 1) / 2
    cov = ((rank_y - mean) * (sum_x - cnt_y * mean)).sum(-1)
    var_y = (cnt_y * (rank_y - mean) ** 2).sum(-1)
    den = torch.sqrt(var_x * var_y)
    finite = torch.isfinite(x) if valid is None else torch.isfinite(x) | ~valid
    ok = (den > 0) & finite.all(-1) & (n.squeeze(-1) >= 2)
    out = torch.where(ok, cov / torch.where(den > 0, den, 1.0), float("nan"))
    return out[0] if single else out


def one_hot(codes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """(n, n_codes) float64 indicator of ``codes`` (a sum over it replaces `bincount` without a host sync)."""
    return (codes.to(torch.int64).unsqueeze(1) == torch.arange(n_codes, device=codes.device)).to(torch.float64)


def level_moments(radius: torch.Tensor, levels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(10, 3): count, sum and sum of squares of ``radius`` (float64) per valuation level. Batched: radius (P, N)
    with ``weight`` (P, N) (1 for the entries that count, 0 for the others) gives (P, 10, 3)."""
    r = radius.to(torch.float64)
    w = torch.ones_like(r) if weight is None else weight.to(torch.float64)
    wr = w * r
    return one_hot(levels, 10).T @ torch.stack([w, wr, wr * r], -1)


def richness(moments: torch.Tensor) -> torch.Tensor:
    """`metrics.richness` from `level_moments`: mean over levels with >= 2 members of the within-level variance."""
    cnt, s1, s2 = moments.unbind(-1)
    ok = cnt >= 2
    safe = torch.where(ok, cnt, 1.0)
    var = torch.clamp_min(s2 / safe - (s1 / safe) ** 2, 0.0)
    n_ok = ok.sum(-1)
    return torch.where(n_ok > 0, (var * ok).sum(-1) / n_ok.clamp_min(1), float("nan"))


def level_mean(moments: torch.Tensor, level: int) -> torch.Tensor:
    """`metrics.level_mean` from `level_moments` (in float64); NaN for an empty level."""
    cnt, s1 = moments[..., level, 0], moments[..., level, 1]
    return torch.where(cnt > 0, s1 / cnt.clamp_min(1), float("nan"))
