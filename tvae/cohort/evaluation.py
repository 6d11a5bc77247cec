"""Evaluation of K members over all 19,683 operations: one stacked forward pass (eval mode, no noise, the
means), then each member's metrics on the host (`tvae.trainer.host_metrics`, the single run's definitions)."""
from __future__ import annotations

from typing import Sequence

import torch

from tvae.cohort.stacked import StackedTernaryVAE
from tvae.geometry import radius

MEMBERS_PER_PASS = 16    # members evaluated together
MEMBER_ROWS_PER_BLOCK = 32768   # members x operations per block: bounds a block's activations (x 256 floats)


def embed_all(model: StackedTernaryVAE, params: dict[str, torch.Tensor], trits: torch.Tensor,
              classes: torch.Tensor, coverage: Sequence[bool], c: torch.Tensor,
              frozen_mu: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """mu_B, z_B, r_A, r_B and decoder-correctness of every operation for each member (leading axis K), computed
    in blocks of operations (fewer, larger blocks for fewer members). A member in the coverage phase has B tied to A (mu_B = mu_A, z_B = z_A), as the
    single run evaluates it. ``frozen_mu``: ``"A"``/``"B"`` -> (K, N, d) means of an encoder frozen for every
    member (not recomputed)."""
    rows = max(1024, MEMBER_ROWS_PER_BLOCK // len(coverage))     # one block for a single member
    parts = [_embed_block(model, params, trits[i:i + rows], classes[i:i + rows], coverage, c,
                          {k: v[:, i:i + rows] for k, v in frozen_mu.items()})
             for i in range(0, len(trits), rows)]
    return tuple(torch.cat(t, 1) for t in zip(*parts))


def _embed_block(model, params, trits, classes, coverage, c, frozen_mu):
    K = next(iter(params.values())).shape[0]
    x = trits.unsqueeze(0).expand(K, *trits.shape)
    mu_A = frozen_mu["A"] if "A" in frozen_mu else model.encoder("A", params, x, None)[0]
    z_A = model.projection("A", params, mu_A, None)
    if all(coverage):
        mu_B, z_B = mu_A, z_A
    else:
        mu_B = frozen_mu["B"] if "B" in frozen_mu else model.encoder("B", params, x, None)[0]
        z_B = model.projection("B", params, mu_B, None)
        if any(coverage):
            tied = torch.tensor(list(coverage), device=trits.device).view(K, 1, 1)
            mu_B, z_B = torch.where(tied, mu_A, mu_B), torch.where(tied, z_A, z_B)
    correct = (model.decoder(params, z_A, None).argmax(-1) == classes).all(-1)
    return mu_B, z_B, radius(z_A, c), radius(z_B, c), correct
