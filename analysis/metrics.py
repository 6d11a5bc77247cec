"""Which columns are metrics, which way is good, and how `train_<m>`/`heldout_<m>` pair up.

The direction of a metric is never guessed silently: it comes from the documented table below
(`METRIC_SPECS`, matched by the rules of `spec_for`), or from an explicit override passed by the caller.
Pure functions only; nothing here reads files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

Direction = Literal["max", "min"]

REQUIRED = ("study", "trial_id", "epoch")
TRAIN, HELDOUT = "train_", "heldout_"

# Bookkeeping columns of the epoch-row schema: never analysed as metrics.
NOT_METRICS = frozenset({
    "study", "trial_id", "epoch", "attempt", "phase", "wall_time", "epoch_seconds", "lr", "curvature",
})


@dataclass(frozen=True)
class MetricSpec:
    """How to read one (base) metric.

    direction: "max" if larger is better, "min" if smaller is better.
    train_threshold / heldout_threshold: the level that counts as "reached" (memorised / generalised)
      for the grokking classification; None where the table has no sensible default.
    ungrok_threshold: a held-out value worse than this, after generalisation, counts as "lost".
    """
    direction: Direction
    train_threshold: float | None = None
    heldout_threshold: float | None = None
    ungrok_threshold: float | None = None


# The documented defaults (analysis/README.md, "Metric table"). Accuracy thresholds follow the
# Power et al. operationalisation (train ≥ 0.99, held-out ≥ 0.95) and Varma et al.'s ungrokking drop of 0.3;
# loss thresholds are cross-entropy nats (0.01 ≈ 99 % probability on the right answer); TernaryVAE
# thresholds are proposals near the upstream targets (hierarchy_B −0.83, Q 1.96).
METRIC_SPECS: dict[str, MetricSpec] = {
    "acc": MetricSpec("max", 0.99, 0.95, 0.65),
    "coverage": MetricSpec("max", 0.99, 0.95, 0.65),
    "loss": MetricSpec("min", 0.01, 0.1, 1.0),
    "hierarchy": MetricSpec("min", -0.75, -0.70, -0.40),
    "Q": MetricSpec("max", 1.7, 1.6, 1.2),
    "dist_corr": MetricSpec("max", 0.8, 0.75, 0.5),
    "padic_dist_corr": MetricSpec("max", 0.8, 0.75, 0.5),
    "richness": MetricSpec("max"),
}


def base_name(column: str) -> str:
    """`train_acc` → `acc`, `heldout_hierarchy_B` → `hierarchy_B`, `loss_rank` → `loss_rank`."""
    for prefix in (TRAIN, HELDOUT):
        if column.startswith(prefix):
            return column[len(prefix):]
    return column


def table_key(column: str) -> str | None:
    """The `METRIC_SPECS` key that applies to a column, or None. Rules, in order:
    exact base name; `loss`, `loss_*`, `*_loss`; `*acc`, `*accuracy`; `hierarchy*`; `richness*`."""
    base = base_name(column)
    if base in METRIC_SPECS:
        return base
    if base == "loss" or base.startswith("loss_") or base.endswith("_loss"):
        return "loss"
    if base.endswith("acc") or base.endswith("accuracy"):
        return "acc"
    if base.startswith("hierarchy"):
        return "hierarchy"
    if base.startswith("richness"):
        return "richness"
    return None


def spec_for(column: str, overrides: Mapping[str, Direction] | None = None) -> MetricSpec | None:
    """The spec of a column; `overrides` maps a column or base name to "max"/"min" and wins over the table."""
    overrides = dict(overrides or {})
    for name, d in overrides.items():
        if d not in ("max", "min"):
            raise ValueError(f"direction for {name!r} must be 'max' or 'min', got {d!r}")
    key = table_key(column)
    spec = METRIC_SPECS.get(key) if key else None
    forced = overrides.get(column, overrides.get(base_name(column)))
    if forced is not None:
        if spec is None or spec.direction != forced:
            return MetricSpec(forced)  # thresholds of the table assume the table's direction
        return spec
    return spec


def direction(column: str, overrides: Mapping[str, Direction] | None = None) -> Direction | None:
    spec = spec_for(column, overrides)
    return spec.direction if spec else None


def is_numeric_metric(name: str, dtype) -> bool:
    return name not in NOT_METRICS and not name.startswith("frozen_") and dtype.is_numeric()


def metric_columns(schema: Mapping[str, object], overrides: Mapping[str, Direction] | None = None) -> list[str]:
    """Columns analysed by default: numeric, not bookkeeping, and with a known direction."""
    return [c for c, t in schema.items() if is_numeric_metric(c, t) and direction(c, overrides) is not None]


# The order in which pairs are listed (the first one present is the report's primary pair): accuracy-like
# pairs first, losses last (a cross-entropy reaches its threshold later than the accuracy does).
PAIR_PRIORITY = ("acc", "coverage", "Q", "hierarchy_B", "dist_corr", "hierarchy_A", "padic_dist_corr")


def pairs(schema: Mapping[str, object]) -> list[str]:
    """Base names `m` for which both `train_<m>` and `heldout_<m>` exist: those of `PAIR_PRIORITY` in that
    order, then the others in schema order, losses last."""
    names = set(schema)
    found = [base_name(c) for c in schema if c.startswith(TRAIN) and HELDOUT + base_name(c) in names]

    def rank(m: str) -> tuple[int, int]:
        if m in PAIR_PRIORITY:
            return (0, PAIR_PRIORITY.index(m))
        return (2 if table_key(TRAIN + m) == "loss" else 1, found.index(m))

    return sorted(found, key=rank)


def classifiable_pairs(schema: Mapping[str, object], overrides: Mapping[str, Direction] | None = None) -> list[str]:
    """The `pairs` whose metric has a direction and default thresholds, i.e. that `grokking` can classify
    without explicit thresholds (the default set for `events`, the CLIs and the report)."""
    out = []
    for m in pairs(schema):
        spec = spec_for(TRAIN + m, overrides)
        if spec and None not in (spec.train_threshold, spec.heldout_threshold, spec.ungrok_threshold):
            out.append(m)
    return out


def parse_directions(items: Sequence[str]) -> dict[str, str]:
    """`["name=max", …]` (the CLIs' --direction) → {"name": "max"}; ValueError naming a bad item."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or value not in ("max", "min"):
            raise ValueError(f"--direction {item!r}: expected METRIC=max or METRIC=min")
        out[name] = value
    return out
