"""Every use of a private Ray Tune or Optuna attribute, in one place, behind a version check.

`study` needs a few things neither library offers publicly: the Optuna trial OptunaSearch keeps for a Tune
trial, the rung epochs of an ASHA scheduler, the scheduler, searcher and callbacks of a restored Tuner, pointing
a restored OptunaSearch at a moved study's storage, failing a trial that another process left RUNNING, and
reporting to a trial that an earlier driver asked. Each accessor
below names the private attribute it reads; each was checked against the versions in `TESTED`. On any other
version `require_tested_versions` (called by ``study.run`` before it starts anything, and by each accessor)
stops with a message saying which versions are installed and which are tested; ``TVAE_STUDY_ALLOW_UNTESTED=1``
skips the check at your own risk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

# package -> the release prefixes (major.minor) these accessors were checked against
TESTED: dict[str, tuple[str, ...]] = {"ray": ("2.60",), "optuna": ("5.1",)}
ALLOW_ENV = "TVAE_STUDY_ALLOW_UNTESTED"


class UntestedVersionError(RuntimeError):
    """Ray or Optuna is a version the private-attribute accessors of `study.compat` were not checked against."""


_checked = False


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def require_tested_versions() -> None:
    global _checked
    if _checked or os.environ.get(ALLOW_ENV) == "1":
        return
    wrong = []
    for package, tested in TESTED.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            wrong.append(f"{package} is not installed (tested: {', '.join(tested)}.x)")
            continue
        if _minor(installed) not in tested:
            wrong.append(f"{package} {installed} is installed; tested: {', '.join(t + '.x' for t in tested)}")
    if wrong:
        raise UntestedVersionError(
            "untested library version: " + "; ".join(wrong) + ". study/compat.py reads private attributes of Ray "
            "Tune and Optuna that may differ in this version; install a tested version (pyproject.toml pins "
            f"them), or set {ALLOW_ENV}=1 to run anyway.")
    _checked = True


# ------------------------------------------------------------------------------------------- OptunaSearch

def searcher_optuna_trial(search: Any, tune_trial_id: str) -> Any | None:
    """The Optuna trial OptunaSearch created for a Tune trial (``OptunaSearch._ot_trials``)."""
    require_tested_versions()
    return search._ot_trials.get(tune_trial_id)


def searcher_tune_ids(search: Any) -> set[str]:
    """The Tune trial ids OptunaSearch holds an Optuna trial for (``OptunaSearch._ot_trials``)."""
    require_tested_versions()
    return set(search._ot_trials)


def searcher_completed(search: Any) -> set[str]:
    """The Tune trial ids OptunaSearch has already told Optuna the end of (``_completed_trials``, mutable)."""
    require_tested_versions()
    return search._completed_trials


def searcher_study(search: Any) -> Any:
    """The `optuna.Study` OptunaSearch asks and tells (``OptunaSearch._ot_study``)."""
    require_tested_versions()
    return search._ot_study


def repoint_optuna_search(search: Any, storage: Any) -> None:
    """Make an OptunaSearch ask and tell the Optuna study of the same name in ``storage`` (a study directory
    moved or copied since the searcher was pickled with the storage it had then): ``OptunaSearch._storage``,
    ``OptunaSearch._ot_study`` (a new `optuna.Study` that keeps the old one's sampler and pruner objects, so TPE's
    seed and random state go on) and, for each trial of ``OptunaSearch._ot_trials``, ``Trial.study`` and
    ``Trial.storage`` (the trials keep their storage ids ``Trial._trial_id``: a copied journal replays to the
    same ids)."""
    import optuna

    require_tested_versions()
    search._storage = storage
    old = search._ot_study
    if old is None:   # not set up yet: `OptunaSearch._setup_study` will open ``_storage``
        return
    study = optuna.load_study(study_name=old.study_name, storage=storage, sampler=old.sampler, pruner=old.pruner)
    search._ot_study = study
    for trial in search._ot_trials.values():
        trial.study, trial.storage = study, study._storage


# ------------------------------------------------------------------------------------------- schedulers, Tuner

def asha_metric(scheduler: Any) -> str:
    """The metric an AsyncHyperBandScheduler compares (``_metric``)."""
    require_tested_versions()
    return scheduler._metric


def asha_rung_epochs(scheduler: Any) -> tuple[int, ...]:
    """The epochs at which an AsyncHyperBandScheduler may stop a trial (``_brackets[*]._rungs``)."""
    require_tested_versions()
    return tuple(sorted({int(milestone) for bracket in scheduler._brackets for milestone, _ in bracket._rungs}))


def restored_scheduler(tuner: Any) -> Any:
    """The scheduler a restored Tuner runs with (``Tuner._local_tuner._tune_config.scheduler``)."""
    require_tested_versions()
    return tuner._local_tuner._tune_config.scheduler


def restored_searcher(tuner: Any) -> Any:
    """The searcher a restored Tuner runs with (``Tuner._local_tuner._tune_config.search_alg``), without the
    wrappers Tune may put around it (their ``searcher``)."""
    require_tested_versions()
    search = tuner._local_tuner._tune_config.search_alg
    while hasattr(search, "searcher"):
        search = search.searcher
    return search


def set_restored_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Callbacks are not stored with an experiment: attach them to a restored Tuner
    (``Tuner._local_tuner._run_config.callbacks``)."""
    require_tested_versions()
    tuner._local_tuner._run_config.callbacks = callbacks


