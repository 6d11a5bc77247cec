"""The 3^9 ternary operations, their 3-adic valuations, the held-out split and stratified batches.

Index i <-> 9 trits: trit k = (digit k of i in base 3) - 1, position 0 least significant.
v(i) = largest k with 3^k | i, v(0) = 9.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tvae.config import DataConfig

N_OPS = 3 ** 9
N_TRITS = 9
MAX_VALUATION = 9
N_LEVELS = MAX_VALUATION + 1


def pad_rows(rows, device: torch.device | str = "cpu", fill: int = 0) -> torch.Tensor:
    """(len(rows), longest) int64 tensor of index ``rows`` (tensors or numpy arrays of any lengths), padded with
    ``fill``: the per-member tables that a cohort stacks."""
    out = torch.full((len(rows), max((len(r) for r in rows), default=0)), fill, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, device=device)
    return out


def all_trits() -> torch.Tensor:
    """(N, 9) float32 trits in {-1, 0, 1}, row i = operation i."""
    idx = torch.arange(N_OPS)
    powers = 3 ** torch.arange(N_TRITS)
    return ((idx[:, None] // powers) % 3 - 1).to(torch.float32)


def valuations(indices: torch.Tensor | None = None) -> torch.Tensor:
    """3-adic valuation (int64) of each index (default: all N), with v(0) = 9; indices are clamped to [0, N-1]."""
    idx = torch.arange(N_OPS) if indices is None else indices.clamp(0, N_OPS - 1)
    v = torch.zeros_like(idx)
    rest = idx.clone()
    for _ in range(MAX_VALUATION):   # 9 vectorised passes over all indices (not a per-sample loop)
        divisible = (rest % 3 == 0) & (rest > 0)
        v += divisible.long()
        rest = torch.where(divisible, rest // 3, rest)
    return torch.where(idx == 0, torch.full_like(v, MAX_VALUATION), v)


def valuation_table() -> torch.Tensor:
    """v for every index 0..N-1: look-up table, also used for pair valuations v(|i - j|)."""
    return valuations()


def zero_valuation(trits: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of 0 trits from position 0 (upstream's zero-structure label, not v)."""
    is_zero = (trits == 0).long()
    return torch.cumprod(is_zero, dim=1).sum(dim=1)


def zero_count(trits: torch.Tensor) -> torch.Tensor:
    return (trits == 0).sum(dim=1)


@dataclass(frozen=True)
class Split:
    train: torch.Tensor     # sorted int64 indices
    heldout: torch.Tensor   # sorted int64 indices (may be empty)


# The split kinds (``data.split``) and what their held-out set tests; tvae/README.md ("Held-out splits") has more.
SPLIT_KINDS = {
    "stratified": "interpolation: a seeded random share of every valuation level is held out",
    "valuation": "extrapolation in depth: every operation with split_level_min <= v <= split_level_max is held out",
    "trit": "an unseen digit: every operation with trit split_position = split_value is held out",
    "compositional": "unseen combinations: split_pairs value pairs (x, y) of trits split_position and "
                     "split_position_b are held out; each value alone is seen at each position",
}


