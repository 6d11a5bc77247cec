"""Poincaré-ball helpers in plain torch. The curvature ``c`` is a tensor, so a learnable curvature gets gradients."""
from __future__ import annotations

import torch

_EPS = 1e-7


def _atanh_clamped(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh(x.clamp(max=1.0 - _EPS))


def radius(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Hyperbolic distance to the origin: (2/sqrt c) artanh(sqrt c ||z||), shape z.shape[:-1]."""
    sc = c.sqrt()
    return 2.0 / sc * _atanh_clamped(sc * z.norm(dim=-1))


def distance(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Poincaré distance (1/sqrt c) arccosh(1 + 2c||x-y||^2 / ((1 - c||x||^2)(1 - c||y||^2)))."""
    sq = (x - y).pow(2).sum(-1)
    den = (1.0 - c * x.pow(2).sum(-1)) * (1.0 - c * y.pow(2).sum(-1))
    arg = 1.0 + 2.0 * c * sq / den.clamp_min(_EPS)
    # arccosh has an infinite slope at 1: keep the argument a hair above it so gradients stay finite
    return torch.acosh(arg.clamp_min(1.0 + _EPS)) / c.sqrt()


def log0(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Logarithmic map at the origin: artanh(sqrt c ||z||) / (sqrt c ||z||) * z."""
    sc = c.sqrt()
    n = z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return _atanh_clamped(sc * n) / (sc * n) * z
