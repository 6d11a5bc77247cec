"""A run's own random state: python, numpy, torch (and the run's CUDA device), swapped in only while it trains.

`RunRNG.seeded(seed)` seeds a fresh state without touching the process's generators; ``with rng.active():``
installs it, and on leaving keeps what the block advanced it to and puts the caller's state back. Its
`state_dict` holds tensors, lists and numbers only, so ``torch.load(weights_only=True)`` reads it back.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator, Mapping

import numpy as np
import torch


def _capture(device: torch.device) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore(state: Mapping[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class RunRNG:
    """The random state of one run; see the module docstring."""

    def __init__(self, state: Mapping[str, Any], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._state = dict(state)

    @classmethod
    def seeded(cls, seed: int, device: str | torch.device = "cpu") -> "RunRNG":
        device = torch.device(device)
        outer = _capture(device)
        try:
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            torch.manual_seed(seed)   # also seeds every CUDA device
            return cls(_capture(device), device)
        finally:
            _restore(outer, device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = _capture(self.device)
        _restore(self._state, self.device)
        try:
            yield
        finally:
            self._state = _capture(self.device)
            _restore(outer, self.device)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._state = dict(state)