def _stratified_subset(pool: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Mask over ``pool``: per valuation level present in it, max(1, round(fraction * n_v)) members, at random."""
    n = len(pool)
    v = valuations(pool)
    perm = torch.randperm(n, generator=gen)
    # order a random permutation by level (stable), so each level's members come in random order
    order = perm[torch.argsort(v[perm], stable=True)]
    counts = torch.bincount(v, minlength=N_LEVELS)
    keep = torch.where(counts > 0, torch.clamp(torch.round(counts.double() * fraction).long(), min=1), 0)
    starts = torch.cumsum(counts, 0) - counts
    v_order = v[order]
    rank_in_level = torch.arange(n) - starts[v_order]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[rank_in_level < keep[v_order]]] = True
    return mask


def stratified_split(train_fraction: float, split_seed: int) -> Split:
    """Per valuation level keep max(1, round(fraction * n_v)) operations for training (all when fraction = 1).

    Seeded by ``split_seed`` only, so every trial with the same split seed sees the same split."""
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    all_idx = torch.arange(N_OPS)
    if train_fraction == 1.0:
        return Split(all_idx, all_idx[:0])
    mask = _stratified_subset(all_idx, train_fraction, torch.Generator().manual_seed(int(split_seed)))
    return Split(all_idx[mask], all_idx[~mask])


def heldout_mask(kind: str, *, split_seed: int = 0, level_min: int = 1, level_max: int = MAX_VALUATION,
                 position: int = 0, value: int = 1, position_b: int = 1, pairs: int = 1) -> torch.Tensor:
    """(N,) bool: the operations a structured split kind holds out (``valuation``, ``trit``, ``compositional``).

    ``compositional`` holds out ``pairs`` (1-3) combinations (x, sigma(x)) of trit ``position`` = x and trit
    ``position_b`` = sigma(x), with x and the permutation sigma drawn from ``split_seed``: no two held-out pairs
    share a value, so every value of either position still occurs in training (with the other position's other
    values)."""
    trits = all_trits().long()
    if kind == "valuation":
        if not 0 < level_min <= level_max <= MAX_VALUATION:
            raise ValueError(f"valuation split needs 1 <= split_level_min <= split_level_max <= 9, "
                             f"got {level_min}..{level_max}")
        v = valuations()
        return (v >= level_min) & (v <= level_max)
    if not 0 <= position < N_TRITS:
        raise ValueError(f"split_position must be in [0, 8], got {position}")
    if kind == "trit":
        if value not in (-1, 0, 1):
            raise ValueError(f"split_value must be -1, 0 or 1, got {value}")
        return trits[:, position] == value
    if kind == "compositional":
        if not 0 <= position_b < N_TRITS or position_b == position:
            raise ValueError(f"split_position_b must be in [0, 8] and differ from split_position, got {position_b}")
        if not 1 <= pairs <= 3:
            raise ValueError(f"split_pairs must be in [1, 3], got {pairs}")
        gen = torch.Generator().manual_seed(int(split_seed))
        xs = torch.randperm(3, generator=gen)[:pairs] - 1
        sigma = torch.randperm(3, generator=gen) - 1
        mask = torch.zeros(N_OPS, dtype=torch.bool)
        for x in xs.tolist():
            mask |= (trits[:, position] == x) & (trits[:, position_b] == sigma[x + 1])
        return mask
    raise ValueError(f"unknown split kind {kind!r}; known kinds: {', '.join(SPLIT_KINDS)}")


def make_split(cfg: "DataConfig") -> Split:
    """The split ``cfg.split`` selects, seeded by ``cfg.split_seed`` only.

    ``stratified``: `stratified_split` (train_fraction of every level; the rest is held out). A structured kind
    holds out exactly its set (`heldout_mask`) and trains on a stratified ``train_fraction`` share of the other
    operations; with train_fraction < 1 the rest of those is neither trained on nor evaluated, so the held-out
    metrics measure the structured set alone."""
    if cfg.split == "stratified":
        return stratified_split(cfg.train_fraction, cfg.split_seed)
    if not 0.0 < cfg.train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {cfg.train_fraction}")
    held = heldout_mask(cfg.split, split_seed=cfg.split_seed, level_min=cfg.split_level_min,
                        level_max=cfg.split_level_max, position=cfg.split_position, value=cfg.split_value,
                        position_b=cfg.split_position_b, pairs=cfg.split_pairs)
    all_idx = torch.arange(N_OPS)
    pool = all_idx[~held]
    if cfg.train_fraction < 1.0:
        pool = pool[_stratified_subset(pool, cfg.train_fraction, torch.Generator().manual_seed(int(cfg.split_seed)))]
    return Split(pool, all_idx[held])


class StratifiedSampler:
    """Builds every stratified batch of an epoch at once.

    Each batch: the levels >= ``high_v_min_level`` present in the training set share ``floor(B * ratio)``
    draws equally (with replacement inside a level); the other levels share the rest in proportion to their
    size, at least 1 each; the batch is trimmed at random or padded with uniform draws to exactly B.
    The slot layout is the same for every batch; only the draws inside a level are random.
    """

    def __init__(self, train: torch.Tensor, batch_size: int, high_v_budget_ratio: float, high_v_min_level: int):
        v = valuations(train)
        order = torch.argsort(v, stable=True)
        self.sorted_train = train[order]
        sizes = torch.bincount(v, minlength=N_LEVELS)
        offsets = torch.cumsum(sizes, 0) - sizes
        present = sizes > 0
        high = present & (torch.arange(N_LEVELS) >= high_v_min_level)
        low = present & ~high
        budget_high = int(batch_size * high_v_budget_ratio)
        n_high = int(high.sum())
        per_high = max(1, budget_high // n_high) if n_high else 0
        budget_low = batch_size - budget_high if n_high else batch_size
        low_total = int(sizes[low].sum())
        draws = torch.zeros(N_LEVELS, dtype=torch.long)
        draws[high] = per_high
        if low_total:
            draws[low] = torch.clamp((budget_low * sizes[low]) // low_total, min=1)
        level_of_slot = torch.repeat_interleave(torch.arange(N_LEVELS), draws)
        self.batch_size = batch_size
        self.n_train = len(train)
        self.n_batches = -(-len(train) // batch_size)
        self.n_slots = len(level_of_slot)
        n_pad = max(0, batch_size - self.n_slots)
        # slot -> (offset into sorted_train, size of the pool it draws from); padding draws from all of train
        self.slot_offset = torch.cat([offsets[level_of_slot], torch.zeros(n_pad, dtype=torch.long)])
        self.slot_size = torch.cat([sizes[level_of_slot], torch.full((n_pad,), len(train), dtype=torch.long)])
        self.draws_per_level = draws

    def to(self, device: torch.device | str) -> "StratifiedSampler":
        self.sorted_train = self.sorted_train.to(device)
        self.slot_offset = self.slot_offset.to(device)
        self.slot_size = self.slot_size.to(device)
        return self

    def epoch_batches(self, gen: torch.Generator | None = None) -> torch.Tensor:
        """(n_batches, B) int64 operation indices for one epoch."""
        n_slots_total = len(self.slot_offset)
        dev = self.sorted_train.device
        u = torch.rand(self.n_batches, n_slots_total, generator=gen, dtype=torch.float64, device=dev)
        pick = (u * self.slot_size).long().clamp_max(self.slot_size - 1)
        batch = self.sorted_train[self.slot_offset + pick]   # a padding slot draws uniformly from all of train
        if n_slots_total > self.batch_size:  # too many slots: keep a random B of them per batch
            keep = torch.argsort(torch.rand(self.n_batches, n_slots_total, generator=gen, device=dev), dim=1)[:, : self.batch_size]
            batch = torch.gather(batch, 1, keep)
        return batch
