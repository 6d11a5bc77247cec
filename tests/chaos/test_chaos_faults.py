"""Scenario 3: a trial that raises, one whose losses become NaN, one that becomes infinite, one that runs out of
memory. Each is recorded with its reason, the searcher (Optuna) is told, and the study goes on to finish every
requested trial. Faults are injected through `study.faults` (real exceptions, real non-finite parameters, a real
`setrlimit` address-space cap)."""
from __future__ import annotations

import pytest

from study.optuna_store import load_study
from study.layout import StudyLocation

from chaoslib import assert_invariants, attempt_markers, trials_rows

FAULTS = [{"kind": "raise", "epoch": 1}, {"kind": "nan", "epoch": 1}, {"kind": "inf", "epoch": 2},
          {"kind": "oom", "epoch": 1}]


@pytest.mark.chaos
def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(studies, tmp_path):
    results = tmp_path / "results"
    rc, out = studies.run("--space", "smoke", "--name", "faults", "--trials", "5", "--epochs", "3",
                          "--concurrency", "2", "--checkpoint-every", "1", "--max-failures", "1",
                          "--results", str(results), faults=FAULTS)
    assert rc == 1, out[-3000:]                      # some trials failed after their retries
    assert "failed after their retries" in out
    study_dir = results / "faults"
    rows = {r["trial_id"]: r for r in trials_rows(study_dir)}
    assert len(rows) == 5
    claims = {p.name.rsplit("-", 1)[0]: p.read_text() for p in (study_dir / ".faults").iterdir()
              if p.name.rsplit("-", 1)[-1].isdigit()}
    assert set(claims) == {"raise", "nan", "inf", "oom"} and len(set(claims.values())) == 4
    raised, nan, inf, oom = (rows[claims[k]] for k in ("raise", "nan", "inf", "oom"))
    assert raised["status"] == "ERROR" and "injected fault" in raised["reason"] and raised["attempts"] == 2
    assert nan["status"] == "DIVERGED" and "nan" in nan["reason"].lower() and nan["epochs_done"] == 1
    assert inf["status"] == "DIVERGED" and ("inf" in inf["reason"].lower() or "nan" in inf["reason"].lower())
    assert inf["epochs_done"] == 2
    assert oom["status"] == "ERROR" and "memory" in oom["reason"].lower()
    healthy = [r for t, r in rows.items() if t not in claims.values()]
    assert [r["status"] for r in healthy] == ["COMPLETED"]
    # the retried trial resumed from its checkpoint with the same parameters
    markers = attempt_markers(study_dir)[claims["raise"]]
    assert [m["start_epoch"] for m in markers] == [0, 1]
    # the searcher was told: Optuna holds the failures as FAIL, the healthy trial as COMPLETE
    study = load_study(StudyLocation.open(str(results), "faults"))
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in study.trials}
    assert states[claims["raise"]] == states[claims["oom"]] == "FAIL"
    assert states[claims["nan"]] == states[claims["inf"]] == "FAIL"
    assert "nan" in study.trials[[t.user_attrs["tune_trial_id"] for t in study.trials].index(claims["nan"])] \
        .user_attrs["diverged"].lower()
    assert_invariants(study_dir)

    # the failed trials are retried by --resume (the faults are not requested again): Optuna learns the new
    # outcome as a new trial with the same parameters (`retry_of`), the diverged ones stay as they were
    rc, out = studies.run("--name", "faults", "--results", str(results), "--resume")
    assert rc == 0, out[-3000:]
    rows = {r["trial_id"]: r for r in trials_rows(study_dir)}
    assert rows[claims["raise"]]["status"] == rows[claims["oom"]]["status"] == "COMPLETED"
    assert rows[claims["nan"]]["status"] == rows[claims["inf"]]["status"] == "DIVERGED"
    study = load_study(StudyLocation.open(str(results), "faults"))
    retries = {t.user_attrs["tune_trial_id"]: t for t in study.trials if "retry_of" in t.user_attrs}
    assert set(retries) == {claims["raise"], claims["oom"]}
    assert all(t.state.name == "COMPLETE" for t in retries.values())
    assert_invariants(study_dir)


@pytest.mark.chaos
def test_trials_stopped_by_the_scheduler_keep_their_rows_and_the_study_completes(studies, tmp_path):
    """grokking_asha stops weak trials at a rung that is not a checkpoint: their rows up to the stop are kept,
    they count as finished (PRUNED, Optuna told), and the study exits 0 instead of calling itself interrupted."""
    results = tmp_path / "results"
    rc, out = studies.run("--space", "smoke", "--name", "asha", "--trials", "6", "--epochs", "8",
                          "--checkpoint-every", "4", "--scheduler", "grokking_asha", "--grace-period", "1",
                          "--concurrency", "2", "--results", str(results))
    assert rc == 0, out[-3000:]
    study_dir = results / "asha"
    rows = trials_rows(study_dir)
    pruned = [r for r in rows if r["status"] == "PRUNED"]
    assert pruned and all("stopped by grokking_asha" in r["reason"] for r in pruned)
    assert all(r["epochs_done"] % 4 != 0 for r in pruned)       # stopped between two checkpoints
    study = load_study(StudyLocation.open(str(results), "asha"))
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in study.trials}
    assert all(states[r["trial_id"]] == "PRUNED" for r in pruned)
    assert_invariants(study_dir)                                   # PRUNED: a row for each epoch it trained
