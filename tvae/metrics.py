"""Metric definitions: pure functions on numpy arrays (one definition each; see tvae/README.md).

Spearman correlations use average ranks for ties. Every correlation in this trainer has one side with a few
integer levels (valuations, |Δv|, 3-adic distance classes), which `spearman_discrete` exploits: one sort of
packed (value, level) keys gives exact average ranks of the continuous side and the rank sums per level.
"""
from __future__ import annotations

import functools

import numpy as np

Q_COEFFICIENT = 1.5


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (like scipy.stats.rankdata(method='average'))."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    change = np.empty(len(x), dtype=bool)
    if len(x):
        change[0] = True
        change[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(change)
    counts = np.diff(np.append(starts, len(x)))
    avg = starts + (counts + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, counts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Reference Spearman: Pearson correlation of average ranks. NaN when either side is constant."""
    return pearson(rankdata(x), rankdata(y))


def _monotone_bits(x: np.ndarray) -> np.ndarray:
    """uint64 keys whose order equals the float32 order of x (-0.0 treated as 0.0)."""
    b = (np.asarray(x, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    if not (b & np.uint32(0x80000000)).any():      # all non-negative: the bit pattern is already monotone
        return b.astype(np.uint64)
    neg = (b & np.uint32(0x80000000)) != 0
    return np.where(neg, ~b, b | np.uint32(0x80000000)).astype(np.uint64)


@functools.lru_cache(maxsize=8)
def _positions(n: int) -> np.ndarray:
    out = np.arange(1, n + 1, dtype=np.float64)       # the ranks 1..n
    out.flags.writeable = False
    return out


def _rank_sums(keys: np.ndarray, n_codes: int) -> tuple[np.ndarray, float]:
    """From sorted (value << 4 | code) keys: the sum of the values' average ranks per code, and the sum of
    squared deviations of those ranks from their mean.

    Ranks 1..n by position, then a correction on the (few) runs of tied values only: a run of length t keeps
    its rank total but spreads it evenly (average rank), and lowers the squared deviations by (t^3 - t)/12."""
    n = len(keys)
    grp = (keys & np.uint64(15)).astype(np.intp)
    value = keys >> np.uint64(4)
    same = value[1:] == value[:-1]                           # same[i]: value[i] == value[i + 1]
    if same.sum() > n // 16:                                 # many ties (collapsed radii): dense average ranks
        change = np.empty(n, dtype=bool)
        change[0] = True
        np.logical_not(same, out=change[1:])
        starts = np.flatnonzero(change)
        run_len = np.diff(np.append(starts, n))
        rank_x = np.repeat(starts + (run_len + 1) / 2.0, run_len)
        return np.bincount(grp, weights=rank_x, minlength=n_codes), float(((rank_x - (n + 1) / 2.0) ** 2).sum())
    sums = np.bincount(grp, weights=_positions(n), minlength=n_codes)   # ranks by position
    var = n * (n * n - 1) / 12.0
    tied = np.flatnonzero(same)
    if len(tied):
        in_run = np.zeros(n, dtype=bool)
        in_run[tied] = True
        in_run[tied + 1] = True
        members = np.flatnonzero(in_run)                     # positions inside a run of ties, ascending
        new_run = np.empty(len(members), dtype=bool)
        new_run[0] = True
        np.not_equal(value[members[1:]], value[members[:-1]], out=new_run[1:])
        run_start = np.flatnonzero(new_run)
        run_len = np.diff(np.append(run_start, len(members)))
        average = np.repeat(members[run_start] + (run_len + 1) / 2.0, run_len)
        sums += np.bincount(grp[members], weights=average - (members + 1), minlength=n_codes)
        var -= float(((run_len.astype(np.float64) ** 3) - run_len).sum()) / 12.0
    return sums, var


def spearman_discrete(x: np.ndarray, codes: np.ndarray, n_codes: int = 16) -> float:
    """Spearman between float32 values ``x`` and integer ``codes`` in [0, n_codes) (order = code order).

    Exact (average ranks for ties on both sides) and fast: one sort of (value bits << 4 | code)."""
    n = len(x)
    if n < 2 or n_codes > 16:
        return spearman(x, codes) if n >= 2 else float("nan")
    if not np.all(np.isfinite(x)):
        return float("nan")
    codes = np.asarray(codes)
    keys = _monotone_bits(x)
    keys <<= np.uint64(4)
    keys |= codes.astype(np.uint64, copy=False)
    keys.sort()
    sum_x_by_code, var_x = _rank_sums(keys, n_codes)
    mean = (n + 1) / 2.0
    cnt_y = np.bincount(codes, minlength=n_codes).astype(np.float64)
    rank_y = np.cumsum(cnt_y) - cnt_y + (cnt_y + 1) / 2.0          # average rank of each code
    cov = ((rank_y - mean) * (sum_x_by_code - cnt_y * mean)).sum()
    var_y = (cnt_y * (rank_y - mean) ** 2).sum()
    den = np.sqrt(var_x * var_y)
    return float(cov / den) if den > 0 else float("nan")


def hierarchy(radius: np.ndarray, v: np.ndarray) -> float:
    """Spearman(v, hyperbolic radius): -1 is a perfect level ordering with no within-level spread."""
    return spearman_discrete(radius, v, 10)


def richness(radius: np.ndarray, v: np.ndarray) -> float:
    """Mean over levels with >= 2 members of the population variance of the radius within the level."""
    cnt = np.bincount(v, minlength=10).astype(np.float64)
    s1 = np.bincount(v, weights=radius.astype(np.float64), minlength=10)
    s2 = np.bincount(v, weights=radius.astype(np.float64) ** 2, minlength=10)
    ok = cnt >= 2
    if not ok.any():
        return float("nan")
    mean = s1[ok] / cnt[ok]
    var = np.maximum(s2[ok] / cnt[ok] - mean ** 2, 0.0)
    return float(var.mean())


def level_mean(radius: np.ndarray, v: np.ndarray, level: int) -> float:
    sel = v == level
    return float(radius[sel].mean()) if sel.any() else float("nan")


class DistCorrSample:
    """The fixed sample behind ``dist_corr``: all i<j pairs of m operations, with |Δv| precomputed."""

    def __init__(self, positions: np.ndarray, v: np.ndarray):
        self.positions = positions                       # positions into the split's arrays
        # native-width indices: gathering 499,500 pairs with them takes a third of the time int32 ones take
        self.iu, self.ju = np.triu_indices(len(positions), k=1)
        iu, ju = self.iu, self.ju
        vs = v[positions].astype(np.int64)
        self.dv = np.abs(vs[iu] - vs[ju]).astype(np.uint64)

    def __call__(self, radius: np.ndarray) -> float:
        """Spearman(|Δradius|, |Δv|) over all pairs of the sample."""
        r = radius[self.positions].astype(np.float32)
        d = r[self.iu]
        d -= r[self.ju]
        return spearman_discrete(np.abs(d, out=d), self.dv, 10)


def padic_codes(pair_valuation: np.ndarray) -> np.ndarray:
    """Codes ordered like the 3-adic distance 3^-v(|i-j|) (larger valuation = smaller distance)."""
    return (9 - pair_valuation).astype(np.int64)


def padic_dist_corr(distances: np.ndarray, codes: np.ndarray) -> float:
    """Spearman(Poincaré pair distance, 3-adic distance) over the fixed pairs."""
    return spearman_discrete(distances, codes, 10)


def q_value(dist_corr: float, hierarchy_B: float) -> float:
    return dist_corr + Q_COEFFICIENT * abs(hierarchy_B)


def effective_rank(matrix: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) (Roy & Vetterli 2007)."""
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank_from_gram(gram: np.ndarray) -> float:
    """Same as `effective_rank`, from the d x d Gram matrix MᵀM (singular values = sqrt of its eigenvalues)."""
    ev = np.clip(np.linalg.eigvalsh(np.asarray(gram, dtype=np.float64)), 0.0, None)
    s = np.sqrt(ev)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))
