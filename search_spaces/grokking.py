"""`grokking`: long TernaryVAE runs with a held-out split, searching what decides delayed generalisation.

Searched: the held-out split kind and its parameters (stratified, whole valuation levels, a trit value, trit-pair
combinations; tvae/data.py), the training fraction (0.05-0.9), loss weights, phase epochs (e1 = end of coverage,
e2 = end of structure), the learning-rate schedule family and its parameters, and weight decay (up to 0.1). The
coverage phase's length and both batch sizes follow the training set's size (`coverage_plan`,
`structure_batch`). Budgets are hundreds of epochs (the study's --epochs, up to 500), and the scheduler is the
grokking-safe ASHA: no trial is stopped before ``grace_period`` epochs (half the default budget; every
trial's coverage phase ends within the first third of its budget), nor ever once it has
memorised its training split (train Q ≥ 1.7, the detector's threshold for Q), because that is exactly the trial
that may grok later. (Training coverage is no such mark: the decoder trains in the coverage phase only, and a
small training set may end it short of 1.0.)
"""
from __future__ import annotations

import math
from typing import Any

import optuna

from search_spaces import keys as K
from search_spaces.base import SearchSpace
from tvae import data
from tvae.config import DataConfig


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


def suggest_split(trial: optuna.Trial) -> dict[str, Any]:
    """The held-out split kind and its own parameters (tvae/data.py SPLIT_KINDS), and the training fraction.

    ``valuation`` holds out v >= k with k >= 2 (training keeps levels 0 and 1, so its hierarchy is defined);
    ``trit`` draws positions 1-8 (trit 0 = -1 is the valuation split v >= 1); ``compositional`` draws its second
    position as an offset from the first. The training fraction is the share of the operations left after the
    structured hold-out (all of them for ``stratified``)."""
    kind = trial.suggest_categorical("split", ["stratified", "valuation", "trit", "compositional"])
    out: dict[str, Any] = {K.SPLIT: kind, K.TRAIN_FRACTION: trial.suggest_float("train_fraction", 0.05, 0.9, log=True)}
    if kind == "valuation":
        out[K.SPLIT_LEVEL_MIN] = trial.suggest_int("split_level_min", 2, 5)
    elif kind == "trit":
        out[K.SPLIT_POSITION] = trial.suggest_int("split_trit_position", 1, 8)
        out[K.SPLIT_VALUE] = trial.suggest_categorical("split_trit_value", [-1, 0, 1])
    elif kind == "compositional":
        position = trial.suggest_int("split_pair_position", 0, 8)
        out[K.SPLIT_POSITION] = position
        out[K.SPLIT_POSITION_B] = (position + trial.suggest_int("split_pair_offset", 1, 8)) % 9
        out[K.SPLIT_PAIRS] = trial.suggest_int("split_pairs", 1, 3)
    return out


# The coverage phase needs about COVERAGE_STEPS optimiser steps to decode every training operation, whatever the
# training set's size (measured at seed 0: all 19,683 operations at batch 256 reached coverage 1.0 after ~620
# steps; 20% at batch 256 after ~950; 5% at batch 128 reached 0.88 after 960 and 5% at batch 16-64 stayed below
# 0.12 after 600). Small training sets take batches of 128 (fewer would be more epochs of 1-4 steps).
COVERAGE_STEPS = 1200
SMALL_TRAIN = 5000                 # training sets below this many operations: coverage batches of 128


def coverage_plan(n_train: int, epochs: int) -> tuple[int, int]:
    """(coverage batch size, lowest e1) for ``n_train`` training operations and a budget of ``epochs``. e1 (up
    to a tenth of the budget above this) stays within the first third of the budget, so every trial is in its
    structure phase well before the scheduler's grace period; a small training set then ends its coverage phase
    short of COVERAGE_STEPS (5%: about 650 steps in 300 epochs) and of full coverage."""
    batch = 128 if n_train < SMALL_TRAIN else 256
    per_epoch = -(-n_train // batch)
    return batch, max(2, min(-(-COVERAGE_STEPS // per_epoch), epochs // 3 - epochs // 10))


def structure_batch(n_train: int) -> int:
    """Batch size of the structure and geometry phases: about as many steps per epoch as with every operation
    (39 batches of 512), so a small training set is not also trained for fewer steps.

    Decision: the batch is the power of two in [32, 512] nearest (in log scale) to the batch that would give
    exactly that many steps, not any integer, so trials with similar training sizes share a batch size and, when
    a study trains them as one cohort, share its step groups (members with different batch sizes train as
    separate groups; docs/cohorts.md). The steps per epoch then lie within a factor sqrt(2) of 39, except for
    training sets small enough to take the smallest batch, 32."""
    ideal = 512 * max(1, n_train) / data.N_OPS
    return 2 ** min(9, max(5, round(math.log2(ideal))))


def define(trial: optuna.Trial) -> dict[str, Any]:
    epochs = budget(trial, SPACE.epochs)
    overrides: dict[str, Any] = suggest_split(trial)
    n_train = len(data.make_split(_data_config(overrides)).train)
    coverage_batch, e1_low = coverage_plan(n_train, epochs)
    e1 = trial.suggest_int("coverage_epochs", e1_low, e1_low + max(1, epochs // 10))
    # the geometry phase keeps at least a tenth of the budget
    low = max(2, epochs // 10)
    structure = trial.suggest_int("structure_epochs", low, max(low + 1, min(epochs // 2, epochs - e1 - low)))
    overrides.update({
        K.LR: trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        K.WEIGHT_DECAY: trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        K.COVERAGE_BATCH: coverage_batch,
        K.BATCH: structure_batch(n_train),
        K.E1: e1,
        K.E2: e1 + structure,
        K.W_HIERARCHY: trial.suggest_float("w_hierarchy", 0.5, 20.0, log=True),
        K.W_RICHNESS: trial.suggest_float("w_richness", 0.1, 10.0, log=True),
        K.W_SEPARATION: trial.suggest_float("w_separation", 0.1, 10.0, log=True),
        K.W_RADIAL: trial.suggest_float("w_radial", 0.1, 5.0, log=True),
        K.W_RANK: trial.suggest_float("w_rank", 0.05, 5.0, log=True),
        K.W_GEODESIC: trial.suggest_float("w_geodesic", 0.05, 5.0, log=True),
    })
    overrides.update(suggest_schedule(trial, epochs))
    return overrides


def _data_config(overrides: dict[str, Any]) -> DataConfig:
    cfg = DataConfig()
    for key, value in overrides.items():
        if key.startswith("data."):
            setattr(cfg, key.removeprefix("data."), value)
    return cfg


SPACE = SearchSpace(
    name="grokking",
    task="ternary_vae",
    description="held-out split kind + parameters, train_fraction 0.05-0.9, loss weights, phase epochs, LR "
                "schedule, weight decay; long budgets, grokking-safe ASHA",
    define=define,
    metric="heldout_Q",
    mode="max",
    epochs=300,
    trials=32,
    scheduler="grokking_asha",
    grace_period=150,
    memorised_when=("train_Q", 1.7),
)
