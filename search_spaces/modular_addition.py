"""`modular_addition`: the positive control (docs/positive-control.md) — a study over weight decay and train fraction of the
modular-addition task (``tvae.modular_addition``), whose trials are known to fall into Liu et al.'s phases:
weight decay 0 memorises (held-out stays at chance), a large train fraction generalises almost together with
memorisation (comprehension), a moderate train fraction with weight decay generalises long after memorising
(grokking). Measured epochs for each regime are in ``docs/positive-control.md``.

FIFO scheduler: no trial is stopped early, so a trial that has memorised but not yet generalised runs to the end.
"""
from __future__ import annotations

from typing import Any

import optuna

from search_spaces.base import SearchSpace

WEIGHT_DECAYS = (0.0, 0.3, 1.0, 2.0)


def define(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "optim.weight_decay": trial.suggest_categorical("weight_decay", list(WEIGHT_DECAYS)),
        "data.train_fraction": trial.suggest_float("train_fraction", 0.3, 0.9, step=0.05),
    }


SPACE = SearchSpace(
    name="modular_addition",
    task="modular_addition",
    description="positive control: (a+b) mod 59 MLP over weight decay × train fraction; "
                "a 300-epoch trial takes about 20-45 CPU-seconds",
    define=define,
    metric="heldout_acc",
    mode="max",
    epochs=300,
    trials=8,
    scheduler="fifo",
    memorised_when=("train_acc", 0.99),
)
