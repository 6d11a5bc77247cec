"""The private PyTorch APIs the trainers call, in one place, checked against the tested torch versions.

``torch._fused_adam_`` is the kernel behind ``torch.optim.Adam(fused=True)``; calling it directly skips
``step()``'s per-call bookkeeping. Where it is missing or its signature changed, `fused_adam` falls back to the
same update written with public tensor ops (`adam_update`).
"""
from __future__ import annotations

import math

import torch

TESTED = ("2.13",)
_HAS_FUSED = hasattr(torch, "_fused_adam_") and torch.__version__.split("+")[0].rsplit(".", 1)[0] in TESTED


def fused_adam(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor, *,
               lr: float, beta1: float, beta2: float, weight_decay: float, eps: float) -> None:
    """One Adam update (coupled L2) of ``p`` in place; ``step`` (already incremented) is a 1-element tensor."""
    if _HAS_FUSED:
        torch._fused_adam_([p], [g], [m], [v], [], [step.view(())], amsgrad=False, lr=lr, beta1=beta1,
                           beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=False)
        return
    new_p, new_m, new_v = adam_update(p, g, m, v, float(step), lr=lr, beta1=beta1, beta2=beta2,
                                      weight_decay=weight_decay, eps=eps)
    p.copy_(new_p)
    m.copy_(new_m)
    v.copy_(new_v)


def adam_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: float | torch.Tensor, *,
                lr: float | torch.Tensor, beta1: float, beta2: float, weight_decay: float | torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused kernel's Adam update (coupled L2) in public tensor ops, as new (parameters, first moment, second
    moment); ``step`` (already incremented), ``lr`` and ``weight_decay`` may be tensors that broadcast against
    ``p`` (one value per row: `tvae.cohort.adam.CohortAdam.masked_step`)."""
    sqrt = torch.sqrt if isinstance(step, torch.Tensor) else math.sqrt
    g = g + weight_decay * p
    new_m = torch.lerp(m, g, 1 - beta1)
    new_v = (v * beta2).addcmul_(g, g, value=1 - beta2)
    denom = (new_v.sqrt() / sqrt(1 - beta2 ** step)).add_(eps)
    return p - (lr / (1 - beta1 ** step)) * new_m / denom, new_m, new_v
