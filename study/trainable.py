"""The one adapter between Ray Tune and a task's `Run` (the only place a trial touches Tune).

Per epoch: train, buffer the row, ``tune.report`` it. Every ``checkpoint_every`` epochs and at the end:
write the buffered rows as one atomic part file, *then* save the run and register it as a Tune checkpoint.
On start from a checkpoint at epoch k (or from scratch, k = 0) it first deletes its own part files that start
at or after k: they were written after the last registered checkpoint and are re-produced identically.

If the driver is SIGKILLed between the part write and the checkpoint registration, the part exists but the
checkpoint does not; the restored trial starts from the previous checkpoint and deletes that part first, so no
(trial, epoch) is ever duplicated. A diverging run (`DivergedError`) ends the trial with ``diverged = 1`` and its
reason; it is not retried.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from study import faults, recorder
from study.layout import CHECKPOINT_STATE_FILE as STATE_FILE, StudyLocation, checkpoint_index, older_checkpoints

RUN_SUBDIR = "run"
DONE_KEY = "trial_complete"      # 1 on the last report of a trial that ran all its epochs (or diverged)
DIVERGED_KEY = "diverged"
PROGRESS_KEY = "epochs_done"     # the scheduler's time attribute


@dataclass(frozen=True)
class TrialSettings:
    """Study-wide settings every trial needs (picklable; handed over with ``tune.with_parameters``)."""
    study: str
    results: str
    task: str
    epochs: int
    seed: int
    device: str
    checkpoint_every: int
    threads: int
    metric: str
    mode: str
    fixed: dict[str, Any]
    # epochs after which the scheduler may stop the trial (ASHA rungs): the buffered rows reach disk first, so a
    # stopped trial keeps every epoch it trained (the part ends there; no checkpoint is needed for that)
    flush_at: tuple[int, ...] = ()
    # cohorts (``--population`` > 1): the per-member form of the scheduler's rule (None: members run to the end)
    member_stopping: Any = None


def _scalar_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """What goes to Tune: numbers and booleans only (strings stay in the Parquet row)."""
    return {k: (float(v) if isinstance(v, bool) else v) for k, v in row.items()
            if isinstance(v, (int, float, bool)) and not isinstance(v, str)}


def _worst(mode: str) -> float:
    return -math.inf if mode == "max" else math.inf


def _next_attempt(location: StudyLocation, trial_id: str, params: dict[str, Any]) -> int:
    """0 on a trial's first start, +1 per later start (restart after failure or resume). The marker records
    the parameters, node and process of the attempt (`study.verify` checks they never change)."""
    directory = location.join("attempts", f"trial_id={trial_id}")
    attempt = len(location.list_files(directory))
    _write_marker(location, trial_id, attempt, {"params": params})
    return attempt


def _write_marker(location: StudyLocation, trial_id: str, attempt: int, info: dict[str, Any]) -> None:
    import os

    import ray

    path = location.join("attempts", f"trial_id={trial_id}", str(attempt))
    record = {"attempt": attempt, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
              "started": time.time(), **info}
    location.write_atomic(path, json.dumps(record, sort_keys=True, default=str).encode())


def _checkpoint_chain(checkpoint) -> list:
    """The trial's latest checkpoint, then its older ones still stored (newest first)."""
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    current = checkpoint_index(name)
    if current is None:
        return [checkpoint]
    return [checkpoint] + [tune.Checkpoint(path, filesystem=checkpoint.filesystem)
                           for path in older_checkpoints(checkpoint.filesystem, parent, current)]


def _restore(settings: TrialSettings, checkpoint) -> tuple[Any, str | None, list[str]]:
    """The run restored from the trial's latest checkpoint (see `restore_latest`)."""
    from tvae import tasks

    return restore_latest(checkpoint, lambda d: tasks.load_run(settings.task, d / RUN_SUBDIR, device=settings.device))


