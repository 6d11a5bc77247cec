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
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces.base import SearchSpace
from study import compat, recorder, trials_table
from study.cohort_trainable import EPOCH_VALUE_KEY, MEMBERS_KEY, member_trial_id
from study.config import StudyConfig
from study.layout import StudyLocation
from study.member_stopping import MemberStopping
from study.optuna_store import TUNE_ID_ATTR, fail_orphans, open_storage, record_retried
from study.statuses import SETTLED, TERMINAL, TrialStatus
from study.trainable import DIVERGED_KEY, DONE_KEY, PROGRESS_KEY, TrialSettings, make_trainable
from tvae.cohort.members import pick_cohort

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

    def relocate(self, location: StudyLocation) -> None:
        """Ask and tell the Optuna study in ``location``'s journal from now on. Tune pickles this searcher with
        the storage of the study directory it ran in; a study directory moved or copied since must not go on
        with that one (the copy's trials would stay RUNNING, the original's journal would be written). The
        sampler, and so TPE's seed and random state, is kept (`compat.repoint_optuna_search`)."""
        self._where = (location.results, location.name)
        compat.repoint_optuna_search(self, open_storage(location))

    def restore(self, checkpoint_path: str) -> None:
        # Tune restores the searcher's saved state (OptunaSearch pickles its storage and study with it) into
        # the restored searcher after `build_tuner` relocated it: keep the location it was given
        where = getattr(self, "_where", None)
        super().restore(checkpoint_path)
        if where is not None:
            self.relocate(StudyLocation.open(*where))


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


# a cohort is picked from this many cohorts' worth of asked trials (`CohortSearch`): 2 lets each cohort choose
# among twice its size while a trial waits at most about one cohort's run before it trains
POOL_COHORTS = 2


