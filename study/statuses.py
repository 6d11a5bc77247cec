"""The one vocabulary of trial statuses: what `trials.parquet` stores, what the driver decides, what
`study.status` shows and `study.verify` checks, and what a ``--resume`` does with each.

=============  =========================================================  =====================
status         meaning                                                    ``--resume``
=============  =========================================================  =====================
PENDING        sampled, not started                                       starts it
RUNNING        training (or the driver died while it trained)             continues it
INTERRUPTED    the driver stopped before the trial finished               continues it
COMPLETED      trained every requested epoch                              skips it
DIVERGED       non-finite loss or metric (the reason says where)          skips it (never retried)
PRUNED         stopped early by the scheduler (the reason says why)       skips it
ERROR          failed more than ``--max-failures`` times                  retries it
=============  =========================================================  =====================

`TERMINAL` (nothing left for the driver in this run) = `SETTLED` (no resume runs it again) + `RETRIED`.
Nothing here imports Ray or Optuna.
"""
from __future__ import annotations

import enum


class TrialStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    INTERRUPTED = "INTERRUPTED"
    COMPLETED = "COMPLETED"
    DIVERGED = "DIVERGED"
    PRUNED = "PRUNED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str) -> "TrialStatus":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown trial status {value!r}; known: {', '.join(s.value for s in cls)}") from None


SETTLED = frozenset({TrialStatus.COMPLETED, TrialStatus.DIVERGED, TrialStatus.PRUNED})
RETRIED = frozenset({TrialStatus.ERROR})
TERMINAL = SETTLED | RETRIED
CONTINUED = frozenset({TrialStatus.PENDING, TrialStatus.RUNNING, TrialStatus.INTERRUPTED})
STATUSES = tuple(s.value for s in TrialStatus)

# a study trial whose epoch rows exist but that `trials.parquet` does not list yet (progress views only)
UNRECORDED = "UNRECORDED"
