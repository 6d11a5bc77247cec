"""The task interface: the one small surface through which `study` drives any trainer.

A *task* turns a dict of dotted overrides (``{"loss.rank.weight": 0.3, ...}``) into a `Run`. A `Run` trains
one epoch at a time and returns that epoch's row (the epoch-row schema of ``results/README.md``), saves
everything needed to continue exactly, and is restored from such a save. Nothing here imports Ray or Optuna.

Tasks:
  - ``ternary_vae``       the TernaryVAE trainer (``tvae.trainer``)
  - ``modular_addition``  the positive control known to grok (``tvae.modular_addition``)
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or metric. The message names the epoch and the quantity."""


@runtime_checkable
class Run(Protocol):
    epochs: int  # total epochs requested
    epoch: int   # epochs completed so far = index of the next epoch to train

    def train_epoch(self) -> dict[str, Any]:
        """Train epoch ``self.epoch``, evaluate, advance ``self.epoch`` and return the row:
        ``epoch`` (int), ``phase`` (str), ``epoch_seconds`` (float) and the metrics (floats/bools).
        Raises `DivergedError` on a non-finite loss."""

    def save(self, directory: str | Path) -> None:
        """Write everything needed to continue exactly (model, optimiser, RNG states, bests, config)."""

    def summary(self) -> dict[str, Any]:
        """The last row's metrics plus ``best_<metric>`` values (what ``final.json`` holds)."""


# name -> "module:make_run, module:load_run"
_TASKS: dict[str, str] = {
    "ternary_vae": "tvae.trainer",
    "modular_addition": "tvae.modular_addition",
}


def task_names() -> list[str]:
    return sorted(_TASKS)


def _module(task: str):
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(task_names())}")
    return importlib.import_module(_TASKS[task])


def make_run(task: str, overrides: Mapping[str, Any] | None = None, *, epochs: int | None = None,
             seed: int = 0, device: str = "cpu") -> Run:
    """Build a fresh run of ``task``. Unknown or mistyped override keys raise ``ValueError`` naming the key."""
    return _module(task).make_run(dict(overrides or {}), epochs=epochs, seed=seed, device=device)


def load_run(task: str, directory: str | Path, *, device: str = "cpu") -> Run:
    """Restore a run saved with ``Run.save(directory)``; training continues exactly where it stopped."""
    return _module(task).load_run(Path(directory), device=device)