class CohortSearch(Searcher):
    """The searcher of a study whose Tune trials are cohorts (``--population K``): each Tune trial gets up to K
    Optuna trials (its members, until the study's number of trials is reached). Each Tune result reports every
    member that trained an epoch in it as an intermediate value of its Optuna trial (the study's metric of that
    epoch at step = epochs done, as OptunaSearch reports a single trial at its ``training_iteration``), then
    tells each member that the result shows ended: COMPLETE with its metric, PRUNED when the per-member rule
    stopped it (TPE ranks it by its last step and intermediate value), FAIL (with the reason) when it diverged
    or its cohort failed. A step already reported (a cohort re-running epochs after a restart) and a non-finite
    value are skipped; a told member gets no more reports.

    Members are picked from a pool of asked trials (``POOL_COHORTS`` cohorts' worth; `tvae.cohort.members.
    pick_cohort`): the oldest asked trial, then those with its batch sizes, so that a cohort's members share
    step groups. The sampler's draws do not change; a trial may wait one cohort in the pool before it trains.
    The searcher's state (trials asked, the pool, each cohort's members, members told) is saved with Tune's
    experiment state; the Optuna trials themselves are in the study's journal."""

    def __init__(self, space_name: str, location: StudyLocation, trials: int, population: int, seed: int) -> None:
        # no metric for Tune to check: a cohort's result carries each member's value of it under "members"
        super().__init__()
        self._space_name, self._where = space_name, (location.results, location.name)
        self._trials, self._population = trials, population
        self._sampler = optuna.samplers.TPESampler(seed=seed)   # saved with the searcher's state
        self.asked = 0
        self.pool: list[dict[str, Any]] = []             # asked, in no cohort yet: {"number", "params", "overrides"}
        self.cohorts: dict[str, dict[str, int]] = {}    # Tune trial id -> {member trial id: Optuna number}
        self.told: set[str] = set()
        self._study: optuna.Study | None = None
        # member trial id -> (its live Optuna trial, the steps it has intermediate values for); None: finished.
        # Not saved: after a restart `compat.reopen_trial` finds them again in the journal.
        self._live: dict[str, tuple[optuna.Trial, set[int]] | None] = {}

    def _optuna_study(self) -> optuna.Study:
        if self._study is None:
            location = StudyLocation.open(*self._where)
            self._study = optuna.load_study(study_name=location.name, storage=open_storage(location),
                                            sampler=self._sampler)
        return self._study

    def relocate(self, location: StudyLocation) -> None:
        """Ask and tell the Optuna study in ``location``'s journal from now on (Tune pickles this searcher with
        the study directory it ran in, which may have been moved or copied since). The sampler (TPE's random
        state) is kept."""
        self._where, self._study, self._live = (location.results, location.name), None, {}

    def suggest(self, trial_id: str) -> dict | None:
        study = self._optuna_study()
        wanted = min(self._population * POOL_COHORTS, len(self.pool) + self._trials - self.asked)
        if len(self.pool) < wanted:
            define = SpaceFunction(self._space_name)
            while len(self.pool) < wanted:
                ot_trial = study.ask()
                overrides = define(ot_trial)["overrides"]
                self.pool.append({"number": ot_trial.number, "params": dict(ot_trial.params), "overrides": overrides})
                self.asked += 1
        if not self.pool:
            return Searcher.FINISHED
        chosen = pick_cohort([m["overrides"] for m in self.pool], self._population)
        members = []
        for k, i in enumerate(chosen):
            member = {"trial_id": member_trial_id(trial_id, k), **self.pool[i]}
            ot_trial, steps = compat.reopen_trial(study, member["number"])
            ot_trial.set_user_attr(TUNE_ID_ATTR, member["trial_id"])
            self._live[member["trial_id"]] = (ot_trial, steps)
            members.append(member)
        taken = set(chosen)
        self.pool = [m for i, m in enumerate(self.pool) if i not in taken]
        self.cohorts[trial_id] = {m["trial_id"]: m["number"] for m in members}
        return {MEMBERS_KEY: members}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report_epochs(trial_id, result)
        self._tell_ended(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._report_epochs(trial_id, result or {})
        self._tell_ended(trial_id, result or {})
        if error:   # the members the failed cohort left unfinished
            for member_id, number in self.cohorts.get(trial_id, {}).items():
                self._tell(member_id, number, TrialState.FAIL, None, "its cohort failed (trials.parquet: the trace)")

    def _report_epochs(self, trial_id: str, result: dict) -> None:
        """Each member's value of the epoch it trained in ``result``, as an Optuna intermediate value."""
        numbers = self.cohorts.get(trial_id, {})
        for member_id, report in member_reports(result).items():
            value = report.get(EPOCH_VALUE_KEY)     # a float (`cohort_trainable.member_report`), or absent
            if member_id not in numbers or member_id in self.told or value is None or not math.isfinite(value):
                continue
            step = int(report["epochs_done"])
            if member_id not in self._live:   # asked by a driver before a restart
                self._live[member_id] = compat.reopen_trial(self._optuna_study(), numbers[member_id])
            live = self._live[member_id]
            if live is None or step in live[1]:
                continue
            ot_trial, steps = live
            try:
                ot_trial.report(float(value), step)
            except optuna.exceptions.UpdateFinishedTrialError as exc:   # finished in the journal meanwhile
                log.info("Optuna report for %s (trial %d): %s", member_id, numbers[member_id], exc)
                self._live[member_id] = None
                continue
            steps.add(step)

    def _tell_ended(self, trial_id: str, result: dict) -> None:
        numbers = self.cohorts.get(trial_id, {})
        for member_id, report in member_reports(result).items():
            status = report.get("status")
            if member_id not in numbers or status not in {s.value for s in SETTLED}:
                continue
            value = report.get("value")
            if status == TrialStatus.COMPLETED and isinstance(value, (int, float)) and math.isfinite(value):
                self._tell(member_id, numbers[member_id], TrialState.COMPLETE, float(value), None)
            elif status == TrialStatus.PRUNED:
                self._tell(member_id, numbers[member_id], TrialState.PRUNED, None, None)
            else:
                self._tell(member_id, numbers[member_id], TrialState.FAIL, None, report.get("reason") or status)

    def _tell(self, member_id: str, number: int, state: TrialState, value: float | None, reason: str | None) -> None:
        if member_id in self.told:
            return
        study = self._optuna_study()
        try:
            if state == TrialState.FAIL:
                frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
                if frozen.state == TrialState.RUNNING:
                    key = "diverged" if str(reason).startswith("diverged") else "error"
                    compat.fail_trial(study, frozen, {key: str(reason)})
            else:
                study.tell(number, value, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as exc:
            log.info("Optuna tell for %s (trial %d): %s", member_id, number, exc)   # told before a restart
        self.told.add(member_id)
        self._live.pop(member_id, None)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"asked": self.asked, "pool": self.pool, "cohorts": self.cohorts, "told": sorted(self.told),
                         "sampler": self._sampler}, handle)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        self.asked, self.cohorts, self.told = state["asked"], state["cohorts"], set(state["told"])
        self.pool = state.get("pool", [])
        # the sampler continues its random state: a fresh one from the seed would draw the study's first
        # trials' parameters again
        self._sampler = state.get("sampler", self._sampler)
        self._study, self._live = None, {}

    def __getstate__(self) -> dict[str, Any]:
        # the live Optuna trials stay in this process (Tune pickles the searcher with the Tuner)
        return {**self.__dict__, "_live": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_live": {}, **state})


def member_reports(result: dict) -> dict[str, dict[str, Any]]:
    """{member trial id: its report} of a cohort's Tune result, nested (``trial.last_result``) or flattened
    with "/" (what searchers receive)."""
    nested = result.get(MEMBERS_KEY)
    if isinstance(nested, dict):
        return nested
    out: dict[str, dict[str, Any]] = {}
    prefix = MEMBERS_KEY + "/"
    for key, value in result.items():
        if key.startswith(prefix):
            member_id, _, field = key[len(prefix):].partition("/")
            out.setdefault(member_id, {})[field] = value
    return out


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
    final = trials_table.final_metrics(last, metric)
    if last.get(DIVERGED_KEY):
        final.pop(metric, None)
    attempts = _attempts(location, trial.trial_id)
    return trials_table.TrialRecord(trial_id=trial.trial_id, status=status, attempts=attempts,
                                    epochs_done=int(last.get(PROGRESS_KEY, 0) or 0), params=params, best=best,
                                    final=final, reason=reason)


def _attempts(location: StudyLocation, trial_id: str) -> int:
    """How many times the study trial started (its attempt markers)."""
    return len(location.list_files(location.join("attempts", f"trial_id={trial_id}")))


def member_status(report: dict[str, Any], cohort: TrialStatus) -> TrialStatus:
    """A cohort member's status: its own once it has ended (COMPLETED, PRUNED, DIVERGED); before that, the
    cohort's (RUNNING, PENDING, INTERRUPTED when the driver stopped first, ERROR when the cohort failed)."""
    own = report.get("status")
    if own in {s.value for s in SETTLED}:
        return TrialStatus(own)
    if cohort == TrialStatus.COMPLETED:     # a finished cohort reports every member ended; never left behind
        return TrialStatus.INTERRUPTED
    return cohort


def member_records(trial: Trial, scheduler: TrialScheduler, metric: str, mode: str, location: StudyLocation,
                   ending: str | None = None) -> list[trials_table.TrialRecord]:
    """One record per member of a cohort trial, as `trial_record` makes for a single trial."""
    cohort, cohort_reason = _status(trial, scheduler, ending)
    reports = member_reports(trial.last_result or {})
    records = []
    for member in trial.config.get(MEMBERS_KEY, []):
        report = reports.get(member["trial_id"], {})
        status = member_status(report, cohort)
        best = {} if report.get("best") is None or status == TrialStatus.DIVERGED else {metric: report["best"]}
        final = {k[len("final_"):]: v for k, v in report.items() if k.startswith("final_")}
        if status == TrialStatus.DIVERGED:
            final.pop(metric, None)
        reason = report.get("reason") if status in SETTLED else (cohort_reason if status == TrialStatus.ERROR else None)
        records.append(trials_table.TrialRecord(trial_id=member["trial_id"], status=status,
                                                attempts=_attempts(location, member["trial_id"]),
                                                epochs_done=int(report.get("epochs_done", 0) or 0),
                                                params=member["params"], best=best, final=final, reason=reason))
    return records


def trial_records(trial: Trial, scheduler: TrialScheduler, metric: str, mode: str, location: StudyLocation,
                  ending: str | None = None) -> list[trials_table.TrialRecord]:
    """The study trials of a Tune trial: itself, or the members of a cohort."""
    if MEMBERS_KEY in (trial.config or {}):
        return member_records(trial, scheduler, metric, mode, location, ending)
    return [trial_record(trial, scheduler, metric, mode, location, ending)]


class TrialsTableWriter(tune.Callback):
    """Rewrites `trials.parquet` when a trial starts or ends, at the end, and every ``period`` s meanwhile."""

    def __init__(self, location: StudyLocation, metric: str, mode: str, period: float = 5.0) -> None:
        self.location, self.metric, self.mode, self.period = location, metric, mode, period
        self.scheduler: TrialScheduler | None = None
        self._last = 0.0

    def write(self, trials: list[Trial], ending: Trial | None = None, status: str | None = None) -> None:
        records = [record for t in trials for record in trial_records(t, self.scheduler, self.metric, self.mode,
                                                                      self.location, status if t is ending else None)]
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
    """``scheduler``: the study's rule (for cohorts, applied to each member by `study.member_stopping`)."""
    stopping = None
    if config.population > 1 and isinstance(scheduler, AsyncHyperBandScheduler):
        stopping = MemberStopping(rungs=stop_epochs(scheduler), metric=space.metric, mode=space.mode,
                                  memorised_when=space.memorised_when)
    return TrialSettings(study=config.name, results=_absolute(config.results), task=space.task,
                         epochs=config.epochs, seed=config.seed, device=config.device,
                         checkpoint_every=config.checkpoint_every, threads=config.threads_per_trial,
                         metric=space.metric, mode=space.mode,
                         fixed={**space.fixed, **config.extra.get("set", {})},
                         flush_at=() if config.population > 1 else stop_epochs(scheduler),
                         member_stopping=stopping)


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
    trainable = make_trainable(_settings(space, config, scheduler), config.cpus_per_trial, config.gpus_per_trial,
                               cohorts=config.population > 1)
    if config.population > 1:
        scheduler = FIFOScheduler()   # Tune trials are cohorts: the members stop themselves (member_stopping)
    callback = TrialsTableWriter(location, space.metric, space.mode)
    if resume:
        tuner = tune.Tuner.restore(location.tune_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=location.fs)
        scheduler = compat.restored_scheduler(tuner)  # restored with the experiment
        # the searcher was pickled naming the storage of the directory it ran in: the study may have moved since
        compat.restored_searcher(tuner).relocate(location)
        callback.scheduler = scheduler
        compat.set_restored_callbacks(tuner, [callback])
        return tuner, callback
    callback.scheduler = scheduler
    if config.population > 1:
        make_searcher(space, config, location)   # creates the Optuna study (and its attributes) in the journal
        search_alg: Searcher = CohortSearch(space.name, location, config.trials, config.population, config.seed)
    else:
        search_alg = make_searcher(space, config, location)
    tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=scheduler,
                                  num_samples=config.tune_trials, max_concurrent_trials=config.concurrency,
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
        status = decide_status(diverged=bool(metrics.get(DIVERGED_KEY)), done=bool(metrics.get(DONE_KEY)),
                               errored=result.error is not None, pruned=trial_id in stopped, ended=True)
        if MEMBERS_KEY in (result.config or {}):
            reports = member_reports(metrics)
            for member in result.config[MEMBERS_KEY]:
                statuses[member["trial_id"]] = member_status(reports.get(member["trial_id"], {}), status)
        else:
            statuses[trial_id] = status
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
