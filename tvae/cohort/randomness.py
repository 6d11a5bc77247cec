"""Each member's random numbers, from its own generator, independent of the cohort around it.

A member draws everything random of an epoch up front (data order, batches, loss pairs: `tvae.cohort.inputs`)
and, at every step, one block of random 64-bit words that the step carves into its dropout masks and its
reparameterisation noise (`StepRandom`). The block's size depends only on the member's own step (its phase and
which encoders are frozen), so member k draws the same numbers alone and as one of K members.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Site:
    kind: str        # "mask" (16-bit draws) or "normal" (one 64-bit word per value)
    width: int
    p: float = 0.0   # dropout rate of a mask site

    def words(self, rows: int) -> int:
        n = rows * self.width
        return -(-n // 4) if self.kind == "mask" else n


class StepRandom:
    """The random words of one step for every member, handed out site by site in forward order."""

    def __init__(self, sites: list[Site], rows: int, K: int, device: torch.device):
        self.sites = sites
        self.rows = rows
        self.offsets = []
        off = 0
        for s in sites:
            self.offsets.append(off)
            off += s.words(rows)
        self.words = off
        self.buf = torch.zeros(K, max(off, 1), dtype=torch.int64, device=device)
        self._next = 0

    def draw(self, gens: list[torch.Generator | None]) -> None:
        """Fill member k's words from ``gens[k]`` (a member with None keeps its words: an inactive step)."""
        for k, g in enumerate(gens):
            if g is not None and self.words:
                self.buf[k].random_(-2 ** 63, None, generator=g)
        self._next = 0

    def take(self, width: int) -> torch.Tensor | None:
        """The next site's values, (K, rows, width): keep multipliers for a mask site, N(0, 1) for a normal one."""
        i = self._next
        site = self.sites[i]
        if site.width != width:
            raise RuntimeError(f"step random: site {i} has width {site.width}, the model asked for {width}")
        self._next += 1
        K, rows = self.buf.shape[0], self.rows
        words = self.buf[:, self.offsets[i]:self.offsets[i] + site.words(rows)]
        n = rows * width
        if site.kind == "mask":
            return keep_multipliers(words.view(torch.int16)[:, :n].reshape(K, rows, width), site.p)
        return box_muller(words.view(torch.int32).reshape(K, n, 2)).view(K, rows, width)

    def done(self) -> None:
        if self._next != len(self.sites):
            raise RuntimeError(f"step random: {len(self.sites) - self._next} of {len(self.sites)} sites unused")


def keep_multipliers(bits16: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout multipliers from uniform 16-bit integers (the rule of `tvae.model.keep_mask`): kept (value
    1/(1 - p')) when u >= round(65536 p) - 32768, else 0, with p' = round(65536 p)/65536."""
    threshold = round(p * 65536)
    u = bits16.to(torch.float32)
    return u.sub_(threshold - 32768 - 1).clamp_(0.0, 1.0).mul_(65536 / (65536 - threshold))


def box_muller(pairs: torch.Tensor) -> torch.Tensor:
    """N(0, 1) values from pairs of uniform 32-bit integers (..., 2): the top 22 bits of each make u1, u2 in
    (0, 1), exact in float32 (never 0 or 1), and z = sqrt(-2 ln u1) cos(2 pi u2)."""
    u = ((pairs >> 10).to(torch.float32) + 2097152.5) * (1.0 / 4194304.0)
    u1, u2 = u.unbind(-1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
