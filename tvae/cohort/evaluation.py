"""Evaluation of K members over all 19,683 operations, a pass of members at a time: one stacked forward pass
(eval mode, no noise, the means), then the metrics, each member's on the host (`tvae.trainer.host_metrics`) or a
whole pass's at once on the device (`tvae.device_metrics`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from tvae.cohort.stacked import Layout, StackedTernaryVAE
from tvae.data import N_OPS
from tvae.device_metrics import DeviceMetrics
from tvae.geometry import radius
from tvae.trainer import host_metrics, unpack_device_metrics

if TYPE_CHECKING:
    from tvae.cohort.engine import Member

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
    in blocks of operations (larger blocks for fewer members). A member in the coverage phase has B tied to A
    (mu_B = mu_A, z_B = z_A), as the single run evaluates it. ``frozen_mu``: ``"A"``/``"B"`` -> (K, N, d) means of an encoder frozen for every
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


class Evaluation:
    """A cohort's evaluation: each given member's metrics (the single run's row entries) from the embeddings of
    every operation, computed a pass of members at a time; on the device (``on_device``: one batched computation
    per pass, every pass's numbers read back in one transfer) or member by member in numpy on the host."""

    def __init__(self, model: StackedTernaryVAE, layout: Layout, trits: torch.Tensor, classes: torch.Tensor,
                 v: torch.Tensor, c: torch.Tensor, device: torch.device, on_device: bool):
        self.model, self.layout, self.trits, self.classes, self.v, self.c = model, layout, trits, classes, v, c
        self.device, self.on_device = device, on_device
        self._pass_metrics: dict[tuple[int, ...], DeviceMetrics] = {}

    def __call__(self, flat: torch.Tensor, members: Sequence[Member], idx: list[int]) -> dict[int, dict[str, float]]:
        """{k: metrics} for members ``idx`` (indices into ``members`` and the rows of ``flat``)."""
        out: dict[int, dict[str, float]] = {}
        on_device: list[tuple[list[int], DeviceMetrics, torch.Tensor]] = []
        with torch.inference_mode():
            per_pass = members_per_pass(self.device)
            for start in range(0, len(idx), per_pass):
                part = idx[start:start + per_pass]
                params = self.layout.views(flat[part])
                coverage = [members[k].phase() == "coverage" for k in part]
                frozen_mu = {}
                for name in ("encoder_A", "encoder_B"):      # an encoder frozen for all: its cached means
                    if all(not cov and name in members[k].cache for k, cov in zip(part, coverage)):
                        frozen_mu[name[-1]] = torch.stack([members[k].cache[name][0] for k in part])
                mu_B, z_B, r_A, r_B, correct = embed_all(self.model, params, self.trits, self.classes, coverage,
                                                         self.c, frozen_mu)
                if self.on_device:          # the pass's metrics in one batched computation, read back below
                    metrics = self._device_metrics(members, tuple(part))
                    on_device.append((part, metrics, metrics.values(mu_B, z_B, r_A, r_B, correct, self.c)))
                else:
                    for i, k in enumerate(part):
                        m = members[k]
                        out[k] = host_metrics(m.evals, m.train_ops, mu_B[i], z_B[i], r_A[i], r_B[i], correct[i],
                                              self.c)
            if on_device:                   # every pass's numbers in one transfer
                values = torch.cat([v for _, _, v in on_device]).cpu().numpy()
                row = 0
                for part, metrics, _ in on_device:
                    for i, k in enumerate(part):
                        out[k] = unpack_device_metrics(metrics.model_values(values[row:row + len(part)], i),
                                                       members[k].evals)
                    row += len(part)
        return out

    def _device_metrics(self, members: Sequence[Member], part: tuple[int, ...]) -> DeviceMetrics:
        """The device metrics of one pass's members (built once per set of members: their samples never change)."""
        if part not in self._pass_metrics:
            self._pass_metrics[part] = DeviceMetrics([members[k].evals for k in part],
                                                     [members[k].train_ops for k in part], self.v, self.device)
        return self._pass_metrics[part]