def restore_latest(checkpoint, load) -> tuple[Any, str | None, list[str]]:
    """``load(directory)`` of the trial's latest checkpoint; if that one is unreadable, of the newest older one
    that is intact; ``(None, None, repairs)`` when none is (the trial then starts over). Every damaged
    checkpoint is named in ``repairs`` (and printed): nothing is skipped silently. The loaded object has an
    ``epoch`` (where training continues)."""
    import sys

    repairs: list[str] = []
    if checkpoint is None:
        return None, None, repairs
    for candidate in _checkpoint_chain(checkpoint):
        try:
            with candidate.as_directory() as directory:
                run = load(Path(directory))
            if repairs:
                repairs.append(f"continued from the intact checkpoint {candidate.path} (epoch {run.epoch})")
            break
        except Exception as exc:  # a torn or corrupt checkpoint: any error of the loader
            repairs.append(f"checkpoint {candidate.path} is unreadable ({type(exc).__name__}: {exc})")
    else:
        run, candidate = None, None
        repairs.append("no intact checkpoint left: the trial starts over from epoch 0")
    for line in repairs:
        print(f"[study] trial {tune.get_context().get_trial_id()}: {line}", file=sys.stderr, flush=True)
    return run, None if candidate is None else candidate.path, repairs


def train_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    import torch

    from tvae import tasks

    torch.set_num_threads(settings.threads)
    trial_id = tune.get_context().get_trial_id()
    location = StudyLocation.open(settings.results, settings.study)
    overrides = {**settings.fixed, **config["overrides"]}
    params = {k: v for k, v in config.items() if k != "overrides"}
    attempt = _next_attempt(location, trial_id, params)

    checkpoint = tune.get_checkpoint()
    run, used, repairs = _restore(settings, checkpoint)
    if run is None:
        run = tasks.make_run(settings.task, overrides, epochs=settings.epochs, seed=settings.seed,
                             device=settings.device)
    recorder.truncate_parts(location, trial_id, from_epoch=run.epoch)
    _write_marker(location, trial_id, attempt, {"params": params, "start_epoch": run.epoch,
                                                "from_checkpoint": used, "repairs": repairs})

    buffer: list[dict[str, Any]] = []
    while run.epoch < run.epochs:
        try:
            faults.before_epoch(location.path, trial_id, run)   # inert unless TVAE_STUDY_FAULTS is set
            row = run.train_epoch()
        except tasks.DivergedError as exc:
            recorder.write_part(location, trial_id, buffer)
            tune.report({DIVERGED_KEY: 1, DONE_KEY: 1, PROGRESS_KEY: run.epoch,
                         "divergence_reason": str(exc), settings.metric: _worst(settings.mode)})
            return
        row = {"study": settings.study, "trial_id": trial_id, "attempt": attempt, **row,
               "wall_time": time.time()}
        buffer.append(row)
        done = run.epoch >= run.epochs
        metrics = {**_scalar_metrics(row), PROGRESS_KEY: run.epoch, DIVERGED_KEY: 0, DONE_KEY: int(done)}
        if settings.metric not in metrics:
            raise KeyError(f"task {settings.task!r} reported no {settings.metric!r} in its epoch row; "
                           f"it has: {', '.join(sorted(row))}")
        if done or run.epoch % settings.checkpoint_every == 0:
            recorder.write_part(location, trial_id, buffer)   # rows first ...
            buffer = []
            faults.during_checkpoint(location.path, trial_id, run.epoch)   # inert unless requested
            with tempfile.TemporaryDirectory(prefix="tvae-ckpt-") as tmp:
                run.save(Path(tmp) / RUN_SUBDIR)
                (Path(tmp) / STATE_FILE).write_text(json.dumps({"epoch": run.epoch, "attempt": attempt}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))  # ... then checkpoint
        else:
            if run.epoch in settings.flush_at:
                recorder.write_part(location, trial_id, buffer)
                buffer = []
            tune.report(metrics)


def resources(cpus: float, gpus: float) -> dict[str, float]:
    return {"cpu": cpus, "gpu": gpus} if gpus > 0 else {"cpu": cpus}


def make_trainable(settings: TrialSettings, cpus: float, gpus: float, cohorts: bool = False):
    """The Tune trainable: `train_trial` (or, for ``cohorts``, `study.cohort_trainable.train_cohort`) with the
    settings bound and the per-trial resources attached."""
    if cohorts:
        from study.cohort_trainable import train_cohort

        bound = tune.with_parameters(train_cohort, settings=settings)
    else:
        bound = tune.with_parameters(train_trial, settings=settings)
    return tune.with_resources(bound, resources(cpus, gpus))


