"""The detectors' parameters: one frozen dataclass per detector, every threshold documented with its default.

Each event row carries its rule's parameters (`params`, a JSON object), so an analysis can be reproduced.
Constructing a rule with an unknown key raises `ValueError` naming the key.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

DETECTOR_VERSION = "analysis-1"


def _build(cls, values: Mapping[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} parameter(s): {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return cls(**values)


class _Rule:
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        return _build(cls, values)

    def to_json(self, **extra: Any) -> str:
        return json.dumps({**asdict(self), **extra}, sort_keys=True)


@dataclass(frozen=True)
class PlateauRule(_Rule):
    """A plateau epoch t: the means of the two halves of the `window` epochs ending at t differ by at most
    max(atol, rtol·R) + z·σ·2/√window, where R is the trial's range of the metric (2nd–98th percentile) and σ
    its local noise level (median |first difference| / 0.6745 / √2, over the trial and over 2·window epochs
    around t, whichever is larger). A plateau is a run of such epochs, reported from
    the first window's start to the last epoch, when it spans at least `min_span` epochs."""
    window: int = 20
    min_span: int = 30
    rtol: float = 0.02
    atol: float = 0.0
    z: float = 3.0

    def __post_init__(self):
        if self.window < 2 or self.min_span < self.window:
            raise ValueError(f"plateau window must be ≥ 2 and min_span ≥ window (got {self.window}, {self.min_span})")


@dataclass(frozen=True)
class TransitionRule(_Rule):
    """Change points, from windows of `window` epochs before and after each epoch t.

    level_shift: |mean(after) − mean(before)| ≥ max(atol, rtol·R, z·σ·√(2/window)) and the largest within
      ±window epochs. Called `plateau_jump` when the `window` epochs before t are a plateau (PlateauRule).
    σ here is the local noise over 4·window epochs around t (see PlateauRule).
    slope_change: |slope(after) − slope(before)|·L ≥ max(slope_rtol·R, z·σ·√(24/window³)·L), with L the
      trial's length in epochs, the largest within ±window, and no level shift within ±window.
    Magnitude: the signed level change (metric units) or slope change (metric units per epoch)."""
    window: int = 20
    rtol: float = 0.25
    atol: float = 0.0
    z: float = 5.0
    slope_rtol: float = 0.5

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"transition window must be ≥ 2 (got {self.window})")


@dataclass(frozen=True)
class GrokkingRule(_Rule):
    """Liu et al. 2022's four phases for a `train_<m>`/`heldout_<m>` pair.

    t_mem: first epoch from which train_<m> is at or better than `train_threshold` for `hold` epochs in a row.
    t_gen: the same for heldout_<m> and `heldout_threshold`. delay = t_gen − t_mem.
    class: confusion (no t_mem), memorization (t_mem, no t_gen), grokking (delay ≥ max(min_delay,
      delay_ratio·t_mem)), comprehension (otherwise); no_heldout when heldout_<m> has no value.
    ungrokked: after t_gen, heldout_<m> is worse than `ungrok_threshold` for `ungrok_hold` epochs in a row.
    Thresholds left as None come from the metric table (analysis.metrics.METRIC_SPECS)."""
    train_threshold: float | None = None
    heldout_threshold: float | None = None
    ungrok_threshold: float | None = None
    hold: int = 10
    ungrok_hold: int = 10
    min_delay: int = 10
    delay_ratio: float = 1.0

    def __post_init__(self):
        if self.hold < 1 or self.ungrok_hold < 1:
            raise ValueError("hold and ungrok_hold must be ≥ 1")
