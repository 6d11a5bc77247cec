"""What a search space is: an Optuna define-by-run function plus the defaults a study uses with it.

`define(trial)` samples with ``trial.suggest_*`` (conditional parameters allowed) and returns the overrides
handed to the task: a dict of dotted config keys (``"loss.rank.weight"``) to values. Parameter names given to
``suggest_*`` are the names reported in ``trials.parquet``; they may differ from the override keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import optuna


@dataclass(frozen=True)
class SearchSpace:
    name: str
    task: str                      # a task name of tvae.tasks (e.g. "ternary_vae", "modular_addition")
    description: str
    define: Callable[[optuna.Trial], dict[str, Any]]
    metric: str                    # the column of the epoch row the searcher optimises
    mode: Literal["min", "max"]
    epochs: int                    # default epochs per trial
    trials: int                    # default number of trials
    scheduler: Literal["fifo", "grokking_asha"] = "fifo"
    grace_period: int | None = None  # for grokking_asha: never stop a trial before this epoch
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides applied to every trial
    # grokking_asha never stops a trial whose epoch row has ``memorised_when[0] >= memorised_when[1]``
    # (e.g. ("train_acc", 0.99)): it has memorised and may still generalise late.
    memorised_when: tuple[str, float] | None = None
