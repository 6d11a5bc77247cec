"""A study directory copied to another results folder and resumed there: real processes, a real local Ray, a
real Ctrl-C. The resumed copy must tell its own Optuna journal, never the original's (the searcher restored
with Tune's experiment state was pickled with the original study's storage). Also the searcher alone: a pickled
StudySearch relocated to a copy keeps its sampler's random state."""
from __future__ import annotations

import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from study import optuna_store, recorder
from study.layout import StudyLocation
from study_processes import REPO, Studies, driver_env, live_trials, wait_for


def _statuses(study_dir: Path) -> dict[str, str]:
    return {r["trial_id"]: r["status"] for r in live_trials(study_dir)}


def _completed_and_checkpointed(study_dir: Path) -> bool:
    """A study trial has finished and another has rows on disk (its Tune trial checkpointed) but has not."""
    statuses = _statuses(study_dir)
    if "COMPLETED" not in statuses.values():
        return False
    location = StudyLocation.open(str(study_dir.parent), study_dir.name)
    return any(recorder.list_parts(location, t) for t, s in statuses.items() if s == "RUNNING")


# single: Tune trials are study trials (StudySearch, an OptunaSearch); cohorts: --population 2 (CohortSearch).
# 3 trials two at a time / 3 cohorts two at a time: the resumed copy also asks Optuna for a new trial or cohort.
CASES = {"single": ["--trials", "3", "--epochs", "12"],
         "cohorts": ["--trials", "6", "--population", "2", "--epochs", "8"]}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_study_copied_to_another_results_folder_resumes_on_its_own_journal(tmp_path, case):
    original_root, copy_root = tmp_path / "first", tmp_path / "second"
    original, copy = original_root / "m", copy_root / "m"
    trials = int(CASES[case][1])
    studies = Studies(tmp_path)
    driver = studies.start("--space", "smoke", *CASES[case], "--name", "m", "--results", str(original_root),
                           "--checkpoint-every", "2")
    try:
        wait_for(lambda: _completed_and_checkpointed(original), 300, "a finished and a checkpointed trial", driver)
        driver.signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130, driver.output()[-3000:]
    finally:
        driver.kill_group()
    assert set(_statuses(original).values()) != {"COMPLETED"}, "interrupted before the study finished"

    shutil.copytree(original, copy)
    journal_before = (original / "optuna.journal").read_bytes()
    second = studies.start("--name", "m", "--results", str(copy_root), "--resume")
    try:
        assert second.wait(timeout=500) == 0, second.output()[-3000:]
    finally:
        second.kill_group()

    statuses = _statuses(copy)
    assert len(statuses) == trials and set(statuses.values()) == {"COMPLETED"}, statuses
    check = subprocess.run([sys.executable, "-m", "study.verify", str(copy), "--complete"], cwd=REPO,
                           env=driver_env(), capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    study = optuna_store.load_study(StudyLocation.open(str(copy_root), "m"))
    unfinished = [(t.number, t.state.name) for t in study.trials if not t.state.is_finished()]
    assert not unfinished, f"Optuna trials left unfinished in the copy's journal: {unfinished}"
    assert {t.user_attrs.get("tune_trial_id") for t in study.trials} >= set(statuses)
    assert (original / "optuna.journal").read_bytes() == journal_before, "the resumed copy wrote to the original"


def test_a_relocated_searcher_tells_the_copy_and_keeps_its_sampler_state(tmp_path):
    from search_spaces import get as get_space
    from study.config import StudyConfig
    from study.trainable import DONE_KEY
    from study.tune_driver import make_searcher

    space = get_space("smoke")
    first = StudyLocation.open(str(tmp_path / "a"), "r")
    config = StudyConfig(space="smoke", name="r", trials=4, epochs=3, results=first.results)
    search = make_searcher(space, config, first)
    asked = search.suggest("t1")
    state = pickle.dumps(search)     # what Tune stores with the experiment
    shutil.copytree(first.path, tmp_path / "b" / "r")
    second = StudyLocation.open(str(tmp_path / "b"), "r")
    journal_before = Path(first.journal_path).read_bytes()

    moved = pickle.loads(state)
    moved.relocate(second)
    moved.on_trial_complete("t1", {space.metric: 1.0, DONE_KEY: True})
    drawn = moved.suggest("t2")
    assert Path(first.journal_path).read_bytes() == journal_before, "the relocated searcher wrote to the original"
    copy_trials = optuna_store.load_study(second).trials
    assert [(t.state.name, t.user_attrs.get("tune_trial_id")) for t in copy_trials] == \
        [("COMPLETE", "t1"), ("RUNNING", "t2")]
    # the sampler went along with its random state: the same draw as a searcher that never moved (on its own
    # identical history), not a reseeded sampler's first draw again
    stayed = pickle.loads(state)
    stayed.on_trial_complete("t1", {space.metric: 1.0, DONE_KEY: True})
    assert stayed.suggest("t2") == drawn and drawn != asked

    # Tune restores the saved state (naming the original's storage) into the relocated searcher: it stays put
    saved = tmp_path / "searcher.pkl"
    stayed.save(str(saved))
    restored = pickle.loads(state)
    restored.relocate(second)
    restored.restore(str(saved))
    journal_before = Path(first.journal_path).read_bytes()
    restored.on_trial_complete("t2", {space.metric: 2.0, DONE_KEY: True})
    assert Path(first.journal_path).read_bytes() == journal_before
    assert [t.state.name for t in optuna_store.load_study(second).trials] == ["COMPLETE", "COMPLETE"]
