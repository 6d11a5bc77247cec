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


def _sampled(space: SearchSpace, samples: int):
    """(trial, overrides) of ``samples`` random trials of the space, in an in-memory study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(samples):
        trial = study.ask()
        overrides = space.define(trial)
        yield trial, overrides
        study.tell(trial, 0.0)


def parameters(space: SearchSpace, samples: int = 64) -> dict[str, str]:
    """Parameter name → distribution text, in first-seen order."""
    seen: dict[str, str] = {}
    for trial, _ in _sampled(space, samples):
        for name, dist in trial.distributions.items():
            seen.setdefault(name, _distribution_text(dist))
    return seen


def searched_keys(space: SearchSpace, samples: int = 64) -> set[str]:
    """The config keys the space's trials set, over ``samples`` random trials (a conditional key appears
    only in the trials whose branch draws it)."""
    return {key for _, overrides in _sampled(space, samples) for key in overrides}


def describe(space: SearchSpace) -> dict[str, Any]:
    return {
        "name": space.name, "task": space.task, "description": space.description,
        "metric": space.metric, "mode": space.mode, "epochs": space.epochs, "trials": space.trials,
        "scheduler": space.scheduler, "grace_period": space.grace_period,
        "memorised_when": list(space.memorised_when) if space.memorised_when else None,
        "fixed": dict(space.fixed), "parameters": parameters(space),
    }
