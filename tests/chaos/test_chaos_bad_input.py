"""Scenario 5: bad input — unknown space, unknown or mistyped parameter override, an impossible resource request, a
results path that is not writable, resuming with a different space or override — gets a message naming the
problem, a non-zero exit, and leaves every stored file as it was."""
from __future__ import annotations

import pytest

from chaoslib import snapshot

EXIT_USAGE = 2


def _study(tmp_path, name="kept"):
    """A stored study to protect (written by the real code path: `--dry-run` does not write, so store one)."""
    from study.config import StudyConfig
    from study.layout import StudyLocation
    from study import recorder, trials_table

    location = StudyLocation.open(str(tmp_path / "results"), name)
    config = StudyConfig(space="smoke", name=name, trials=2, epochs=2, results=str(tmp_path / "results"),
                         extra={"set": {"optim.weight_decay": 0.1}})
    location.write_json(location.join("study.json"), {"arguments": config.to_dict(), "metric": "train_Q",
                                                      "mode": "max", "study": name})
    recorder.write_part(location, "t1", [{"study": name, "trial_id": "t1", "epoch": 0, "train_Q": 1.0}])
    trials_table.write(location, [trials_table.TrialRecord("t1", "INTERRUPTED", 1, 1, {"lr": 0.001})])
    return tmp_path / "results" / name


@pytest.mark.chaos
@pytest.mark.fast
@pytest.mark.parametrize("argv, message", [
    (["--space", "nope"], "unknown search space 'nope'"),
    (["--space", "smoke", "--set", "optim.nope=1"], "unknown config key 'optim.nope'"),
    (["--space", "smoke", "--set", "optim.weight_decay=abc"], "optim.weight_decay: expected a float"),
    (["--space", "smoke", "--set", "optim.weight_decay"], "is not KEY=VALUE"),
    (["--space", "smoke", "--set", "optim.lr=0.1"], "searches this key"),
    (["--space", "smoke", "--trials", "0"], "--trials must be ≥ 1"),
    (["--space", "smoke", "--cpus-per-trial", "-1"], "--cpus-per-trial must be > 0"),
], ids=["unknown-space", "unknown-override", "mistyped-override", "override-without-value",
        "override-of-a-searched-key", "zero-trials", "negative-cpus"])
def test_bad_arguments_exit_non_zero_naming_the_problem_and_write_nothing(studies, tmp_path, argv, message):
    results = tmp_path / "results"
    rc, out = studies.run(*argv, "--name", "new", "--results", str(results), timeout=300)
    assert rc == EXIT_USAGE, out
    assert message in out, out
    assert not (results / "new" / "study.json").exists()


@pytest.mark.chaos
@pytest.mark.fast
def test_unwritable_results_path_is_named(studies, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, out = studies.run("--space", "smoke", "--name", "new", "--results", str(blocker / "sub"), timeout=300)
    assert rc == EXIT_USAGE, out
    assert "cannot write the study directory" in out and str(blocker) in out
    assert blocker.read_text() == "not a directory"


@pytest.mark.chaos
@pytest.mark.fast
@pytest.mark.parametrize("argv, message", [
    (["--space", "baseline"], "--space 'baseline' (the study has 'smoke')"),
    (["--epochs", "7"], "--epochs 7 (the study has 2)"),
    (["--set", "optim.weight_decay=0.2"], "cannot resume with different --set values"),
], ids=["other-space", "other-epochs", "other-override"])
def test_resuming_with_different_arguments_is_refused_and_changes_nothing(studies, tmp_path, argv, message):
    study_dir = _study(tmp_path)
    before = snapshot(study_dir)
    rc, out = studies.run("--name", "kept", "--results", str(study_dir.parent), "--resume", *argv, timeout=300)
    assert rc == EXIT_USAGE, out
    assert message in out, out
    assert snapshot(study_dir) == before


@pytest.mark.chaos
@pytest.mark.fast
def test_starting_over_an_existing_study_is_refused(studies, tmp_path):
    study_dir = _study(tmp_path)
    before = snapshot(study_dir)
    rc, out = studies.run("--space", "smoke", "--name", "kept", "--results", str(study_dir.parent), timeout=300)
    assert rc == EXIT_USAGE and "already exists" in out and "--resume" in out, out
    assert snapshot(study_dir) == before


@pytest.mark.chaos
@pytest.mark.fast
def test_impossible_resource_request_is_refused_before_anything_is_stored(studies, tmp_path):
    results = tmp_path / "results"
    rc, out = studies.run("--space", "smoke", "--name", "greedy", "--cpus-per-trial", "4096",
                          "--results", str(results), timeout=400)
    assert rc == EXIT_USAGE, out[-3000:]
    assert "impossible resource request" in out and "--cpus-per-trial 4096" in out, out[-3000:]
    assert not (results / "greedy" / "study.json").exists()
