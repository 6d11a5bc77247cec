"""Everything that speaks Ray Tune, in one place: searcher, scheduler, trials-table callback, Tuner build/restore.

The rest of `study` works on plain data (`StudyConfig`, `TrialRecord`, Parquet files) and never sees a Tune
class. Names follow the installed Ray 2.60 (`tune.RunConfig`, `tune.report`, ...); every private Ray or Optuna
attribute it needs is read through `study.compat`, which checks the installed versions. Trial statuses are
`study.statuses.TrialStatus`; the Optuna bookkeeping (journal, orphans, retries) is `study.optuna_store`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces.base import SearchSpace
from study import compat, recorder, trials_table
from study.config import StudyConfig
from study.layout import StudyLocation
from study.optuna_store import TUNE_ID_ATTR, fail_orphans, open_storage, record_retried
from study.statuses import TERMINAL, TrialStatus
from study.trainable import DIVERGED_KEY, DONE_KEY, PROGRESS_KEY, TrialSettings, make_trainable

log = logging.getLogger("study")
# Tune's own per-trial result.json/progress.csv are off (the Parquet rows are the record); its result
# reader would warn once per trial that they are missing.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------------ searcher

class StudySearch(OptunaSearch):
    """OptunaSearch on the study's journal, which also: tags each Optuna trial with its Tune trial id; tells
    FAIL (with the reason) for a diverged trial and PRUNED for one the scheduler stopped, instead of a
    misleading COMPLETE; and never hands NaN to the storage."""

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = compat.searcher_optuna_trial(self, trial_id)
        if ot_trial is not None and TUNE_ID_ATTR not in ot_trial.user_attrs:
            ot_trial.set_user_attr(TUNE_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # After a driver is killed between two experiment snapshots, Tune may re-run the last epochs of a trial
        # that Optuna already saw finish; its intermediate values are then already final: skip them.
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = compat.searcher_optuna_trial(self, trial_id)
        completed = compat.searcher_completed(self)
        if trial_id in completed or ot_trial is None:
            return super().on_trial_complete(trial_id, result, error)
        value = None if result is None else result.get(self.metric)
        state = None
        if error:
            state = TrialState.FAIL
        elif result and result.get(DIVERGED_KEY):
            ot_trial.set_user_attr("diverged", str(result.get("divergence_reason", "diverged")))
            state = TrialState.FAIL
        elif value is None or (isinstance(value, float) and not math.isfinite(value)):
            state = TrialState.FAIL
        elif result is not None and not result.get(DONE_KEY):
            state = TrialState.PRUNED
        if state is None:
            return super().on_trial_complete(trial_id, result, error)
        try:
            compat.searcher_study(self).tell(ot_trial, state=state)
        except Exception as exc:  # already finished (e.g. re-run after a stale snapshot)
            log.warning("Optuna tell for %s: %s", trial_id, exc)
        completed.add(trial_id)


class SpaceFunction:
    """The define-by-run function handed to OptunaSearch: picklable (it is saved with the searcher's state),
    it looks the space up by name. The trial's config is ``{<params>..., "overrides": {dotted key: value}}``."""

    def __init__(self, space_name: str) -> None:
        self.space_name = space_name

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        import search_spaces

        return {"overrides": search_spaces.get(self.space_name).define(trial)}


def make_searcher(space: SearchSpace, config: StudyConfig, location: StudyLocation) -> StudySearch:
    storage = open_storage(location)
    ot_study = optuna.create_study(storage=storage, study_name=location.name, load_if_exists=True,
                                   direction="maximize" if space.mode == "max" else "minimize")
    ot_study.set_user_attr("epochs", config.epochs)   # search spaces may scale with the budget
    ot_study.set_user_attr("space", space.name)
    sampler = optuna.samplers.TPESampler(seed=config.seed)
    return StudySearch(space=SpaceFunction(space.name), metric=space.metric, mode=space.mode, sampler=sampler,
                       study_name=location.name, storage=storage)


# ----------------------------------------------------------------------------------------------- scheduler

class GrokkingSafeASHA(AsyncHyperBandScheduler):
    """ASHA that never stops a trial before ``grace_period`` epochs, nor once it has memorised
    (``memorised_when``): a memorised-but-not-yet-generalised trial looks worst on held-out metrics exactly
    when it may be about to grok. Stops are remembered (with their reason) for the trials table."""

    def __init__(self, *, memorised_when: tuple[str, float] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._memorised_when = memorised_when
        self.protected: set[str] = set()
        self.stopped: dict[str, str] = {}

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if self._memorised_when is not None:
            key, threshold = self._memorised_when
            value = result.get(key)
            if isinstance(value, (int, float)) and value >= threshold:
                self.protected.add(trial.trial_id)
        if trial.trial_id in self.protected:
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and not result.get(DONE_KEY):
            self.stopped[trial.trial_id] = (f"stopped by grokking_asha at epoch {result.get(PROGRESS_KEY)}: "
                                            f"{compat.asha_metric(self)} below the rung cutoff")
        return action


def trial_dirname(trial: Trial) -> str:
    """Short trial folders under tune/: the trial id (the parameters are in trials.parquet)."""
    return f"trial_{trial.trial_id}"


def make_scheduler(space: SearchSpace, config: StudyConfig) -> TrialScheduler:
    if config.scheduler == "fifo":
        return FIFOScheduler()
    grace = config.grace_period or space.grace_period or max(1, config.epochs // 3)
    grace = min(grace, config.epochs)
    return GrokkingSafeASHA(memorised_when=space.memorised_when, time_attr=PROGRESS_KEY, metric=space.metric,
                            mode=space.mode, max_t=config.epochs, grace_period=grace, reduction_factor=3)


# ------------------------------------------------------------------------------------------ trials table

def decide_status(*, diverged: bool, done: bool, errored: bool, pruned: bool, ended: bool,
                  running: bool = False) -> TrialStatus:
    """The one place a trial's status is decided, from plain facts: divergence wins (it is never retried), then
    an error; a trial that has ended is COMPLETED (all epochs), PRUNED (the scheduler stopped it) or
    INTERRUPTED (the driver stopped first); else it is RUNNING or PENDING."""
    if diverged:
        return TrialStatus.DIVERGED
    if errored:
        return TrialStatus.ERROR
    if ended:
        if done:
            return TrialStatus.COMPLETED
        return TrialStatus.PRUNED if pruned else TrialStatus.INTERRUPTED
    return TrialStatus.RUNNING if running else TrialStatus.PENDING


def _status(trial: Trial, scheduler: TrialScheduler, ending: str | None = None) -> tuple[TrialStatus, str | None]:
    """``ending`` is the status Tune is about to give the trial (callbacks run before it is set)."""
    last = trial.last_result or {}
    stopped = getattr(scheduler, "stopped", {})
    tune_status = ending or trial.status
    status = decide_status(diverged=bool(last.get(DIVERGED_KEY)), done=bool(last.get(DONE_KEY)),
                           errored=tune_status == Trial.ERROR, pruned=trial.trial_id in stopped,
                           ended=tune_status == Trial.TERMINATED, running=tune_status == Trial.RUNNING)
    reason = {TrialStatus.DIVERGED: lambda: str(last.get("divergence_reason", "")),
              TrialStatus.ERROR: lambda: _error_reason(trial),
              TrialStatus.PRUNED: lambda: stopped[trial.trial_id]}.get(status, lambda: None)()
    return status, reason


def _error_reason(trial: Trial) -> str:
    """The exception that ended the trial (last line of its trace) and where the whole trace is stored: the
    error file under Ray's session directory disappears with the session, the copy in the trial folder stays."""
    text = None
    try:
        if trial.error_file and os.path.exists(trial.error_file):
            text = Path(trial.error_file).read_text(errors="replace")
        else:
            text = trial.get_error()
    except Exception:  # the reason is a courtesy: never let it break the trials table
        text = None
    lines = [line.strip() for line in (text or "").splitlines() if line.strip() and not line.startswith(" ")]
    summary = lines[-1][:300] if lines else "unknown error"
    return f"{summary} (after {trial.num_failures} failure(s); trace in {trial.path}/error.txt)"


def trial_record(trial: Trial, scheduler: TrialScheduler, metric: str, mode: str,
                 location: StudyLocation, ending: str | None = None) -> trials_table.TrialRecord:
    status, reason = _status(trial, scheduler, ending)
    last = trial.last_result or {}
    params = {k: v for k, v in (trial.config or {}).items() if k != "overrides"}
    best: dict[str, float] = {}
    analysis = getattr(trial, "metric_analysis", {}) or {}
    if metric in analysis and not last.get(DIVERGED_KEY):
        best[metric] = analysis[metric].get(mode)
    final = {k: v for k, v in last.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)
             and (k.startswith(("train_", "heldout_")) or k in ("loss", metric))}
    if last.get(DIVERGED_KEY):
        final.pop(metric, None)
    attempts = len(location.list_files(location.join("attempts", f"trial_id={trial.trial_id}")))
    return trials_table.TrialRecord(trial_id=trial.trial_id, status=status, attempts=attempts,
                                    epochs_done=int(last.get(PROGRESS_KEY, 0) or 0), params=params, best=best,
                                    final=final, reason=reason)


class TrialsTableWriter(tune.Callback):
    """Rewrites `trials.parquet` when a trial starts or ends, at the end, and every ``period`` s meanwhile."""

    def __init__(self, location: StudyLocation, metric: str, mode: str, period: float = 5.0) -> None:
        self.location, self.metric, self.mode, self.period = location, metric, mode, period
        self.scheduler: TrialScheduler | None = None
        self._last = 0.0

    def write(self, trials: list[Trial], ending: Trial | None = None, status: str | None = None) -> None:
        records = [trial_record(t, self.scheduler, self.metric, self.mode, self.location,
                                status if t is ending else None) for t in trials]
        trials_table.write(self.location, records)
        self._last = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        # Tune calls this before it marks the trial RUNNING: without `ending`, a trial that starts while no
        # other trial ends stayed PENDING in the table for up to `period` seconds (a short trial, its whole run)
        self.write(trials, trial, Trial.RUNNING)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.monotonic() - self._last > self.period:
            self.write(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.write(trials, trial, Trial.TERMINATED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.write(trials, trial, Trial.ERROR)

    def on_experiment_end(self, trials, **info):
        self.write(trials)


# ------------------------------------------------------------------------------------------------ tuner

@dataclass
class Outcome:
    """What a fit produced, as plain data."""
    requested: int
    finished: int                 # trials in a TERMINAL status (nothing left to do in this run)
    statuses: dict[str, TrialStatus]   # trial id → status
    interrupted: bool


def _settings(space: SearchSpace, config: StudyConfig, scheduler: TrialScheduler) -> TrialSettings:
    return TrialSettings(study=config.name, results=_absolute(config.results), task=space.task,
                         epochs=config.epochs, seed=config.seed, device=config.device,
                         checkpoint_every=config.checkpoint_every, threads=config.threads_per_trial,
                         metric=space.metric, mode=space.mode,
                         fixed={**space.fixed, **config.extra.get("set", {})},
                         flush_at=stop_epochs(scheduler))


def stop_epochs(scheduler: TrialScheduler) -> tuple[int, ...]:
    """The epochs at which ``scheduler`` may stop a trial (the rungs of ASHA; none for FIFO)."""
    if not isinstance(scheduler, AsyncHyperBandScheduler):
        return ()
    return compat.asha_rung_epochs(scheduler)


def _absolute(results: str) -> str:
    return results if "://" in results else os.path.abspath(results)


def _run_config(config: StudyConfig, location: StudyLocation, callback: TrialsTableWriter) -> tune.RunConfig:
    return tune.RunConfig(
        name="tune", storage_path=location.path, storage_filesystem=location.fs,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[callback], verbose=1)


def can_restore(location: StudyLocation) -> bool:
    return tune.Tuner.can_restore(location.tune_dir, storage_filesystem=location.fs)


def build_tuner(space: SearchSpace, config: StudyConfig, location: StudyLocation,
                resume: bool) -> tuple[tune.Tuner, TrialsTableWriter]:
    # a resumed tuner runs the scheduler Tune restores with the experiment; it was built from the same
    # stored configuration, so this one gives the same stop epochs
    scheduler = make_scheduler(space, config)
    trainable = make_trainable(_settings(space, config, scheduler), config.cpus_per_trial, config.gpus_per_trial)
    callback = TrialsTableWriter(location, space.metric, space.mode)
    if resume:
        tuner = tune.Tuner.restore(location.tune_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=location.fs)
        scheduler = compat.restored_scheduler(tuner)  # restored with the experiment
        callback.scheduler = scheduler
        compat.set_restored_callbacks(tuner, [callback])
        return tuner, callback
    callback.scheduler = scheduler
    tune_config = tune.TuneConfig(search_alg=make_searcher(space, config, location), scheduler=scheduler,
                                  num_samples=config.trials, max_concurrent_trials=config.concurrency,
                                  reuse_actors=True, trial_dirname_creator=trial_dirname,
                                  trial_name_creator=trial_dirname)
    tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=_run_config(config, location, callback))
    return tuner, callback


def fit(tuner: tune.Tuner, requested: int, scheduler: TrialScheduler | None) -> Outcome:
    """``scheduler``: the one the tuner runs with (`build_tuner`'s callback holds it)."""
    grid = tuner.fit()
    # trials the scheduler stopped early are finished (PRUNED), not unfinished: else the study would report
    # itself interrupted, and every resume would again
    stopped = getattr(scheduler, "stopped", {})
    statuses: dict[str, TrialStatus] = {}
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or os.path.basename(result.path)
        # a result without an error that is neither done nor pruned ended with the driver: INTERRUPTED
        statuses[trial_id] = decide_status(diverged=bool(metrics.get(DIVERGED_KEY)), done=bool(metrics.get(DONE_KEY)),
                                           errored=result.error is not None, pruned=trial_id in stopped, ended=True)
    return statuses_outcome(statuses, requested)


def statuses_outcome(statuses: dict[str, TrialStatus], requested: int) -> Outcome:
    finished = sum(1 for s in statuses.values() if s in TERMINAL)
    return Outcome(requested=requested, finished=finished, statuses=statuses,
                   interrupted=finished < requested)


def finish_study(location: StudyLocation, outcome: Outcome, metric: str) -> dict[str, list]:
    """After a study has completed: fail Optuna trials left RUNNING by a killed driver and remove epoch
    partitions of trials Ray Tune never recorded (both orphans of a driver killed between snapshots)."""
    from study.optuna_store import load_study

    live = set(outcome.statuses)
    study = load_study(location)
    failed = fail_orphans(study, live, "driver killed before Ray Tune recorded this trial") if study else []
    if study is not None:
        record_retried(study, trials_table.read(location), metric)
    removed = [t for t in recorder.trial_ids(location) if t not in live]
    for trial_id in removed:
        recorder.remove_trial(location, trial_id)
    return {"optuna_failed": failed, "partitions_removed": removed}
