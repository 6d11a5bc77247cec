"""Which configurations can train together as one cohort, and how to group those that cannot.

Members of a cohort share the model (the shape of every parameter), the numbers of loss pairs, the radius
targets and which loss terms exist. Everything else a study searches may differ per member: seed, epochs,
learning rates and their schedule, weight decay, clipping, training fraction and split, both batch sizes
(`data.batch_size`, `coverage.batch_size`), phase epochs, loss weights, homeostasis and evaluation settings
(`PER_MEMBER`). Members with different batch sizes train as separate groups of the same epoch
(`tvae.cohort.engine.Member.signature`): their steps are not stacked together, their evaluation is; so among
candidate members, `pick_cohort` prefers those with the same batch sizes.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from tvae.configlib import flatten
from tvae.config import Config

# dotted keys (or prefixes ending in ".") that may differ between the members of one cohort
PER_MEMBER: tuple[str, ...] = (
    "preset", "seed", "epochs",
    "optim.lr", "optim.weight_decay", "optim.max_grad_norm", "optim.lr_scale_",
    "data.train_fraction", "data.split", "data.batch_size", "coverage.batch_size",
    "phases.", "schedule.",
    "coverage.lr", "coverage.min_lr_scale", "coverage.weight_decay", "coverage.recon_weight", "coverage.beta",
    "coverage.free_bits", "coverage.radial_weight",
    "loss.rich.hierarchy_weight", "loss.rich.coverage_weight", "loss.rich.richness_weight",
    "loss.rich.separation_weight", "loss.rich.min_richness_ratio", "loss.rich.separation_margin",
    "loss.radial.weight", "loss.radial.margin_weight", "loss.rank.weight",
    "loss.geodesic.weight", "loss.geodesic.max_target_distance", "loss.geodesic.valuation_scale",
    "homeostasis.", "eval.",
)


def per_member(key: str) -> bool:
    return any(key == p or (key.startswith(p) and (p.endswith(".") or p.endswith("_") or key[len(p)] in "._"))
               for p in PER_MEMBER)


def shared_part(cfg: Config) -> tuple[tuple[str, str], ...]:
    """The configuration keys (with their values) that every member of a cohort must share."""
    return tuple(sorted((k, repr(v)) for k, v in flatten(cfg).items() if not per_member(k)))


def check_compatible(configs: Sequence[Config]) -> None:
    """Raise ValueError naming the first shared key on which two members differ."""
    if not configs:
        raise ValueError("a cohort needs at least one member")
    first = dict(shared_part(configs[0]))
    for i, cfg in enumerate(configs[1:], start=1):
        other = dict(shared_part(cfg))
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise ValueError(f"members 0 and {i} cannot share a cohort: {key} is {first.get(key)} and "
                                 f"{other.get(key)} (group them with tvae.cohort.members.group)")


def group(configs: Iterable[Config]) -> list[list[int]]:
    """Indices of ``configs`` in groups that can each train as one cohort (first-seen order)."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(shared_part(cfg), []).append(i)
    return list(groups.values())


STEP_SHAPE_KEYS = ("coverage.batch_size", "data.batch_size")   # what splits members' steps into groups for good


def pick_cohort(candidates: Sequence[Mapping[str, Any]], size: int) -> list[int]:
    """Which of ``candidates`` (configuration overrides, oldest first) to train as one cohort of up to ``size``:
    the oldest (so none waits for ever), then those with its batch sizes (`STEP_SHAPE_KEYS`: their steps stack
    in the same groups), then those with its structure batch size (the coverage phase is short), then the rest;
    oldest first within each. Returns indices into ``candidates`` in that order."""
    if not candidates or size < 1:
        return []
    shapes = [tuple(o.get(k) for k in STEP_SHAPE_KEYS) for o in candidates]
    rank = [0 if s == shapes[0] else 1 if s[1] == shapes[0][1] else 2 for s in shapes]
    return sorted(range(len(candidates)), key=lambda i: (rank[i], i))[:size]
