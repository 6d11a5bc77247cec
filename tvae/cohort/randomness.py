"""Each member's random numbers, from its own generator, independent of the cohort around it.

A member draws everything random of an epoch up front (data order, batches, loss pairs) and, at every step, one
block of random 64-bit words that the step carves into its dropout masks and one block of normal floats for its
reparameterisation noise (`StepRandom`). The blocks' sizes depend only on the member's own step (its phase and
which encoders are frozen), so member k draws the same numbers alone and as one of K members.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Site:
    kind: str        # "mask" (16-bit draws, four to a 64-bit word) or "normal" (N(0, 1) floats)
    width: int
    p: float = 0.0   # dropout rate of a mask site

    def size(self, rows: int) -> int:
        """How many words (a mask site) or floats (a normal site) the site takes for ``rows`` rows."""
        n = rows * self.width
        return -(-n // 4) if self.kind == "mask" else n


class StepRandom:
    """The random numbers of one step for every member, handed out site by site in forward order: per member, one
    block of 64-bit words for the dropout masks and one block of N(0, 1) floats for the reparameterisation noise,
    each drawn by one call on the member's generator."""

    def __init__(self, sites: list[Site], rows: int, K: int, device: torch.device):
        self.sites = sites
        self.rows = rows
        self.offsets = []
        used = {"mask": 0, "normal": 0}
        for s in sites:
            self.offsets.append(used[s.kind])
            used[s.kind] += s.size(rows)
        self.words = torch.zeros(K, used["mask"], dtype=torch.int64, device=device)
        self.normals = torch.zeros(K, used["normal"], device=device)
        self._next = 0

    def draw(self, gens: list[torch.Generator | None]) -> None:
        """Fill member k's numbers from ``gens[k]`` (a member with None keeps its numbers: an inactive step)."""
        for k, g in enumerate(gens):
            if g is None:
                continue
            if self.words.shape[1]:
                self.words[k].random_(-2 ** 63, None, generator=g)
            if self.normals.shape[1]:
                self.normals[k].normal_(generator=g)
        self._next = 0

    def take(self, width: int) -> torch.Tensor | None:
        """The next site's values, (K, rows, width): keep multipliers for a mask site, N(0, 1) for a normal one."""
        i = self._next
        site = self.sites[i]
        if site.width != width:
            raise RuntimeError(f"step random: site {i} has width {site.width}, the model asked for {width}")
        self._next += 1
        K, rows, off = self.words.shape[0], self.rows, self.offsets[i]
        n = rows * width
        if site.kind == "mask":
            words = self.words[:, off:off + site.size(rows)]
            return keep_multipliers(words.view(torch.int16)[:, :n].reshape(K, rows, width), site.p)
        return self.normals[:, off:off + n].view(K, rows, width)

    def done(self) -> None:
        if self._next != len(self.sites):
            raise RuntimeError(f"step random: {len(self.sites) - self._next} of {len(self.sites)} sites unused")


def keep_multipliers(bits16: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout multipliers from uniform 16-bit integers (the rule of `tvae.model.keep_mask`): kept (value
    1/(1 - p')) when u >= round(65536 p) - 32768, else 0, with p' = round(65536 p)/65536."""
    threshold = round(p * 65536)
    u = bits16.to(torch.float32)
    return u.sub_(threshold - 32768 - 1).clamp_(0.0, 1.0).mul_(65536 / (65536 - threshold))
