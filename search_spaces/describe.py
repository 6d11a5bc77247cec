"""Describe a define-by-run space: which parameters it can draw and from which distributions.

A define-by-run function only reveals its (conditional) parameters when it runs, so we run it on a few
random trials in an in-memory study and take the union of what was drawn.
"""
from __future__ import annotations

from typing import Any

import optuna

from search_spaces.base import SearchSpace


def _distribution_text(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return "one of " + ", ".join(map(str, dist.choices))
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    scale = " log" if getattr(dist, "log", False) else ""
    step = f" step {dist.step}" if getattr(dist, "step", None) not in (None, 1) else ""
    return f"{kind}{scale} [{dist.low}, {dist.high}]{step}"


def parameters(space: SearchSpace, samples: int = 64) -> dict[str, str]:
    """Parameter name → distribution text, in first-seen order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, str] = {}
    for _ in range(samples):
        trial = study.ask()
        space.define(trial)
        for name, dist in trial.distributions.items():
            seen.setdefault(name, _distribution_text(dist))
        study.tell(trial, 0.0)
    return seen


def searched_keys(space: SearchSpace, samples: int = 64) -> set[str]:
    """The config keys the space's trials set, over ``samples`` random trials (a conditional key appears
    only in the trials whose branch draws it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    keys: set[str] = set()
    for _ in range(samples):
        trial = study.ask()
        keys.update(space.define(trial))
        study.tell(trial, 0.0)
    return keys


def describe(space: SearchSpace) -> dict[str, Any]:
    return {
        "name": space.name, "task": space.task, "description": space.description,
        "metric": space.metric, "mode": space.mode, "epochs": space.epochs, "trials": space.trials,
        "scheduler": space.scheduler, "grace_period": space.grace_period,
        "memorised_when": list(space.memorised_when) if space.memorised_when else None,
        "fixed": dict(space.fixed), "parameters": parameters(space),
    }
