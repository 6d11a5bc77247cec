"""The study's Optuna storage: a journal (`optuna.journal`) in the study directory, and its reconciler.

Local paths use Optuna's `JournalFileBackend` (append + fsync under a lock; optuna-dashboard can open it while
the study runs). On other pyarrow filesystems (object stores have no append) the driver, the only writer,
appends to a local copy that `study.object_journal` uploads whole; `ArrowJournalBackend` reads the stored
object directly (`study.verify`).

Every Optuna bookkeeping rule of a study is here: `TUNE_ID_ATTR` pairs each Optuna trial with its Tune trial,
`OPTUNA_STATES` says which Optuna states agree with each trial status, `record_retried` adds the outcome of a
trial retried after an ERROR, `fail_orphans` ends zombies. `repair_torn_tail` drops a half-written last line left by a killed driver (Optuna skips a torn *last* line
but would fail on it once another line follows). `fail_orphans` ends trials left RUNNING by a driver that
was killed before Ray Tune recorded them, so no zombie RUNNING trial survives a completed study.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from study import compat
from study.layout import StudyLocation
from study.statuses import TrialStatus

TUNE_ID_ATTR = "tune_trial_id"    # user attribute of an Optuna trial: the id of its Tune (= study) trial
# trial status (trials.parquet) -> the Optuna trial states that agree with it
OPTUNA_STATES: dict[TrialStatus, frozenset[str]] = {
    TrialStatus.COMPLETED: frozenset({"COMPLETE"}),
    TrialStatus.DIVERGED: frozenset({"FAIL"}),
    TrialStatus.ERROR: frozenset({"FAIL"}),
    TrialStatus.PRUNED: frozenset({"PRUNED"}),
    TrialStatus.RUNNING: frozenset({"RUNNING"}),
    TrialStatus.PENDING: frozenset({"RUNNING", "WAITING"}),
    TrialStatus.INTERRUPTED: frozenset({"RUNNING"}),
}
# the statuses a trial retried after an ERROR can end in and that `record_retried` then tells Optuna
RETRY_OUTCOMES = frozenset({TrialStatus.COMPLETED, TrialStatus.PRUNED})


class ArrowJournalBackend(BaseJournalBackend):
    """An Optuna journal on any pyarrow filesystem (single writer: the study driver)."""

    def __init__(self, location: StudyLocation, path: str) -> None:
        self._location, self._path = location, path
        if not location.exists(path):
            location.write_atomic(path, b"")

    def _lines(self) -> list[bytes]:
        return [line for line in self._location.read_bytes(self._path).split(b"\n") if line]

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        for line in self._lines()[log_number_from:]:
            yield json.loads(line)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        old = self._location.read_bytes(self._path)
        new = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self._location.write_atomic(self._path, old + new)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": (self._location.results, self._location.name), "path": self._path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._location = StudyLocation.open(*state["location"])
        self._path = state["path"]


def repair_torn_tail(path: str) -> int:
    """Truncate a local journal to its last complete line; return the number of bytes dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return len(data) - keep


def open_storage(location: StudyLocation) -> JournalStorage:
    location.makedirs(location.path)
    if location.is_local:
        repair_torn_tail(location.journal_path)
        return JournalStorage(JournalFileBackend(location.journal_path))
    from study.object_journal import MirroredJournalBackend   # a local copy, uploaded whole (see there)

    return JournalStorage(MirroredJournalBackend(location))


def load_study(location: StudyLocation) -> optuna.Study | None:
    """The study's Optuna study, or None if the journal holds none yet."""
    storage = open_storage(location)
    names = [s.study_name for s in storage.get_all_studies()]
    if location.name not in names:
        return None
    return optuna.load_study(study_name=location.name, storage=storage)


def fail_orphans(study: optuna.Study, live_tune_ids: set[str], reason: str) -> list[int]:
    """Mark FAIL every RUNNING/WAITING trial whose Tune trial is not live; return their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if trial.user_attrs.get(TUNE_ID_ATTR) in live_tune_ids:
            continue
        compat.fail_trial(study, trial, {"orphan_reason": reason})
        failed.append(trial.number)
    return failed


def record_retried(study: optuna.Study, table, metric: str) -> list[int]:
    """Trials that ended in ERROR (Optuna: FAIL) and were then retried by ``--resume`` to COMPLETED or PRUNED.
    Tune does not tell the searcher about a trial it restores after an error, and finished Optuna trials are
    immutable: the new outcome becomes a new Optuna trial with the same parameters, the study trial's id and
    ``retry_of`` = the failed one's number, so the sampler learns it and `study.verify` pairs them. ``metric``:
    the space's objective (its value is the table's ``final_<metric>``)."""
    if table is None:
        return []
    by_tune: dict[str, list] = {}
    for trial in study.get_trials(deepcopy=False):
        by_tune.setdefault(trial.user_attrs.get(TUNE_ID_ATTR), []).append(trial)
    added = []
    for row in table.to_pylist():
        matches = by_tune.get(row["trial_id"])
        if not matches or matches[-1].state != TrialState.FAIL or row["status"] not in RETRY_OUTCOMES:
            continue
        last = matches[-1]
        value = row.get(f"final_{metric}") if row["status"] == TrialStatus.COMPLETED else None
        state = TrialState.COMPLETE if isinstance(value, float) and math.isfinite(value) else TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(
            params=last.params, distributions=last.distributions, value=value if state == TrialState.COMPLETE
            else None, state=state, user_attrs={**last.user_attrs, "retry_of": last.number}))
        added.append(last.number)
    return added
