"""`study.verify` itself: it must catch each violated invariant (a checker that always says "ok" proves nothing).
Studies are built with the real writers (part files, trials table, Optuna journal, attempt markers)."""
from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from study_processes import REPO, driver_env
from study import recorder, trials_table
from study.config import StudyConfig
from study.layout import StudyLocation
from study.optuna_store import open_storage
from study.verify import verify

EPOCHS = 3


def _rows(trial_id, first, last, attempt=0):
    return [{"study": "v", "trial_id": trial_id, "attempt": attempt, "epoch": e, "train_Q": 0.1 * e}
            for e in range(first, last + 1)]


def _marker(location, trial_id, attempt, params):
    location.write_atomic(location.join("attempts", f"trial_id={trial_id}", str(attempt)),
                          json.dumps({"attempt": attempt, "params": params}).encode())


@pytest.fixture
def study(tmp_path):
    """A consistent finished study of two trials."""
    location = StudyLocation.open(str(tmp_path), "v")
    config = StudyConfig(space="smoke", name="v", trials=2, epochs=EPOCHS, results=str(tmp_path))
    location.write_json(location.join("study.json"), {"arguments": config.to_dict(), "metric": "train_Q",
                                                      "mode": "max", "study": "v"})
    ot = optuna.create_study(study_name="v", storage=open_storage(location), direction="maximize")
    records = []
    for trial_id, lr in (("a", 0.001), ("b", 0.002)):
        trial = ot.ask()
        trial.suggest_float("lr", 1e-4, 1e-2)
        trial.set_user_attr("tune_trial_id", trial_id)
        ot._storage.set_trial_param(trial._trial_id, "lr", lr, optuna.distributions.FloatDistribution(1e-4, 1e-2))
        ot.tell(trial, 0.2)
        recorder.write_part(location, trial_id, _rows(trial_id, 0, 1))
        recorder.write_part(location, trial_id, _rows(trial_id, 2, 2))
        _marker(location, trial_id, 0, {"lr": lr})
        records.append(trials_table.TrialRecord(trial_id, "COMPLETED", 1, EPOCHS, {"lr": lr}, {"train_Q": 0.2},
                                                {"train_Q": 0.2}))
    trials_table.write(location, records)
    return location, records, ot


@pytest.mark.chaos
@pytest.mark.fast
def test_a_consistent_study_passes_and_the_cli_exits_zero(study):
    location, _, _ = study
    assert verify(location.display, complete=True).ok
    out = subprocess.run([sys.executable, "-m", "study.verify", location.display, "--complete"], cwd=REPO,
                         env=driver_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "all invariants hold" in out.stdout, out.stdout + out.stderr


@pytest.mark.chaos
@pytest.mark.fast
def test_each_violation_is_found_and_named(study):
    location, records, ot = study
    # a duplicated epoch (a part re-written under another span) and a gap
    recorder.write_part(location, "a", _rows("a", 1, 2, attempt=1))
    _marker(location, "a", 1, {"lr": 0.5})                       # ... by an attempt with other parameters
    for first, last, path in recorder.list_parts(location, "b"):
        if first == 0:
            location.delete_file(path)
    # an Optuna trial left RUNNING and unknown to the study (a zombie)
    zombie = ot.ask()
    zombie.set_user_attr("tune_trial_id", "lost")
    report = verify(location.display, complete=True)
    text = report.text()
    assert not report.ok
    assert "trial a: epoch(s) 1-2 appear more than once" in text
    assert "trial b: epoch(s) 0-1 missing" in text
    assert "attempt 1 ran with other parameters" in text and "lr" in text
    assert "is still RUNNING in a finished study (a zombie)" in text
    assert {"epochs", "params", "optuna"} <= report.violated()
    out = subprocess.run([sys.executable, "-m", "study.verify", location.display, "--complete"], cwd=REPO,
                         env=driver_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "VIOLATED [epochs]" in out.stdout


@pytest.mark.chaos
@pytest.mark.fast
def test_count_status_and_optuna_disagreements_are_found(study):
    location, records, ot = study
    records[1].status = "RUNNING"                                 # unfinished, and Optuna says COMPLETE
    records.append(trials_table.TrialRecord("c", "COMPLETED", 1, EPOCHS, {"lr": 0.001}))  # one too many, same config
    trials_table.write(location, records)
    text = verify(location.display, complete=True).text()
    assert "3 trials recorded, more than the 2 requested" in text
    assert "trial(s) b not finished" in text
    assert "trial b is RUNNING but Optuna trial 1 is COMPLETE" in text
    assert "trial c (COMPLETED) has no Optuna trial" in text
    assert "trials a and c ran the same configuration" in text
    assert "trial c is COMPLETED but has 0 epoch rows" in text
    # without --complete an unfinished study is fine, the rest is still reported
    partial = verify(location.display, complete=False)
    assert "not finished" not in partial.text() and not partial.ok


@pytest.mark.chaos
@pytest.mark.fast
def test_torn_files_are_named_and_a_missing_study_is_an_error(study, tmp_path):
    location, _, _ = study
    path = recorder.list_parts(location, "a")[0][2]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    open(location.join("trials.parquet"), "ab").write(b"garbage")
    text = verify(location.display).text()
    assert f"epoch part {path}" in text and "unreadable" in text
    assert "trials.parquet is unreadable" in text
    out = subprocess.run([sys.executable, "-m", "study.verify", str(tmp_path / "nothing")], cwd=REPO, env=driver_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no study at" in out.stderr
