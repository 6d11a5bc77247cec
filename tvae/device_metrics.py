"""The evaluation's metrics of P models at once on their device (the GPU's way), without a host sync.

One `DeviceMetrics` serves a fixed list of models (a single run: one; a cohort's evaluation pass: up to
`tvae.cohort.evaluation.MEMBERS_PER_PASS` members), each with its own splits and metric samples
(`tvae.trainer._SplitEval`). Their samples are padded to common lengths once, so every metric is one batched
operation over all P models: the number of kernels an evaluation launches does not grow with P (tested by
counting dispatched operations). Definitions are those of `tvae.metrics` (`tvae.metrics_torch` computes them);
a split a model does not have gives NaN. `values` returns one float64 tensor (P, width): per model each split's
`NAMES` (in `SPLITS` order), then the d x d Gram matrix of its training means; `model_values` cuts one
model's numbers out of it in the layout `tvae.trainer.unpack_device_metrics` reads.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tvae import metrics_torch
from tvae.data import N_LEVELS, pad_rows
from tvae.geometry import distance

# the metrics of one split, in order (Q is derived on the host from dist_corr and hierarchy_B)
NAMES = ("coverage", "hierarchy_A", "hierarchy_B", "richness_A", "richness_B", "dist_corr", "padic_dist_corr",
         "r_v0", "r_v9")
SPLITS = ("train", "heldout")


class _SplitTables:
    """One split's samples of the models that have it, padded and on the device."""

    def __init__(self, evals: Sequence[Any], which: list[int], n_models: int, levels: torch.Tensor,
                 device: torch.device):
        P, n_ops = len(which), len(levels)
        self.which = torch.tensor(which, dtype=torch.long, device=device)
        self.all_models = P == n_models
        member = np.zeros((P, n_ops), dtype=bool)
        for i, ev in enumerate(evals):
            member[i, ev.ops] = True
        self.member = torch.from_numpy(member).to(device)
        self.weight = self.member.to(torch.float64)
        # dist_corr: all i < j pairs of each model's m sampled operations (m differs only for tiny splits) and
        # their |delta v| codes, fixed like the samples
        m = [0 if ev.dist is None else len(ev.dist.positions) for ev in evals]
        self.has_dist = max(m) >= 2
        if self.has_dist:
            self.dist_ops = pad_rows([ev.ops[ev.dist.positions] if ev.dist is not None else np.zeros(0, np.int64)
                                      for ev in evals], device)
            self.dist_m = torch.tensor(m, device=device).unsqueeze(1)
            iu, ju = np.triu_indices(max(m), k=1)
            self.iu, self.ju = torch.from_numpy(iu).to(device), torch.from_numpy(ju).to(device)
            v_s = levels[self.dist_ops]
            self.dist_codes = (v_s[:, self.iu] - v_s[:, self.ju]).abs().to(torch.uint8)
        # padic_dist_corr: fixed pairs of operations and their 3-adic distance codes
        n_pairs = [0 if ev.pi is None else len(ev.pi) for ev in evals]
        self.has_padic = max(n_pairs) > 0
        if self.has_padic:
            empty = np.zeros(0, np.int64)
            self.pi = pad_rows([empty if ev.pi is None else ev.pi for ev in evals], device)
            self.pj = pad_rows([empty if ev.pj is None else ev.pj for ev in evals], device)
            self.padic_codes = pad_rows([empty if ev.pi is None else ev.padic_codes for ev in evals], device)
            self.padic_valid = torch.arange(self.pi.shape[1], device=device) < torch.tensor(n_pairs, device=device
                                                                                           ).unsqueeze(1)

    def values(self, levels: torch.Tensor, r_A: torch.Tensor, r_B: torch.Tensor, correct: torch.Tensor,
               z_B: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(P_split, len(NAMES)) float64 for the models that have this split (inputs already cut to them)."""
        nan = torch.full((r_B.shape[0],), float("nan"), dtype=torch.float64, device=r_B.device)
        moments_A = metrics_torch.level_moments(r_A, levels, self.weight)
        moments_B = metrics_torch.level_moments(r_B, levels, self.weight)
        codes = levels.expand_as(r_B)
        dist = padic = nan
        if self.has_dist:
            r_s = r_B.gather(1, self.dist_ops)
            pair_d = (r_s[:, self.iu] - r_s[:, self.ju]).abs()
            dist = metrics_torch.spearman_discrete(pair_d, self.dist_codes, N_LEVELS, valid=self.ju < self.dist_m)
        if self.has_padic:
            d = z_B.shape[-1]
            za = z_B.gather(1, self.pi.unsqueeze(-1).expand(-1, -1, d))
            zb = z_B.gather(1, self.pj.unsqueeze(-1).expand(-1, -1, d))
            padic = metrics_torch.spearman_discrete(distance(za, zb, c), self.padic_codes, N_LEVELS,
                                                    valid=self.padic_valid)
        return torch.stack([
            # a count, divided on the host (CUDA divides by a scalar as a product with its reciprocal, which made
            # 19683 / 19683 = 0.9999999999999999)
            (correct & self.member).sum(1).to(torch.float64),
            metrics_torch.spearman_discrete(r_A, codes, N_LEVELS, valid=self.member),
            metrics_torch.spearman_discrete(r_B, codes, N_LEVELS, valid=self.member),
            metrics_torch.richness(moments_A), metrics_torch.richness(moments_B),
            dist, padic, metrics_torch.level_mean(moments_B, 0), metrics_torch.level_mean(moments_B, 9)], 1)


class DeviceMetrics:
    """The device metrics of a fixed list of models, each given by its splits' samples (``{split: _SplitEval}``,
    "train" always, "heldout" where the model has one) and its training operations."""

    def __init__(self, evals: Sequence[Mapping[str, Any]], train_ops: Sequence[torch.Tensor],
                 levels: torch.Tensor, device: torch.device):
        self.P = len(evals)
        self.levels = levels.to(device=device, dtype=torch.long)      # valuation of every operation
        self.splits: dict[str, _SplitTables] = {}
        self.has = [tuple(s for s in SPLITS if s in e) for e in evals]
        for split in SPLITS:
            which = [i for i, e in enumerate(evals) if split in e]
            if which:
                self.splits[split] = _SplitTables([evals[i][split] for i in which], which, self.P, self.levels,
                                                  device)
        # the training operations of each model, padded (a padded row gets weight 0)
        self.train_ops = pad_rows([ops.cpu() for ops in train_ops], device).unsqueeze(-1)
        self.train_weight = (torch.arange(self.train_ops.shape[1], device=device)
                             < torch.tensor([len(ops) for ops in train_ops], device=device).unsqueeze(1)
                             ).to(torch.float32).unsqueeze(-1)

    def values(self, mu_B: torch.Tensor, z_B: torch.Tensor, r_A: torch.Tensor, r_B: torch.Tensor,
               correct: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(P, len(SPLITS) * len(NAMES) + d * d) float64 from the models' embeddings of every operation
        (leading axis P: (P, N, d) means and points, (P, N) radii and decoder correctness)."""
        blocks = []
        for split in SPLITS:
            tables = self.splits.get(split)
            if tables is None:
                blocks.append(torch.full((self.P, len(NAMES)), float("nan"), dtype=torch.float64,
                                         device=r_B.device))
                continue
            cut = (lambda t: t) if tables.all_models else (lambda t: t.index_select(0, tables.which))
            part = tables.values(self.levels, cut(r_A), cut(r_B), cut(correct), cut(z_B), c)
            if not tables.all_models:
                part = torch.full((self.P, len(NAMES)), float("nan"), dtype=torch.float64,
                                  device=r_B.device).index_copy(0, tables.which, part)
            blocks.append(part)
        train_mu_B = mu_B.gather(1, self.train_ops.expand(-1, -1, mu_B.shape[-1])) * self.train_weight
        gram = (train_mu_B.transpose(1, 2) @ train_mu_B).to(torch.float64).flatten(1)
        return torch.cat(blocks + [gram], 1)

    def model_values(self, values: np.ndarray, i: int) -> np.ndarray:
        """Model i's row of ``values`` (read back to the host) without the blocks of splits it lacks: each of
        its splits' NAMES in order, then the Gram matrix (what `tvae.trainer.unpack_device_metrics` reads)."""
        width = len(NAMES)
        parts = [values[i, k * width:(k + 1) * width] for k, s in enumerate(SPLITS) if s in self.has[i]]
        return np.concatenate(parts + [values[i, len(SPLITS) * width:]])
