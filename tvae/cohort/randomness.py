"""Each member's random numbers, from its own generator, independent of the cohort around it.

A member draws everything random of an epoch up front (data order, batches, loss pairs) and, at every step, one
block of random 64-bit words that the step carves into its dropout masks and one block of normal floats for its
reparameterisation noise (`StepRandom`). The blocks' sizes depend only on the member's own step (its phase and
which encoders are frozen), so member k draws the same numbers alone and as one of K members.

Steps in graph form (`tvae.cohort.engine`, the CUDA-graph path) cannot call K generators per step: there each
member draws one 62-bit key per epoch from its generator, and a step's words and normals, and the epoch's data
order, batches and loss pairs, are a counter-based hash of (member key, stream, position) computed for all
members by the same few integer operations (`counter_bits`, `counter_bits_at`), at positions that depend on the
member's own sizes only, so they too depend only on the member.
"""
from __future__ import annotations

import math
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

    def draw_counter(self, keys: torch.Tensor, step: int) -> None:
        """Fill every member's numbers for step ``step`` of the epoch from its key (``keys``: (K,) int64 in
        [0, 2^62)): the words from stream 0 of `counter_bits`, the normals by Box-Muller from stream 1."""
        K = self.words.shape[0]
        if self.words.shape[1]:
            bits = counter_bits(keys, 2 * step, 2 * self.words.shape[1])           # (K, 2n) 32-bit values
            signed = torch.where(bits >= 2 ** 31, bits - 2 ** 32, bits).to(torch.int32)    # the same 32 bits
            self.words.copy_(signed.view(torch.int64).view(K, -1))
        n = self.normals.shape[1]
        if n:
            half = -(-n // 2)
            u = (counter_bits(keys, 2 * step + 1, 2 * half).view(K, 2, half) >> 8).to(torch.float32).add_(0.5)
            u.mul_(1.0 / 2 ** 24)                                        # uniform in (0, 1): never 0 (log below)
            radius = torch.sqrt(-2.0 * torch.log(u[:, 0]))
            angle = (2 * math.pi) * u[:, 1]
            self.normals.copy_(torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], 1)[:, :n])
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


_M32 = 0xFFFFFFFF


def pcg_hash(x: torch.Tensor) -> torch.Tensor:
    """The PCG output hash of 32-bit values held in int64 (every product stays below 2^62: no overflow)."""
    x = (x * 747796405 + 2891336453) & _M32
    x = (((x >> ((x >> 28) + 4)) ^ x) * 277803737) & _M32
    return (x >> 22) ^ x


def counter_bits(keys: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(K, n) pseudo-random 32-bit values (int64) of member keys ``keys`` (K,) for counter ``stream`` (a step's
    own number): position i of member k is a hash of (the key's low word, stream, i) and the key's high word.
    Pure: the same key, stream and position give the same value in any cohort, on any device."""
    return counter_bits_at(keys, stream, torch.arange(n, device=keys.device, dtype=torch.int64).unsqueeze(0))


def counter_bits_at(keys: torch.Tensor, stream: int, positions: torch.Tensor) -> torch.Tensor:
    """`counter_bits` at given ``positions``: int64 in [0, 2^32), shaped (K, ...) or broadcastable to it (a
    member's positions may depend on its own sizes, never on the cohort's)."""
    shape = (-1,) + (1,) * (positions.dim() - 1)
    lo, hi = (keys & _M32).view(shape), ((keys >> 32) & _M32).view(shape)
    base = pcg_hash(lo ^ pcg_hash(torch.full_like(lo, stream & _M32)))
    return pcg_hash(pcg_hash(positions ^ base) ^ hi)


def uniform_below(bits: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Integers in [0, n) from 32-bit values (multiply and shift: exact in int64 for n < 2^31)."""
    return (bits * n) >> 32


def keep_multipliers(bits16: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout multipliers from uniform 16-bit integers (the rule of `tvae.model.keep_mask`): kept (value
    1/(1 - p')) when u >= round(65536 p) - 32768, else 0, with p' = round(65536 p)/65536."""
    threshold = round(p * 65536)
    u = bits16.to(torch.float32)
    return u.sub_(threshold - 32768 - 1).clamp_(0.0, 1.0).mul_(65536 / (65536 - threshold))
