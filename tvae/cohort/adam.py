"""Adam for a cohort: per member and per module its own learning rate, weight decay and step count.

Each (member, module) pair is what one parameter group of ``torch.optim.Adam(fused=True)`` would be for a
single run: its update is torch's fused Adam kernel (coupled L2) on that member's contiguous slice of the
module's columns, with that member's own rate and step count. A pair that does not train this step (a frozen
module, a member whose epoch has fewer steps) is skipped entirely, as torch skips a group without gradients.
`tvae.torch_compat` holds the call of the kernel.

`masked_step` is the same update for steps in graph form (the CUDA-graph path): every number a tensor, every
member updated by the same few operations per module, a member without a step (``live`` 0) left exactly as it
was. On a CPU it is about 3x slower than the fused kernel per member (measured at K = 1-64), so `step` stays the
CPU's way.
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

    def masked_step(self, flat: torch.Tensor, grad: torch.Tensor, live: torch.Tensor, lrs: torch.Tensor,
                    weight_decays: torch.Tensor, modules: Sequence[str]) -> None:
        """One update of every row of ``flat`` whose ``live`` (K,) is 1, for the ``modules`` that train, with
        learning rates ``lrs`` (K, len(self.modules)) and weight decays ``weight_decays`` (K,); rows with ``live``
        0 keep their parameters, moments and step counts. No host synchronisation (capturable)."""
        b1, b2 = BETAS
        keep = live.unsqueeze(1) > 0
        wd = weight_decays.unsqueeze(1)
        for name in modules:
            a, b = self.segments[name]
            m = self.modules.index(name)
            self.steps[:, m] += live
            t = self.steps[:, m:m + 1].clamp(min=1.0)       # a member without a step yet: any finite value
            state = flat[:, a:b], self.exp_avg[:, a:b], self.exp_avg_sq[:, a:b]
            new = torch_compat.adam_update(*state[:1], grad[:, a:b], *state[1:], t, lr=lrs[:, m:m + 1], beta1=b1,
                                           beta2=b2, weight_decay=wd, eps=EPS)
            for old, value in zip(state, new):
                old.copy_(torch.where(keep, value, old))

    @classmethod
    def over(cls, segments: dict[str, tuple[int, int]], exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
             steps: torch.Tensor) -> "CohortAdam":
        """An optimiser whose state is these tensors (not copied)."""
        out = cls.__new__(cls)
        out.segments, out.modules = dict(segments), list(segments)
        out.exp_avg, out.exp_avg_sq, out.steps = exp_avg, exp_avg_sq, steps
        return out

    # ------------------------------------------------------------------ member slices
    def rows(self, idx: Sequence[int]) -> "CohortAdam":
        """A copy holding the state of members ``idx`` (in that order)."""
        sel = torch.as_tensor(list(idx), device=self.exp_avg.device)
        return CohortAdam.over(self.segments, self.exp_avg[sel], self.exp_avg_sq[sel], self.steps[sel])

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
