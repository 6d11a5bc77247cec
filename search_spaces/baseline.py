"""`baseline`: a narrow search around the v5.12.4 recipe (all data, its loss weights ± a factor ~2)."""
from __future__ import annotations

from typing import Any

import optuna

from search_spaces import keys as K
from search_spaces.base import SearchSpace


def define(trial: optuna.Trial) -> dict[str, Any]:
    return {
        K.LR: trial.suggest_float("lr", 4e-4, 2e-3, log=True),
        K.W_HIERARCHY: trial.suggest_float("w_hierarchy", 2.5, 10.0, log=True),
        K.W_RICHNESS: trial.suggest_float("w_richness", 1.0, 5.0, log=True),
        K.W_SEPARATION: trial.suggest_float("w_separation", 1.5, 6.0, log=True),
        K.W_RADIAL: trial.suggest_float("w_radial", 0.5, 2.0, log=True),
        K.W_RANK: trial.suggest_float("w_rank", 0.25, 1.0, log=True),
    }


SPACE = SearchSpace(
    name="baseline",
    task="ternary_vae",
    description="around the v5.12.4 recipe: lr and loss weights within about a factor 2",
    define=define,
    metric="train_Q",
    mode="max",
    epochs=100,
    trials=16,
    scheduler="fifo",
)
