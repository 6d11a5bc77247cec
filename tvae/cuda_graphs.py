"""CUDA-graph capture and replay of one epoch's training steps (the GPU path of the trainer).

A model this size is launch-bound on a GPU: an eager step issues a few hundred tiny kernels, each waiting on
the host. `EpochGraphs` records the whole loop of an epoch's steps (forward, backward, clipping, fused Adam)
as one graph per key (phase, trainable modules, ...) and replays it, so an epoch is a single launch.

Protocol: ``run(key, fn, inputs)`` where ``fn(inputs)`` runs the epoch's steps and returns tensors, and
``inputs`` holds every tensor that differs between epochs (batches, random pairs, the learning-rate
tensors live in the optimiser). The first epoch with a new key runs eagerly on the capture stream (real
training, and the warm-up that lazily created state such as cuBLAS handles and optimiser moments needs),
then the loop is captured against static copies of the inputs; capturing executes nothing, so it does not
train. Later epochs copy their inputs into the static copies and replay. Random numbers drawn inside ``fn``
(reparameterisation noise, dropout) come from the graph-safe Philox generator: each replay draws new ones.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import torch

StepsFn = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, ...]]


class EpochGraphs:
    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], Any]] = {}
        self.captures = 0             # graphs captured so far (a key seen for the first time)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()

    def run(self, key: Hashable, fn: StepsFn, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        entry = self._graphs.get(key)
        if entry is None:
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                out = fn(inputs)                           # the real epoch, eager
                static_in = {k: _same_strides(v) for k, v in inputs.items()}
            current.wait_stream(self.stream)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                static_out = fn(static_in)                 # recorded, not executed
            self._graphs[key] = (graph, static_in, static_out)
            self.captures += 1
            return out
        graph, static_in, static_out = entry
        for name, value in inputs.items():
            static_in[name].copy_(value)
        graph.replay()
        return static_out


def _same_strides(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with its strides (a padded layout stays padded: `trainer.aligned_steps`)."""
    return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device).copy_(t)
