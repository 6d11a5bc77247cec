"""The TernaryVAE: dual encoders, dual hyperbolic projections, one decoder reading log0 of A's ball point."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from tvae.config import ModelConfig
from tvae.geometry import log0

_HIDDEN = (256, 128, 64)


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverted-dropout multipliers: 1/(1 - p') with probability 1 - p', else 0, where p' = round(65536 p)/65536.

    Each full-range 64-bit draw of the torch generator gives four 16-bit uniforms, so a mask costs a quarter
    draw per element (torch.rand costs one): measured 2.5 ms against 9.8 ms for 3.8 million on one CPU core. The rate is p to within
    1/131072 (0.1 -> 0.10000610); the multiplier is the exact inverse of the keep rate, so E[mask] = 1."""
    n = math.prod(shape)
    threshold = round(p * 65536)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    u = bits.view(torch.int16)[:n].view(shape).to(torch.float32)      # integers, uniform on [-32768, 32767]
    # keep iff u >= t (t = threshold - 32768): u - (t - 1) is >= 1 when kept, <= 0 when dropped, so the clamp
    # gives exactly 1 or 0. Float arithmetic: on a CPU the int16 compare and the bool -> float conversion are
    # not vectorised (39 + 50 us for one projection's 98,304 multipliers; these three ops: 25 us).
    return u.sub_(threshold - 32768 - 1).clamp_(0.0, 1.0).mul_(65536 / (65536 - threshold))


class Dropout(nn.Module):
    """Inverted dropout (see `keep_mask`). ``forward(x, mask)`` uses a mask drawn beforehand (a projection draws
    all its sites' masks at once); without one it draws its own."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (keep_mask(x.shape, self.p, x.device) if mask is None else mask)


def _run(layers: nn.Sequential, x: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
    """``layers(x)``, handing the Dropout layers the given masks in order."""
    masks_left = iter(masks or ())
    for layer in layers:
        x = layer(x, next(masks_left, None)) if isinstance(layer, Dropout) else layer(x)
    return x


class Encoder(nn.Module):
    """9 -> 256 -> 128 -> 64 -> (mu, logvar) in R^d. ``relu``: Linear-ReLU (the published checkpoint's shape);
    ``improved``: Linear-LayerNorm-SiLU-Dropout (no dropout after the last block), logvar clamped."""

    def __init__(self, kind: str, latent_dim: int, dropout: float, logvar_min: float, logvar_max: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = 9
        for i, h in enumerate(_HIDDEN):
            layers.append(nn.Linear(width, h))
            if kind == "improved":
                layers += [nn.LayerNorm(h), nn.SiLU()]
                if i < len(_HIDDEN) - 1:
                    layers.append(Dropout(dropout))
            else:
                layers.append(nn.ReLU(inplace=True))
            width = h
        self.body = nn.Sequential(*layers)
        # mu and logvar heads as one Linear (one matmul); split on output
        self.heads = nn.Linear(width, 2 * latent_dim)
        self.clamp = (logvar_min, logvar_max) if kind == "improved" else None
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.heads(self.body(x)).split(self.latent_dim, dim=-1)
        if self.clamp is not None:
            logvar = logvar.clamp(*self.clamp)
        return mu, logvar


class Decoder(nn.Module):
    """16 -> 32 -> 64 -> 27 logits, read as (B, 9, 3); class k <-> trit k - 1."""

    def __init__(self, kind: str, latent_dim: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for h in (32, 64):
            layers.append(nn.Linear(width, h))
            layers += [nn.LayerNorm(h), nn.SiLU(), Dropout(dropout)] if kind == "improved" else [nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, 27))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(*z.shape[:-1], 9, 3)


class Projection(nn.Module):
    """Euclidean latent -> ball point: normalize(z + direction_mlp(z)) * max_radius * sigmoid(radius_mlp(z)).
    Identity-initialised direction (last layer zero), zero final radius bias."""

    def __init__(self, latent_dim: int, hidden: int, n_layers: int, dropout: float, max_radius: float):
        super().__init__()
        d_layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(n_layers):
            d_layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU(), Dropout(dropout)]
            width = hidden
        last = nn.Linear(width, latent_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.direction = nn.Sequential(*d_layers, last)
        r_hidden = max(32, hidden // 2)
        r_layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(n_layers):
            r_layers += [nn.Linear(width, r_hidden), nn.SiLU(), Dropout(dropout)]
            width = r_hidden
        r_last = nn.Linear(width, 1)
        nn.init.zeros_(r_last.bias)
        self.radius = nn.Sequential(*r_layers, r_last)
        self.max_radius = max_radius
        self.dropout = float(dropout)
        # widths of the dropout sites in forward order (direction blocks, then radius blocks)
        self.mask_widths = [hidden] * n_layers + [r_hidden] * n_layers

    def split_masks(self, flat: torch.Tensor, batch: int) -> list[torch.Tensor]:
        """One step's masks from a flat buffer of at least batch * sum(mask_widths) multipliers."""
        out, off = [], 0
        for w in self.mask_widths:
            out.append(flat[off:off + batch * w].view(batch, w))
            off += batch * w
        return out

    def forward(self, z: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``masks``: the dropout sites' masks (tests); in training without them, one draw covers all sites."""
        if masks is None and self.training and self.dropout > 0.0:
            batch = z.shape[0]
            masks = self.split_masks(keep_mask((batch * sum(self.mask_widths),), self.dropout, z.device), batch)
        n = len(self.mask_widths) // 2
        direction = _run(self.direction, z, masks[:n] if masks else None)
        u = F.normalize(z + direction, dim=-1, eps=1e-12)
        s = self.max_radius * torch.sigmoid(_run(self.radius, z, masks[n:] if masks else None))
        return u * s


class TernaryVAE(nn.Module):
    MODULES = ("encoder_A", "encoder_B", "proj_A", "proj_B", "decoder")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.latent_dim
        enc = lambda: Encoder(cfg.encoder, d, cfg.encoder_dropout, cfg.logvar_min, cfg.logvar_max)  # noqa: E731
        proj = lambda: Projection(d, cfg.hidden_dim, cfg.projection_layers, cfg.projection_dropout,  # noqa: E731
                                  cfg.max_radius)
        self.encoder_A = enc()
        self.encoder_B = enc()
        self.proj_A = proj()
        self.proj_B = proj()
        self.decoder = Decoder(cfg.decoder, d, cfg.decoder_dropout)
        # curvature c = softplus(raw): raw = log(e^c - 1). A parameter only when learnable.
        raw = torch.tensor(math.log(math.expm1(cfg.curvature)), dtype=torch.float32)
        if cfg.learnable_curvature:
            self.raw_curvature = nn.Parameter(raw)
        else:
            self.register_buffer("raw_curvature", raw)

    def curvature(self) -> torch.Tensor:
        return F.softplus(self.raw_curvature)

    def decode(self, z_hyp_A: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decoder(log0(z_hyp_A, c))


def sample(mu: torch.Tensor, logvar: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)
