"""Early stopping of the members of a cohort: the rule of `grokking_asha`, applied to each member on its own.

A cohort (`study.cohort_trainable`) trains many study trials in one Ray Tune trial, so Tune's scheduler, which
stops whole Tune trials, cannot stop one member. The members decide for themselves with the same rule the
scheduler applies to a trial (asynchronous successive halving, reduction factor 3, the rungs of
`tune_driver.make_scheduler`):

- at a rung epoch (epochs done = a milestone ≥ the grace period), a member is stopped when its metric is worse
  than the (1 − 1/3) quantile of the values that trials recorded at that rung before it; it then records its own
  value (stopped or not); with no value recorded yet it goes on;
- never before the grace period, and never once it has memorised (``memorised_when``, e.g. train_Q ≥ 1.7 at
  some epoch): the grokking-safe part.

The values recorded at each rung are shared by every cohort of the study: one small JSON file per (rung,
member) under ``STUDY/rungs/epoch=<E>/``, written atomically through `StudyLocation` (local or object storage).
A member that reaches a rung it already recorded (re-run after a restart) takes its recorded decision again, so
a resumed study never decides a member twice. Nothing here imports Ray.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from study.layout import StudyLocation

RUNGS_DIR = "rungs"
REDUCTION_FACTOR = 3


def cutoff(values: list[float], mode: str, reduction_factor: int = REDUCTION_FACTOR) -> float | None:
    """The value a trial must reach at a rung to go on: the (1 − 1/rf) quantile of ``values`` for ``max``
    (the 1/rf quantile for ``min``), linearly interpolated; None when nothing is recorded yet."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return None
    q = 1.0 - 1.0 / reduction_factor if mode == "max" else 1.0 / reduction_factor
    position = q * (len(finite) - 1)
    low = math.floor(position)
    high = min(low + 1, len(finite) - 1)
    return finite[low] + (finite[high] - finite[low]) * (position - low)


def below(value: float, limit: float | None, mode: str) -> bool:
    """Whether ``value`` is worse than ``limit`` (a non-finite value is worse than any limit)."""
    if limit is None:
        return False
    if value is None or not math.isfinite(value):
        return True
    return value < limit if mode == "max" else value > limit


@dataclass(frozen=True)
class MemberStopping:
    """The per-member rule of one study (picklable: it travels in `TrialSettings`)."""
    rungs: tuple[int, ...]                        # epochs (epochs done) at which a member may be stopped
    metric: str
    mode: str
    memorised_when: tuple[str, float] | None = None

    def memorised(self, row: dict) -> bool:
        if self.memorised_when is None:
            return False
        key, threshold = self.memorised_when
        value = row.get(key)
        return isinstance(value, (int, float)) and math.isfinite(value) and value >= threshold

    def decide(self, location: StudyLocation, member_id: str, epochs_done: int, value: float,
               memorised: bool) -> str | None:
        """At ``epochs_done``: the reason to stop the member, or None to go on. Records its value at a rung."""
        if epochs_done not in self.rungs:
            return None
        directory = location.join(RUNGS_DIR, f"epoch={epochs_done}")
        own = location.join(RUNGS_DIR, f"epoch={epochs_done}", f"{member_id}.json")
        if location.exists(own):   # decided before a restart: the same decision again
            return location.read_json(own).get("stopped")
        others = []
        for path in location.list_files(directory):
            if path.endswith(".json") and path != own:
                others.append(location.read_json(path).get("value"))
        limit = cutoff(others, self.mode)
        reason = None
        if not memorised and below(value, limit, self.mode):
            reason = (f"stopped by grokking_asha at epoch {epochs_done}: {self.metric} {value:.4g} below the rung "
                      f"cutoff {limit:.4g} of {len(others)} trial(s)")
        record = {"value": value if value is not None and math.isfinite(value) else None, "stopped": reason,
                  "memorised": memorised}
        location.makedirs(directory)
        location.write_atomic(own, json.dumps(record, sort_keys=True).encode())
        return reason
