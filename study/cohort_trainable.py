"""The Ray Tune trainable of a cohort: one Tune trial trains several study trials (its *members*) in one process
as one `tvae.cohort.Cohort` (``study.run --population K``).

Each member is a study trial of its own: its own id (``<tune trial id>-m<k>``) in ``epochs/``, ``attempts/`` and
``trials.parquet``, its own Optuna trial (asked and told by `tune_driver.CohortSearch` in the driver), its own
status. The Tune trial's config is ``{"members": [{"trial_id", "number", "params", "overrides"}, ...]}``.

Per epoch: train every running member, buffer each member's row, apply the per-member early-stopping rule
(`study.member_stopping`), and report one Tune result that carries each member's state under ``members``
(`member_report`), with each member's value of the study's metric in the epoch it trained (the driver reports it
to the member's Optuna trial as an intermediate value). A member that ends (completed, stopped, diverged) writes
its buffered rows at once. Every ``checkpoint_every`` epochs and at the end: every buffered row reaches its
member's part file, *then* the cohort is saved and registered as a Tune checkpoint. On a start from a checkpoint
(or from scratch) each member first deletes its own part files that start at or after its checkpointed epoch: the
rows of the same (trial, epoch) are never written twice, as for single trials (`study.trainable`).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from study import faults, recorder, trials_table
from study.layout import StudyLocation
from study.statuses import TrialStatus
from study.trainable import (DIVERGED_KEY, DONE_KEY, PROGRESS_KEY, STATE_FILE, TrialSettings, _next_attempt,
                             _write_marker, restore_latest)

MEMBERS_KEY = "members"          # the Tune trial's config, and the per-member part of each result
EPOCH_VALUE_KEY = "epoch_value"  # in a member's report: the study's metric of the epoch it trained in that result
COHORT_SUBDIR = "cohort"


def member_trial_id(tune_trial_id: str, k: int) -> str:
    return f"{tune_trial_id}-m{k}"


class Ledger:
    """What the trainable keeps per member besides the cohort itself: best value of the study's metric, whether
    the member has memorised (sticky), its last row's final numbers. Saved with each checkpoint."""

    def __init__(self, n: int) -> None:
        self.best: list[float | None] = [None] * n
        self.memorised = [False] * n
        self.final: list[dict[str, float]] = [{} for _ in range(n)]

    def update(self, k: int, row: dict[str, Any], settings: TrialSettings) -> None:
        value = row.get(settings.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best[k]
            better = max if settings.mode == "max" else min
            self.best[k] = value if old is None else better(old, value)
        stopping = settings.member_stopping
        if stopping is not None and stopping.memorised(row):
            self.memorised[k] = True
        self.final[k] = trials_table.final_metrics(row, settings.metric)

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best, "memorised": self.memorised, "final": self.final}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Ledger":
        ledger = cls(len(data["best"]))
        ledger.best, ledger.memorised, ledger.final = list(data["best"]), list(data["memorised"]), list(data["final"])
        return ledger


def status_of(cohort_member) -> TrialStatus:
    """A cohort member's state (`tvae.cohort.Status`) in the study's vocabulary."""
    from tvae.cohort import Status

    return {Status.RUNNING: TrialStatus.RUNNING, Status.FINISHED: TrialStatus.COMPLETED,
            Status.DIVERGED: TrialStatus.DIVERGED, Status.STOPPED: TrialStatus.PRUNED}[cohort_member.status]


