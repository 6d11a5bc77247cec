"""Adam for a cohort: per member and per module its own learning rate, weight decay and step count.

Each (member, module) pair is what one parameter group of ``torch.optim.Adam(fused=True)`` would be for a
single run: its update is torch's fused Adam kernel (coupled L2) on that member's contiguous slice of the
module's columns, with that member's own rate and step count. A pair that does not train this step (a frozen
module, a member whose epoch has fewer steps) is skipped entirely, as torch skips a group without gradients.
`tvae.torch_compat` holds the call of the kernel.
"""
from __future__ import annotations

from typing import Sequence

import torch

from tvae import torch_compat

BETAS = (0.9, 0.999)
EPS = 1e-8


class CohortAdam:
    """State of K members over the flat layout (K, n) with module segments ``segments`` (name -> (start, end))."""

    def __init__(self, K: int, n: int, segments: dict[str, tuple[int, int]], device: torch.device):
        self.segments = dict(segments)
        self.modules = list(segments)
        self.exp_avg = torch.zeros(K, n, device=device)
        self.exp_avg_sq = torch.zeros(K, n, device=device)
        self.steps = torch.zeros(K, len(self.modules), device=device)      # float, as torch's fused Adam keeps it

    def step(self, flat: torch.Tensor, grad: torch.Tensor, rows: Sequence[int], lrs: Sequence[dict[str, float]],
             weight_decays: Sequence[float], modules: Sequence[str]) -> None:
        """One update of members ``rows`` (row indices of ``flat``), each for the ``modules`` that train, with
        learning rates ``lrs[i][module]`` and weight decay ``weight_decays[i]`` for row ``rows[i]``."""
        b1, b2 = BETAS
        for i, k in enumerate(rows):
            for name in modules:
                a, b = self.segments[name]
                m = self.modules.index(name)
                step = self.steps[k, m:m + 1]
                step += 1
                torch_compat.fused_adam(flat[k, a:b], grad[k, a:b], self.exp_avg[k, a:b], self.exp_avg_sq[k, a:b],
                                        step, lr=lrs[i][name], beta1=b1, beta2=b2,
                                        weight_decay=weight_decays[i], eps=EPS)

    # ------------------------------------------------------------------ member slices
    def rows(self, idx: Sequence[int]) -> "CohortAdam":
        """A copy holding the state of members ``idx`` (in that order)."""
        out = CohortAdam.__new__(CohortAdam)
        out.segments, out.modules = self.segments, self.modules
        sel = torch.as_tensor(list(idx), device=self.exp_avg.device)
        out.exp_avg, out.exp_avg_sq, out.steps = self.exp_avg[sel], self.exp_avg_sq[sel], self.steps[sel]
        return out

    def put_rows(self, idx: Sequence[int], part: "CohortAdam") -> None:
        sel = torch.as_tensor(list(idx), device=self.exp_avg.device)
        self.exp_avg[sel], self.exp_avg_sq[sel], self.steps[sel] = part.exp_avg, part.exp_avg_sq, part.steps

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        return {"exp_avg": self.exp_avg[k].clone(), "exp_avg_sq": self.exp_avg_sq[k].clone(),
                "steps": self.steps[k].clone()}

    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        self.exp_avg[k] = state["exp_avg"]
        self.exp_avg_sq[k] = state["exp_avg_sq"]
        self.steps[k] = state["steps"]
