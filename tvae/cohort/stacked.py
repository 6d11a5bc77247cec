"""The TernaryVAE with a leading member axis: K members' parameters stacked, every layer serving all K at once.

The architecture is the one of `tvae.model` (built from a template `TernaryVAE`, so it is defined once): a
``Linear`` becomes ``baddbmm`` over weights (K, in, out), a ``LayerNorm`` normalises and then applies each
member's own scale and shift, activations and dropout are elementwise. Member k's parameters are initialised
exactly as a single `TernaryVAE` built under ``torch.manual_seed(seed_k)``.

Layout: all parameters of all members live in one member-major buffer ``flat`` (K, n); parameter ``name`` is the
view ``flat[:, off:off + numel]`` shaped (K, *stored_shape) (a Linear's weight stored transposed, (in, out)).
Module ``m``'s parameters are the contiguous columns ``segments[m]``, so a module of one member is one
contiguous row slice (one fused Adam call) and a member's whole state is one row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tvae.config import ModelConfig
from tvae.geometry import log0
from tvae.model import Dropout, TernaryVAE

MODULES = TernaryVAE.MODULES
ROW_ALIGN = 16

# a dropout site's masks: called with the site's width, returns (K, rows, width) multipliers or None
MaskSource = Callable[[int], "torch.Tensor | None"]


@dataclass(frozen=True)
class ParamSlot:
    name: str                     # the TernaryVAE parameter name, e.g. "encoder_A.body.0.weight"
    module: str                   # one of MODULES
    offset: int                   # first column in ``flat``
    shape: tuple[int, ...]        # stored shape per member (a Linear weight: (in, out))
    transposed: bool              # stored as the transpose of the TernaryVAE parameter

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _template(cfg: ModelConfig) -> TernaryVAE:
    return TernaryVAE(cfg)


class Layout:
    """Where each parameter of one member lives in a row of the flat buffer."""

    def __init__(self, cfg: ModelConfig):
        if cfg.learnable_curvature:
            raise ValueError("model.learnable_curvature: the cohort engine trains a fixed curvature only")
        template = _template(cfg)
        self.slots: dict[str, ParamSlot] = {}
        self.segments: dict[str, tuple[int, int]] = {}
        off = 0
        for module in MODULES:
            start = off
            for name, p in getattr(template, module).named_parameters():
                full = f"{module}.{name}"
                transposed = p.dim() == 2
                shape = tuple(p.shape[::-1]) if transposed else tuple(p.shape)
                self.slots[full] = ParamSlot(full, module, off, shape, transposed)
                off += p.numel()
            self.segments[module] = (start, off)
        # rows padded to 16 floats (64 bytes): every member's row, and so each of its module slices, starts at
        # the same alignment in any cohort, so vectorised kernels split its elements the same way alone and in
        # a cohort (their scalar tails round differently)
        self.n = -(-off // ROW_ALIGN) * ROW_ALIGN
        # column -> module index (for per-module tables expanded to columns)
        self.template = template

    def row_of(self, model: TernaryVAE) -> torch.Tensor:
        """One member's row from a TernaryVAE's parameters."""
        row = torch.zeros(self.n)
        params = dict(model.named_parameters())
        for name, slot in self.slots.items():
            p = params[name].detach()
            row[slot.offset:slot.offset + slot.numel] = (p.t() if slot.transposed else p).reshape(-1)
        return row

    def initial_row(self, cfg: ModelConfig, seed: int) -> torch.Tensor:
        """The row of a TernaryVAE initialised under ``torch.manual_seed(seed)`` (the global RNG is restored)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.row_of(TernaryVAE(cfg))

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter as a view (K, *shape) into ``flat`` (K, n)."""
        K = flat.shape[0]
        return {name: flat[:, s.offset:s.offset + s.numel].view(K, *s.shape) for name, s in self.slots.items()}


class StackedTernaryVAE:
    """Forward passes of K members. ``params``: name -> (K, *shape) tensors (leaves or views of the buffer)."""

    def __init__(self, cfg: ModelConfig, layout: Layout):
        self.cfg = cfg
        self.layout = layout
        t = layout.template
        self.c = float(cfg.curvature)
        self._c: torch.Tensor | None = None
        self.max_radius = float(cfg.max_radius)
        self.latent_dim = cfg.latent_dim
        self.clamp = (cfg.logvar_min, cfg.logvar_max) if cfg.encoder == "improved" else None
        self.plans = {
            "encoder": list(self._plan(t.encoder_A.body)),
            "heads": ("heads",),
            "decoder": list(self._plan(t.decoder.net)),
            "direction": list(self._plan(t.proj_A.direction)),
            "radius": list(self._plan(t.proj_A.radius)),
        }
        self.dropout = {"encoder": cfg.encoder_dropout if cfg.encoder == "improved" else 0.0,
                        "decoder": cfg.decoder_dropout if cfg.decoder == "improved" else 0.0,
                        "projection": cfg.projection_dropout}

    @staticmethod
    def _plan(seq: nn.Sequential) -> Iterator[tuple[str, str, int]]:
        """(kind, parameter prefix inside the Sequential, width) per layer."""
        for i, layer in enumerate(seq):
            if isinstance(layer, nn.Linear):
                yield "linear", str(i), layer.out_features
            elif isinstance(layer, nn.LayerNorm):
                yield "layernorm", str(i), layer.normalized_shape[0]
            elif isinstance(layer, nn.SiLU):
                yield "silu", str(i), 0
            elif isinstance(layer, nn.ReLU):
                yield "relu", str(i), 0
            elif isinstance(layer, Dropout):
                yield "dropout", str(i), 0
            else:  # pragma: no cover - the model has no other layers
                raise TypeError(f"cohort engine: unsupported layer {type(layer).__name__}")

    # ------------------------------------------------------------------ layers
    @staticmethod
    def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x (K, B, in) @ w (K, in, out) + b (K, out)."""
        return torch.baddbmm(b.unsqueeze(1), x, w)

    def _run(self, plan, prefix: str, params: dict[str, torch.Tensor], x: torch.Tensor,
             masks: MaskSource | None) -> torch.Tensor:
        width = x.shape[-1]
        for kind, i, w in plan:
            if kind == "linear":
                x = self.linear(x, params[f"{prefix}.{i}.weight"], params[f"{prefix}.{i}.bias"])
                width = w
            elif kind == "layernorm":
                scale, shift = params[f"{prefix}.{i}.weight"], params[f"{prefix}.{i}.bias"]
                if x.shape[0] == 1:     # one member: torch's fused affine, as the single run's nn.LayerNorm
                    x = F.layer_norm(x, (w,), scale[0], shift[0])
                else:
                    x = torch.addcmul(shift.unsqueeze(1), F.layer_norm(x, (w,)), scale.unsqueeze(1))
            elif kind == "silu":
                x = F.silu(x)
            elif kind == "relu":
                x = F.relu(x, inplace=True)      # x is a fresh layer output; relu's backward reads its result
            elif kind == "dropout" and masks is not None:
                m = masks(width)
                if m is not None:
                    x = x * m
        return x

    def encoder(self, which: str, params, x: torch.Tensor, masks: MaskSource | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._run(self.plans["encoder"], f"encoder_{which}.body", params, x, masks)
        out = self.linear(h, params[f"encoder_{which}.heads.weight"], params[f"encoder_{which}.heads.bias"])
        mu, logvar = out.split(self.latent_dim, dim=-1)
        if self.clamp is not None:
            logvar = logvar.clamp(*self.clamp)
        return mu, logvar

    def projection(self, which: str, params, z: torch.Tensor, masks: MaskSource | None) -> torch.Tensor:
        direction = self._run(self.plans["direction"], f"proj_{which}.direction", params, z, masks)
        u = F.normalize(z + direction, dim=-1, eps=1e-12)
        s = self.max_radius * torch.sigmoid(self._run(self.plans["radius"], f"proj_{which}.radius", params, z, masks))
        return u * s

    def decoder(self, params, z_ball: torch.Tensor, masks: MaskSource | None) -> torch.Tensor:
        logits = self._run(self.plans["decoder"], "decoder.net", params, log0(z_ball, self.c_tensor(z_ball)), masks)
        return logits.view(*logits.shape[:-1], 9, 3)

    def c_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """The curvature as a tensor on ``like``'s device (made once per device)."""
        if self._c is None or self._c.device != like.device:
            raw = torch.tensor(math.log(math.expm1(self.c)), dtype=torch.float32)
            self._c = F.softplus(raw).to(like.device)       # as TernaryVAE.curvature() computes it
        return self._c

    # ------------------------------------------------------------------ dropout sites of one step
    def mask_widths(self, part: str) -> list[int]:
        """Widths of the dropout sites of ``part`` (encoder, projection, decoder) in forward order, when it runs
        in training mode with a non-zero rate."""
        if self.dropout[part] == 0.0:
            return []
        if part == "projection":
            plans = self.plans["direction"] + self.plans["radius"]
        else:
            plans = self.plans[part]
        widths, width = [], None
        for kind, _, w in plans:
            if kind == "linear":
                width = w
            elif kind == "dropout":
                widths.append(width)
        return widths
