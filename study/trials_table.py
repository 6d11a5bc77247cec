"""`trials.parquet`: one row per trial (id, parameters, status, attempts, best and final metrics).

Built from plain dicts, written atomically; the driver rewrites it whenever a trial starts, ends or every few
seconds while trials run. Nothing here imports Ray.

The ``status`` column holds a `study.statuses.TrialStatus` value (that module says what each means and what
``--resume`` does with it).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from study.layout import TRIALS_PARQUET, StudyLocation
from study.statuses import TrialStatus


@dataclass
class TrialRecord:
    trial_id: str
    status: str                        # a TrialStatus value
    attempts: int
    epochs_done: int
    params: dict[str, Any] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    reason: str | None = None          # why it diverged / errored / was pruned

    def __post_init__(self) -> None:
        self.status = TrialStatus.parse(self.status).value


def final_metrics(values: dict[str, Any], metric: str) -> dict[str, float]:
    """What a trial's ``final_*`` columns keep from its last row or result: the split metrics, the loss and the
    study's metric (numbers only)."""
    return {k: v for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (k.startswith(("train_", "heldout_")) or k in ("loss", metric))}


def _param_value(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if not math.isnan(value) else None


def to_table(records: list[TrialRecord]) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for r in sorted(records, key=lambda rec: rec.trial_id):
        row: dict[str, Any] = {"trial_id": r.trial_id, "status": r.status, "attempts": r.attempts,
                               "epochs_done": r.epochs_done, "reason": r.reason}
        row.update({f"param_{k}": _param_value(v) for k, v in sorted(r.params.items())})
        row.update({f"best_{k}": _number(v) for k, v in sorted(r.best.items())})
        row.update({f"final_{k}": _number(v) for k, v in sorted(r.final.items())})
        rows.append(row)
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        present = [v for v in values if v is not None]
        if name in ("trial_id", "status", "reason"):
            kind = pa.string()
        elif name in ("attempts", "epochs_done"):
            kind = pa.int64()
        elif present and all(isinstance(v, bool) for v in present):
            kind = pa.bool_()
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            kind = pa.int64()
        elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            kind = pa.float64()
        else:
            kind = pa.string()
            values = [None if v is None else str(v) for v in values]
        columns[name] = pa.array(values, type=kind)
    if not columns:
        return pa.table({"trial_id": pa.array([], pa.string()), "status": pa.array([], pa.string())})
    return pa.table(columns)


def write(location: StudyLocation, records: list[TrialRecord]) -> None:
    buffer = io.BytesIO()
    pq.write_table(to_table(records), buffer)
    location.write_atomic(location.join(TRIALS_PARQUET), buffer.getvalue())


def read(location: StudyLocation) -> pa.Table | None:
    path = location.join(TRIALS_PARQUET)
    if not location.exists(path):
        return None
    try:
        with location.fs.open_input_file(path) as handle:
            return pq.read_table(handle)
    except (pa.ArrowInvalid, OSError) as exc:   # torn or corrupt: name the file
        raise ValueError(f"{path} is unreadable: {exc}") from None
