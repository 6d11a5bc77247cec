"""Evaluation of K members over all 19,683 operations: one stacked forward pass (eval mode, no noise, the
means); the engine then computes the metrics, each member's on the host (`tvae.trainer.host_metrics`) or a whole
pass's at once on the device (`tvae.device_metrics`)."""
from __future__ import annotations

from typing import Sequence

import torch

from tvae.cohort.stacked import StackedTernaryVAE
from tvae.data import N_OPS
from tvae.geometry import radius

# members evaluated together, per device type: on a GPU an evaluation's kernels are counted per pass, so passes
# are larger there (`tvae.device_metrics` computes a whole pass's metrics in one batched set of kernels)
MEMBERS_PER_PASS = {"cpu": 16, "cuda": 64}
# members x operations per block, bounding a block's activations (x 256 floats): on a CPU 8 MiB activations
# (measured fastest there: 8 members took 0.056 s per member with 8,192 rows a block, 0.078 s with 32,768,
# 0.133 s in one block; docs/benchmarks.md); on a GPU a whole pass in one block (about 1.3 GiB an activation), so
# that the number of kernels of a pass does not grow with its members
MEMBER_ROWS_PER_BLOCK = {"cpu": 8192, "cuda": MEMBERS_PER_PASS["cuda"] * N_OPS}
MIN_ROWS_PER_BLOCK = 256


def members_per_pass(device: torch.device) -> int:
    return MEMBERS_PER_PASS.get(device.type, MEMBERS_PER_PASS["cpu"])


def embed_all(model: StackedTernaryVAE, params: dict[str, torch.Tensor], trits: torch.Tensor,
              classes: torch.Tensor, coverage: Sequence[bool], c: torch.Tensor,
              frozen_mu: dict[str, torch.Tensor], rows_per_block: int | None = None) -> tuple[torch.Tensor, ...]:
    """mu_B, z_B, r_A, r_B and decoder-correctness of every operation for each member (leading axis K), computed
    in blocks of operations (larger blocks for fewer members). A member in the coverage phase has B tied to A (mu_B = mu_A, z_B = z_A), as the
    single run evaluates it. ``frozen_mu``: ``"A"``/``"B"`` -> (K, N, d) means of an encoder frozen for every
    member (not recomputed). ``rows_per_block``: members x operations per block (default: the device's
    `MEMBER_ROWS_PER_BLOCK`)."""
    if rows_per_block is None:
        rows_per_block = MEMBER_ROWS_PER_BLOCK.get(trits.device.type, MEMBER_ROWS_PER_BLOCK["cpu"])
    rows = max(MIN_ROWS_PER_BLOCK, rows_per_block // len(coverage))
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