# ------------------------------------------------------------------------------------------- Optuna storage

def fail_trial(study: Any, trial: Any, attrs: dict[str, Any]) -> None:
    """Set user attributes on, and mark FAIL, a RUNNING trial this process does not own (a driver that was
    killed left it): ``Study._storage`` and ``FrozenTrial._trial_id``."""
    from optuna.trial import TrialState

    require_tested_versions()
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def reopen_trial(study: Any, number: int) -> tuple[Any, set[int]] | None:
    """An `optuna.trial.Trial` (to set user attributes on, report intermediate values to) for the study's trial
    ``number``, asked earlier by this driver or by one before a restart (`Study.ask`'s object is not kept), and
    the steps it already has values for; None when the trial is finished: ``Study._storage``,
    ``Study._study_id`` (trial number -> storage id)."""
    import optuna

    require_tested_versions()
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return None
    return optuna.trial.Trial(study, trial_id), set(frozen.intermediate_values)


# ------------------------------------------------------------------------------------------- Tune's stored state

@dataclass(frozen=True)
class StoredTrial:
    """One trial as the newest stored Ray Tune experiment snapshot records it."""
    trial_id: str
    status: str                   # Tune's status: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    trial_dir: str                # the trial's directory name inside the experiment directory
    checkpoint: str | None        # the name (``checkpoint_00000k``) of its latest registered checkpoint, or None


def stored_trials(fs: Any, experiment_dir: str) -> tuple[str | None, list[StoredTrial]]:
    """The newest experiment snapshot in ``experiment_dir`` (on pyarrow filesystem ``fs``) and its trials; (None, [])
    when there is none. Reads Tune's private snapshot format the way Tune restores it: the newest
    ``experiment_state-*.json`` (``TuneController.CKPT_FILE_TMPL``, newest by name), each ``trial_data`` pair
    through ``Trial.from_json_state(stub=True)`` and ``Trial.restore_run_metadata`` (cloudpickle inside), the
    latest checkpoint from ``run_metadata.checkpoint_manager.latest_checkpoint_result`` and the trial's
    directory from ``Trial.storage.trial_dir_name``. Only names are returned: the stored absolute paths are those
    of the run that wrote the snapshot (a study may have moved since)."""
    import fnmatch

    import pyarrow.fs as pafs
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment.trial import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    require_tested_versions()
    selector = pafs.FileSelector(experiment_dir, allow_not_found=True, recursive=False)
    names = [i.base_name for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    matching = fnmatch.filter(names, TuneController.CKPT_FILE_TMPL.format("*"))
    if not matching:
        return None, []
    state_path = f"{experiment_dir.rstrip('/')}/{max(matching)}"
    with fs.open_input_stream(state_path) as stream:
        state = _loads_with_cloudpickle(stream.read())
    trials = []
    for json_state, run_metadata in state["trial_data"]:
        trial = Trial.from_json_state(json_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
        name = latest.checkpoint.path.rstrip("/").rpartition("/")[2] if latest is not None else None
        trials.append(StoredTrial(trial.trial_id, str(trial.status), trial.storage.trial_dir_name, name))
    return state_path, trials
