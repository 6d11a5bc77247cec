"""A study's progress read from what is stored (study.json, trials.parquet, the epoch dataset), as plain data.
Used by `study.status` and by the `--dry-run` resume plan; works while the study runs. No Ray here."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


from study import recorder, trials_table
from study.layout import STUDY_JSON, StudyLocation
from study.statuses import UNRECORDED


@dataclass
class TrialProgress:
    trial_id: str
    status: str                    # a study.statuses.TrialStatus value, or UNRECORDED
    epochs_on_disk: int            # rows in the epoch dataset (= epochs up to the last written checkpoint)
    attempts: int = 0
    best: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass
class StudyProgress:
    study: dict[str, Any]
    trials: list[TrialProgress]

    @property
    def arguments(self) -> dict[str, Any]:
        return self.study["arguments"]

    @property
    def requested(self) -> int:
        return int(self.arguments["trials"])

    @property
    def epochs(self) -> int:
        return int(self.arguments["epochs"])

    def counts(self) -> Counter:
        return Counter(t.status for t in self.trials)


def read_study_json(location: StudyLocation) -> dict[str, Any]:
    path = location.join(STUDY_JSON)
    if not location.exists(path):
        raise FileNotFoundError(f"no study at {location.display} (missing {STUDY_JSON})")
    record = location.read_json(path)
    if "arguments" not in record:
        raise ValueError(f"{path} has no 'arguments': not a study.json written by study.run")
    return record


def epochs_per_trial(location: StudyLocation) -> dict[str, int]:
    table = recorder.read_epochs(location, columns=["trial_id", "epoch"])
    if table is None:
        return {}
    counts = table.group_by("trial_id").aggregate([("epoch", "count")])
    return dict(zip(counts["trial_id"].to_pylist(), counts["epoch_count"].to_pylist()))


def read(location: StudyLocation) -> StudyProgress:
    study = read_study_json(location)
    on_disk = epochs_per_trial(location)
    table = trials_table.read(location)
    metric = study.get("metric")
    trials: list[TrialProgress] = []
    seen = set()
    if table is not None:
        for row in table.to_pylist():
            trial_id = row["trial_id"]
            seen.add(trial_id)
            trials.append(TrialProgress(
                trial_id=trial_id, status=row["status"], epochs_on_disk=on_disk.get(trial_id, 0),
                attempts=int(row.get("attempts") or 0), best=row.get(f"best_{metric}"),
                params={k[len("param_"):]: v for k, v in row.items() if k.startswith("param_")},
                reason=row.get("reason")))
    for trial_id, count in sorted(on_disk.items()):
        if trial_id not in seen:  # rows written before the driver recorded the trial
            trials.append(TrialProgress(trial_id=trial_id, status=UNRECORDED, epochs_on_disk=count))
    return StudyProgress(study=study, trials=trials)


def best_trial(progress: StudyProgress) -> TrialProgress | None:
    mode = progress.study.get("mode", "max")
    scored = [t for t in progress.trials if t.best is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda t: t.best)


__all__ = ["StudyProgress", "TrialProgress", "read", "best_trial"]
