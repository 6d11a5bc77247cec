"""The end state of Tune's prune-then-snapshot race, made with real processes and real files: a stored experiment
snapshot that names a checkpoint which is no longer on storage (`study.preflight.check_checkpoints`).

A one-trial smoke study checkpoints every epoch; the trial is held (fault ``pause_checkpoint``) until the driver's
experiment snapshot names its newest checkpoint, then the driver's session is SIGKILLed. Deleting that named
checkpoint from the filesystem gives exactly what the race leaves (Tune pruned it after the snapshot; the driver
died before the next). Without the repair, Tune fails the trial's restore ("does not exist on storage anymore")
three times and the study ends with the trial in ERROR.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from study import compat, preflight
from study.layout import StudyLocation
from study_processes import REPO, Studies, driver_env, wait_for
from test_study_ray import _assert_complete_study

pytestmark = pytest.mark.slow

EPOCHS = 6
PAUSE_AT = 4     # checkpoints of epochs 1, 2, 3 registered (checkpoint_000000..2; num_to_keep = 2 keeps 1 and 2)


def _stored(study_dir: Path) -> list[compat.StoredTrial]:
    return compat.stored_trials(pafs.LocalFileSystem(), str(study_dir / "tune"))[1]


def _checkpoints(trial_dir: Path) -> list[str]:
    return sorted(p.name for p in trial_dir.glob("checkpoint_*") if p.is_dir())


def _snapshot_names_newest(study_dir: Path) -> compat.StoredTrial | None:
    """The paused trial, once the stored snapshot names its newest checkpoint on disk (and an older one exists)."""
    for trial in _stored(study_dir):
        on_disk = _checkpoints(study_dir / "tune" / trial.trial_dir)
        if trial.status != "TERMINATED" and len(on_disk) >= 2 and trial.checkpoint == on_disk[-1]:
            return trial
    return None


@pytest.fixture(scope="module")
def killed_study(tmp_path_factory):
    """A SIGKILLed one-trial study whose snapshot names the newest of its two stored checkpoints; a pristine copy
    of the study directory is kept for the tests that change it."""
    root = tmp_path_factory.mktemp("race")
    study_dir = root / "k"
    studies = Studies(root)
    driver = studies.start("--space", "smoke", "--trials", "1", "--epochs", str(EPOCHS), "--name", "k",
                           "--results", str(root), "--checkpoint-every", "1",
                           faults={"kind": "pause_checkpoint", "epoch": PAUSE_AT, "seconds": 120})
    try:
        wait_for(lambda: list((study_dir / ".faults").glob("paused-*")), 240, "the paused trial", driver)
        # Tune snapshots at least every 10 s: wait for the one taken after the last registered checkpoint
        trial = wait_for(lambda: _snapshot_names_newest(study_dir), 90, "a snapshot naming the newest checkpoint",
                         driver, poll=0.5)
        os.killpg(driver.proc.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill_group()
    pristine = root / "pristine" / "k"
    shutil.copytree(study_dir, pristine, symlinks=True)
    return root, study_dir, pristine, trial, driver


def _copy_study(source: Path, root: Path) -> Path:
    target = root / "k"
    shutil.copytree(source, target, symlinks=True)
    return target


def test_preflight_recreates_the_missing_checkpoint_from_the_older_one_or_as_a_placeholder(killed_study, tmp_path):
    _root, _study_dir, pristine, trial, _driver = killed_study
    named = trial.checkpoint
    older = _checkpoints(pristine / "tune" / trial.trial_dir)[-2]

    # the race's end state with an older intact checkpoint left: a copy of it under the missing name
    study = _copy_study(pristine, tmp_path / "a")
    trial_dir = study / "tune" / trial.trial_dir
    shutil.rmtree(trial_dir / named)
    notes = preflight.check_checkpoints(StudyLocation.open(str(study.parent), "k"))
    assert len(notes) == 1 and trial.trial_id in notes[0] and "copy" in notes[0], notes
    for path in (trial_dir / older).rglob("*"):
        copied = trial_dir / named / path.relative_to(trial_dir / older)
        assert copied.exists() and (path.is_dir() or copied.read_bytes() == path.read_bytes()), copied
    assert (trial_dir / older).is_dir(), "the source is kept"
    assert not list(trial_dir.glob(".tmp-*")), "no temporary left behind"
    assert preflight.check_checkpoints(StudyLocation.open(str(study.parent), "k")) == [], "a second run: nothing"

    # no intact older checkpoint (the race itself: Tune pruned the older one first): a placeholder
    study = _copy_study(pristine, tmp_path / "b")
    trial_dir = study / "tune" / trial.trial_dir
    shutil.rmtree(trial_dir / named)
    shutil.rmtree(trial_dir / older)
    notes = preflight.check_checkpoints(StudyLocation.open(str(study.parent), "k"))
    assert len(notes) == 1 and trial.trial_id in notes[0] and "epoch 0" in notes[0], notes
    assert [p.name for p in (trial_dir / named).iterdir()] == [preflight.PLACEHOLDER]


def test_preflight_recreates_a_missing_checkpoint_on_object_storage(killed_study, tmp_path):
    import s3_server

    _root, _study_dir, pristine, trial, _driver = killed_study
    older = _checkpoints(pristine / "tune" / trial.trial_dir)[-2]
    server = s3_server.start(tmp_path)
    try:
        for case in ("copy", "placeholder"):
            location = StudyLocation.open(server.results(), "k")
            pafs.copy_files(str(pristine), location.path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=location.fs)
            trial_dir = f"{location.tune_dir}/{trial.trial_dir}"
            location.fs.delete_dir(f"{trial_dir}/{trial.checkpoint}")
            if case == "placeholder":
                location.fs.delete_dir(f"{trial_dir}/{older}")
            notes = preflight.run(location)
            assert len(notes) == 1 and trial.trial_id in notes[0], notes
            named = f"{trial_dir}/{trial.checkpoint}"
            if case == "copy":
                assert "copy" in notes[0], notes
                for name in ("trial_state.json", "run/checkpoint.pt"):
                    assert location.read_bytes(f"{named}/{name}") == (pristine / "tune" / trial.trial_dir / older
                                                                       / name).read_bytes()
            else:
                assert location.list_files(named) == [f"{named}/{preflight.PLACEHOLDER}"]
            assert preflight.run(location) == [], "a second run: nothing to do"
    finally:
        server.stop()


def _killed_state(killed_study) -> Path:
    """The study directory as the SIGKILL left it, at its own place (a study copied elsewhere is not the same
    study to Tune's searcher state, which names its Optuna journal by path)."""
    root, study_dir, pristine, _trial, _driver = killed_study
    if study_dir.exists():
        shutil.rmtree(study_dir)
    shutil.copytree(pristine, study_dir, symlinks=True)
    return study_dir


def _resume(studies: Studies, root: Path) -> tuple[int, str]:
    args = ["--space", "smoke", "--trials", "1", "--epochs", str(EPOCHS), "--name", "k", "--results", str(root),
            "--checkpoint-every", "1", "--resume"]
    return studies.run(*args, timeout=300)


def _verify_complete(study_dir: Path) -> None:
    check = subprocess.run([sys.executable, "-m", "study.verify", str(study_dir), "--complete"], cwd=REPO,
                           env=driver_env(), capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_resume_after_the_named_checkpoint_was_pruned_continues_from_the_older_one(killed_study):
    root, _study_dir, _pristine, trial, _driver = killed_study
    study_dir = _killed_state(killed_study)
    trial_dir = study_dir / "tune" / trial.trial_dir
    older = _checkpoints(trial_dir)[-2]
    older_epoch = json.loads((trial_dir / older / "trial_state.json").read_text())["epoch"]
    shutil.rmtree(trial_dir / trial.checkpoint)            # what Tune's pruning did before the driver died
    rc, output = _resume(Studies(root), root)
    assert rc == 0, output[-4000:]
    assert re.search(rf"repaired: trial {trial.trial_id} .*{trial.checkpoint} is missing.*copy of .*{older}", output), \
        output[-4000:]
    assert "does not exist on storage" not in output
    # the resumed attempt started from the recreated directory, at the older checkpoint's epoch
    marker = json.loads((study_dir / "attempts" / f"trial_id={trial.trial_id}" / "1").read_text())
    assert marker["from_checkpoint"].endswith(trial.checkpoint) and marker["start_epoch"] == older_epoch, marker
    _assert_complete_study(study_dir, trials=1, epochs=EPOCHS)
    _verify_complete(study_dir)


def test_resume_with_no_intact_checkpoint_left_starts_the_trial_over(killed_study):
    root, _study_dir, _pristine, trial, _driver = killed_study
    study_dir = _killed_state(killed_study)
    trial_dir = study_dir / "tune" / trial.trial_dir
    for name in _checkpoints(trial_dir):
        shutil.rmtree(trial_dir / name)
    rc, output = _resume(Studies(root), root)
    assert rc == 0, output[-4000:]
    assert re.search(rf"repaired: trial {trial.trial_id} .*placeholder", output), output[-4000:]
    assert "no intact checkpoint left: the trial starts over from epoch 0" in output
    marker = json.loads((study_dir / "attempts" / f"trial_id={trial.trial_id}" / "1").read_text())
    assert marker["start_epoch"] == 0, marker
    _assert_complete_study(study_dir, trials=1, epochs=EPOCHS)
    _verify_complete(study_dir)
