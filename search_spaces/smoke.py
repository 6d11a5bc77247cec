"""`smoke`: tiny and fast, for tests and for trying the pipeline (a few epochs of a small TernaryVAE)."""
from __future__ import annotations

from typing import Any

import optuna

from search_spaces import keys as K
from search_spaces.base import SearchSpace


def define(trial: optuna.Trial) -> dict[str, Any]:
    return {
        K.LR: trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        K.W_RANK: trial.suggest_float("w_rank", 0.1, 2.0, log=True),
    }


SPACE = SearchSpace(
    name="smoke",
    task="ternary_vae",
    description="tiny: two parameters, a few short epochs; for tests",
    define=define,
    metric="train_Q",
    mode="max",
    epochs=5,
    trials=4,
    scheduler="fifo",
    fixed=dict(K.SMOKE_FIXED),
)
