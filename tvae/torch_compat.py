"""The private PyTorch APIs the trainers call, in one place, checked against the tested torch versions.

``torch._fused_adam_`` is the kernel behind ``torch.optim.Adam(fused=True)``; calling it directly skips
``step()``'s per-call bookkeeping. Where it is missing or its signature changed, `fused_adam` falls back to the
same update written with public tensor ops.
"""
from __future__ import annotations

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
    t = float(step)
    g = g + weight_decay * p if weight_decay else g
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (v.sqrt() / (1 - beta2 ** t) ** 0.5).add_(eps)
    p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
