"""`grokking`: long TernaryVAE runs with a held-out split, searching what decides delayed generalisation.

Searched: loss weights, phase epochs (e1 = end of coverage, e2 = end of structure), the learning-rate schedule
family and its parameters, weight decay, and the training fraction. Budgets are hundreds of epochs, and the
scheduler is the grokking-safe ASHA: no trial is stopped before ``grace_period`` epochs, nor ever once it has
memorised its training split (train coverage ≥ 0.99), because that is exactly the trial that may grok later.
"""
from __future__ import annotations

import math
from typing import Any

import optuna

from search_spaces import keys as K
from search_spaces.base import SearchSpace


def budget(trial: optuna.Trial, default: int) -> int:
    """The study's epochs per trial: the driver stores them as the Optuna study's user attribute ``epochs``."""
    try:
        return int(trial.study.user_attrs.get("epochs", default))
    except AttributeError:
        return default


def suggest_schedule(trial: optuna.Trial, epochs: int) -> dict[str, Any]:
    """LR schedule family and its own parameters (conditional: each family draws only what it uses)."""
    family = trial.suggest_categorical("lr_schedule", ["constant", "cosine", "cosine_restarts", "multi_phase"])
    out: dict[str, Any] = {K.LR_SCHEDULE: family}
    if family == "cosine_restarts":
        out[K.LR_T0] = trial.suggest_int("lr_T0", 5, 80, log=True)
        out[K.LR_TMULT] = trial.suggest_int("lr_Tmult", 1, 3)
    elif family == "multi_phase":
        out[K.LR_PHASES] = K.multi_phase(epochs, search_scale=trial.suggest_float("lr_search_scale", 0.1, 1.0))
    out[K.LR_WARMUP] = trial.suggest_int("lr_warmup_epochs", 0, 10)
    return out


def define(trial: optuna.Trial) -> dict[str, Any]:
    epochs = budget(trial, SPACE.epochs)
    # The coverage phase must decode every training operation before e1. Its epochs are shuffled passes over the
    # training split, so with a held-out split it needs about 18/train_fraction epochs (measured at seed 0:
    # fraction 1.0 reached coverage 1.0 by e1 = 17, 0.52 by e1 = 33, 0.32 by e1 = 53; 0.52 with e1 = 17 stopped at
    # 0.24). e1 is searched above that floor (capped at half the budget: short budgets with small fractions
    # cannot reach coverage); structure scales with the budget (300 epochs: 30-150).
    train_fraction = trial.suggest_float("train_fraction", 0.3, 0.9)
    e1_low = min(math.ceil(18 / train_fraction), max(2, epochs // 2))
    e1 = trial.suggest_int("coverage_epochs", e1_low, e1_low + max(1, epochs // 10))
    structure = trial.suggest_int("structure_epochs", max(2, epochs // 10), max(3, epochs // 2))
    overrides: dict[str, Any] = {
        K.LR: trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        K.WEIGHT_DECAY: trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        K.TRAIN_FRACTION: train_fraction,
        K.E1: e1,
        K.E2: e1 + structure,
        K.W_HIERARCHY: trial.suggest_float("w_hierarchy", 0.5, 20.0, log=True),
        K.W_RICHNESS: trial.suggest_float("w_richness", 0.1, 10.0, log=True),
        K.W_SEPARATION: trial.suggest_float("w_separation", 0.1, 10.0, log=True),
        K.W_RADIAL: trial.suggest_float("w_radial", 0.1, 5.0, log=True),
        K.W_RANK: trial.suggest_float("w_rank", 0.05, 5.0, log=True),
        K.W_GEODESIC: trial.suggest_float("w_geodesic", 0.05, 5.0, log=True),
    }
    overrides.update(suggest_schedule(trial, epochs))
    return overrides


SPACE = SearchSpace(
    name="grokking",
    task="ternary_vae",
    description="loss weights, phase epochs, LR schedule, weight decay, train_fraction; long budgets, "
                "grokking-safe ASHA",
    define=define,
    metric="heldout_Q",
    mode="max",
    epochs=300,
    trials=32,
    scheduler="grokking_asha",
    grace_period=100,
    memorised_when=("train_coverage", 0.99),
)