def member_report(cohort, k: int, ledger: Ledger, settings: TrialSettings,
                  row: dict[str, Any] | None = None) -> dict[str, Any]:
    """Member k's part of a Tune result: status, epochs done, the metric's last and best value, final numbers,
    the reason it was stopped or diverged; with ``row`` (the epoch it trained in this result), that epoch's value
    of the metric under `EPOCH_VALUE_KEY` (the driver reports it to Optuna at step ``epochs_done``)."""
    m = cohort.members[k]
    status = status_of(m)
    report: dict[str, Any] = {"status": status.value, "epochs_done": m.epoch,
                              "value": ledger.final[k].get(settings.metric), "best": ledger.best[k],
                              **{f"final_{key}": v for key, v in ledger.final[k].items()}}
    value = None if row is None else row.get(settings.metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        report[EPOCH_VALUE_KEY] = float(value)
    if m.error:
        report["reason"] = m.error if status != TrialStatus.DIVERGED else f"diverged: {m.error}"
    return report


def _result(cohort, ids: list[str], ledger: Ledger, settings: TrialSettings,
            rows: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The cohort's Tune result: its progress, whether every member has ended, and each member's report (with
    ``rows``, {member index: row} of the epoch just trained, the value of that epoch for each member in it)."""
    rows = rows or {}
    return {PROGRESS_KEY: cohort.epoch, DIVERGED_KEY: 0, DONE_KEY: int(not cohort.active),
            MEMBERS_KEY: {member_id: member_report(cohort, k, ledger, settings, rows.get(k))
                          for k, member_id in enumerate(ids)}}


def _load(directory: Path, settings: TrialSettings):
    from tvae.cohort import Cohort

    cohort = Cohort.load(directory / COHORT_SUBDIR / "cohort.pt", device=settings.device)
    ledger = Ledger.from_dict(json.loads((directory / STATE_FILE).read_text())["ledger"])
    return _Restored(cohort, ledger)


class _Restored:
    def __init__(self, cohort, ledger: Ledger) -> None:
        self.cohort, self.ledger, self.epoch = cohort, ledger, cohort.epoch


def _fresh(members: list[dict[str, Any]], settings: TrialSettings):
    from tvae.cohort import Cohort
    from tvae.trainer import build_config

    configs = [build_config({**settings.fixed, **m["overrides"]}, epochs=settings.epochs, seed=settings.seed)
               for m in members]
    return Cohort(configs, settings.device), Ledger(len(members))


def train_cohort(config: dict[str, Any], settings: TrialSettings) -> None:
    import torch

    torch.set_num_threads(settings.threads)
    location = StudyLocation.open(settings.results, settings.study)
    members = config[MEMBERS_KEY]
    ids = [m["trial_id"] for m in members]
    attempts = [_next_attempt(location, m["trial_id"], m["params"]) for m in members]

    restored, used, repairs = restore_latest(tune.get_checkpoint(), lambda d: _load(d, settings))
    cohort, ledger = (restored.cohort, restored.ledger) if restored else _fresh(members, settings)
    for k, m in enumerate(members):
        recorder.truncate_parts(location, ids[k], from_epoch=cohort.members[k].epoch)
        _write_marker(location, ids[k], attempts[k], {"params": m["params"], "start_epoch": cohort.members[k].epoch,
                                                      "from_checkpoint": used, "repairs": repairs,
                                                      "cohort": tune.get_context().get_trial_id()})
    stopping = settings.member_stopping
    buffers: list[list[dict[str, Any]]] = [[] for _ in members]

    def flush(k: int) -> None:
        if buffers[k]:
            recorder.write_part(location, ids[k], buffers[k])
            buffers[k] = []

    if not cohort.active:   # restored from its final checkpoint: report the members' ends once more
        tune.report(_result(cohort, ids, ledger, settings))
    while cohort.active:
        running = cohort.active
        for k in running:
            faults.before_member_epoch(location.path, ids[k], cohort.members[k].epoch, cohort, k)  # inert unless set
        rows = cohort.train_epoch()
        for k in running:
            m = cohort.members[k]
            if k in rows:
                row = {"study": settings.study, "trial_id": ids[k], "attempt": attempts[k], **rows[k]}
                buffers[k].append(row)
                ledger.update(k, row, settings)
                if m.active and stopping is not None:
                    reason = stopping.decide(location, ids[k], m.epoch, row.get(settings.metric), ledger.memorised[k])
                    if reason:
                        cohort.stop(k, reason)
            if not m.active:
                flush(k)     # an ended member's rows reach disk now
        done = not cohort.active
        metrics = _result(cohort, ids, ledger, settings, rows)
        if done or cohort.epoch % settings.checkpoint_every == 0:
            for k in range(len(members)):
                flush(k)                                          # rows first ...
            with tempfile.TemporaryDirectory(prefix="tvae-ckpt-") as tmp:
                cohort.save(Path(tmp) / COHORT_SUBDIR / "cohort.pt")
                (Path(tmp) / STATE_FILE).write_text(json.dumps({"epoch": cohort.epoch, "attempts": attempts,
                                                                "ledger": ledger.to_dict()}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))   # ... then the checkpoint
        else:
            tune.report(metrics)
