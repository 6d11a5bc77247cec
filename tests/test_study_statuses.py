"""The one trial-status vocabulary, and the compatibility module that holds every private Ray/Optuna access."""
import re
from pathlib import Path

import pytest

from study import compat, trials_table
from study.statuses import CONTINUED, RETRIED, SETTLED, TERMINAL, TrialStatus
from study.tune_driver import decide_status, statuses_outcome

ROOT = Path(__file__).resolve().parents[1]


def test_every_status_has_exactly_one_resume_action():
    assert SETTLED | RETRIED | CONTINUED == set(TrialStatus)
    assert not (SETTLED & RETRIED) and not (SETTLED & CONTINUED) and not (RETRIED & CONTINUED)
    assert TERMINAL == SETTLED | RETRIED and "ERROR" in TERMINAL and "INTERRUPTED" not in TERMINAL


@pytest.mark.parametrize("facts, status", [
    (dict(diverged=True, done=True, errored=True, pruned=True, ended=True), "DIVERGED"),
    (dict(diverged=False, done=True, errored=True, pruned=False, ended=True), "ERROR"),
    (dict(diverged=False, done=True, errored=False, pruned=False, ended=True), "COMPLETED"),
    (dict(diverged=False, done=False, errored=False, pruned=True, ended=True), "PRUNED"),
    (dict(diverged=False, done=False, errored=False, pruned=False, ended=True), "INTERRUPTED"),
    (dict(diverged=False, done=True, errored=False, pruned=False, ended=False, running=True), "RUNNING"),
    (dict(diverged=False, done=False, errored=False, pruned=False, ended=False), "PENDING"),
])
def test_the_driver_decides_only_statuses_the_table_knows(facts, status, tmp_path):
    decided = decide_status(**facts)
    assert decided == status and isinstance(decided, TrialStatus)
    assert trials_table.TrialRecord("t", decided, 1, 0).status == status   # the table accepts it as is


def test_outcome_counts_terminal_statuses_and_an_interrupted_trial_keeps_the_study_open():
    done = statuses_outcome({"a": TrialStatus.COMPLETED, "b": TrialStatus.ERROR}, requested=2)
    assert done.finished == 2 and not done.interrupted
    open_ = statuses_outcome({"a": TrialStatus.COMPLETED, "b": TrialStatus.INTERRUPTED}, requested=2)
    assert open_.finished == 1 and open_.interrupted


def test_the_table_refuses_an_unknown_status():
    with pytest.raises(ValueError, match="unknown trial status 'UNFINISHED'"):
        trials_table.TrialRecord("t", "UNFINISHED", 1, 0)


def test_an_untested_library_version_is_refused_with_a_clear_message(monkeypatch):
    compat.require_tested_versions()       # the installed versions are the tested ones
    monkeypatch.setattr(compat, "_checked", False)
    monkeypatch.setitem(compat.TESTED, "ray", ("1.0",))
    monkeypatch.delenv(compat.ALLOW_ENV, raising=False)
    with pytest.raises(compat.UntestedVersionError, match=r"ray 2\.\d+\.\d+ is installed; tested: 1\.0\.x"):
        compat.require_tested_versions()
    monkeypatch.setenv(compat.ALLOW_ENV, "1")
    compat.require_tested_versions()


def test_private_ray_and_optuna_attributes_are_read_in_study_compat_only():
    private = re.compile(r"\._(ot_trials|ot_study|completed_trials|brackets|rungs|local_tuner|tune_config|"
                         r"run_config|storage|study_id|trial_id|metric)\b")
    offenders = []
    for path in sorted((ROOT / "study").glob("*.py")):
        if path.name == "compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line) and "self._location" not in line:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
    assert "TUNE_ID_ATTR =" not in (ROOT / "study" / "verify.py").read_text()
