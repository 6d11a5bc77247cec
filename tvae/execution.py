"""How a run executes on its device: switches that change its speed, never its recipe.

A switch left at None takes its device's default, the faster way as measured on each device (tvae/README.md,
Measurements). Tests and `tvae.bench` set them explicitly to compare the ways side by side; every pair of ways
trains alike (tested)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Execution:
    # GPU with torch Adam: each epoch's steps, and its evaluation, replay as CUDA graphs (ignored elsewhere)
    cuda_graphs: bool = True
    # torch.compile of each step's loss (opt-in: pays on a GPU for long runs, gains nothing on a CPU)
    compile: bool = False
    # the evaluation's metrics in torch on the device (default: on a GPU; on a CPU the numpy ones are faster)
    device_metrics: bool | None = None
    # a structure step's A and B paths on two CUDA streams (default: on a GPU, when not compiled)
    two_streams: bool | None = None
    # autograd hands fresh gradients over and one foreach copy moves them into the flat gradient buffer
    # (default: on a GPU; on a CPU autograd adds into the buffer's views in place, measured 2 % faster)
    hand_over_grads: bool | None = None
    # the fused Adam kernel called directly (`trainer.adam_step`) instead of Optimizer.step()
    # (default: on a CPU with torch Adam, 44 instead of 91 us per step; the GPU's capturable Adam keeps step())
    direct_adam: bool | None = None

    def resolve(self, device: torch.device, optimizer: str) -> Execution:
        """Every switch decided for ``device`` and ``optim.optimizer``; ValueError for a combination that
        cannot run."""
        gpu = device.type == "cuda"
        torch_adam = optimizer == "adam"
        if self.two_streams and not gpu:
            raise ValueError("execution: two_streams needs a CUDA device")
        if self.two_streams and self.compile:
            raise ValueError("execution: two_streams and compile cannot be combined")
        if self.direct_adam and (gpu or not torch_adam):
            raise ValueError("execution: direct_adam is for torch Adam (optim.optimizer: adam) on a CPU")

        def pick(value: bool | None, default: bool) -> bool:
            return default if value is None else value

        return replace(self, cuda_graphs=self.cuda_graphs and gpu and torch_adam,
                       device_metrics=pick(self.device_metrics, gpu),
                       two_streams=pick(self.two_streams, gpu and not self.compile),
                       hand_over_grads=pick(self.hand_over_grads, gpu),
                       direct_adam=pick(self.direct_adam, not gpu and torch_adam))
