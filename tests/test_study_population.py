"""Studies whose Ray Tune trials are cohorts (``study.run --population K``): real processes, a real local Ray,
real signals, real Parquet and Optuna storage. Each member is a study trial of its own: its rows, its status, its
Optuna trial, its early stopping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from study import optuna_store, recorder, verify
from study.layout import StudyLocation
from study.member_stopping import RUNGS_DIR, MemberStopping, cutoff
from study_processes import REPO, Studies, driver_env, live_trials, wait_for

pytestmark = pytest.mark.slow


def _location(study_dir: Path) -> StudyLocation:
    return StudyLocation.open(str(study_dir.parent), study_dir.name)


def _trials(study_dir: Path) -> dict[str, dict]:
    return {r["trial_id"]: r for r in live_trials(study_dir)}


def _rows(study_dir: Path) -> dict[str, list[int]]:
    table = recorder.read_epochs(_location(study_dir))
    out: dict[str, list[int]] = {}
    for trial_id, epoch in zip(table["trial_id"].to_pylist(), table["epoch"].to_pylist()):
        out.setdefault(trial_id, []).append(epoch)
    return out


def _optuna(study_dir: Path) -> dict[str, object]:
    study = optuna_store.load_study(_location(study_dir))
    return {t.user_attrs.get("tune_trial_id"): t for t in study.trials}


def _curves(study_dir: Path, metric: str = "train_Q") -> dict[str, dict[int, float]]:
    """{trial id: {epochs done: the metric of that epoch's row}}: the steps and values Optuna's intermediate
    values carry (OptunaSearch reports a single trial at its training_iteration, the epochs done)."""
    table = recorder.read_epochs(_location(study_dir), columns=["trial_id", "epoch", metric])
    out: dict[str, dict[int, float]] = {}
    for trial_id, epoch, value in zip(*(table[c].to_pylist() for c in ("trial_id", "epoch", metric))):
        out.setdefault(trial_id, {})[epoch + 1] = value
    return out


def _assert_complete(study_dir: Path, trials: int, epochs: int, population: int, same_values: bool = True) -> None:
    """``same_values``: each member's intermediate values are its rows' metric (a cohort re-run after kill -9 may
    differ in the last bits from what Optuna kept of the first run: then only the steps are compared)."""
    rows = _rows(study_dir)
    assert sum(len(e) for e in rows.values()) == trials * epochs
    assert all(sorted(e) == list(range(epochs)) for e in rows.values()), "each (trial, epoch) exactly once"
    table = _trials(study_dir)
    assert set(table) == set(rows) and len(table) == trials
    assert {r["status"] for r in table.values()} == {"COMPLETED"}
    cohorts = {trial_id.rpartition("-m")[0] for trial_id in table}
    assert len(cohorts) == -(-trials // population), "the members share Ray Tune trials"
    assert {p.name for p in (study_dir / "tune").glob("trial_*")} == {f"trial_{c}" for c in cohorts}
    optuna_trials = _optuna(study_dir)
    curves = _curves(study_dir)
    for trial_id, row in table.items():
        ot = optuna_trials[trial_id]
        assert ot.state.name == "COMPLETE" and ot.value == pytest.approx(row["final_train_Q"], rel=1e-12)
        assert sorted(ot.intermediate_values) == list(range(1, epochs + 1)), "one value per epoch it trained"
        if same_values:
            assert ot.intermediate_values == pytest.approx(curves[trial_id], rel=1e-12)
    assert len({ot.number for ot in optuna_trials.values()}) == trials
    report = verify.verify(str(study_dir), complete=True)
    assert report.ok, report.text()


# ------------------------------------------------------------------------------------------ the smoke study

def test_a_study_of_cohorts_gives_each_member_its_rows_status_and_optuna_trial(tmp_path):
    studies = Studies(tmp_path)
    try:
        rc, output = studies.run("--space", "smoke", "--trials", "8", "--population", "4", "--epochs", "8",
                                 "--name", "c", "--results", str(tmp_path), "--checkpoint-every", "3", timeout=500)
    finally:
        studies.cleanup()
    assert rc == 0, output[-3000:]
    _assert_complete(tmp_path / "c", trials=8, epochs=8, population=4)
    assert json.loads((tmp_path / "c" / "study.json").read_text())["arguments"]["population"] == 4
    status = subprocess.run([sys.executable, "-m", "study.status", str(tmp_path / "c")], cwd=REPO, env=driver_env(),
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "8 completed" in status.stdout and "64 epoch rows" in status.stdout


# ------------------------------------------------------------------------------------------ kill -9, resume

def _checkpointed(study_dir: Path) -> bool:
    """Some member has rows on disk (its cohort checkpointed) and no cohort has finished yet."""
    location = _location(study_dir)
    ids = recorder.trial_ids(location) if (study_dir / "epochs").exists() else []
    return any(recorder.list_parts(location, t) for t in ids)


def test_a_study_of_cohorts_killed_with_sigkill_resumes_to_every_row_once(tmp_path):
    trials, epochs = 8, 18
    study_dir = tmp_path / "k"
    studies = Studies(tmp_path)
    driver = studies.start("--space", "smoke", "--trials", str(trials), "--population", "4", "--epochs",
                           str(epochs), "--name", "k", "--results", str(tmp_path), "--checkpoint-every", "3")
    try:
        wait_for(lambda: _checkpointed(study_dir), 300, "a cohort's first checkpoint", driver)
        os.killpg(driver.proc.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill_group()
    rows_before = _rows(study_dir)
    assert rows_before and sum(len(e) for e in rows_before.values()) < trials * epochs, "killed mid-study"
    second = studies.start(*driver.resume_command())
    try:
        assert second.wait(timeout=500) == 0, second.output()[-3000:]
    finally:
        second.kill_group()
    _assert_complete(study_dir, trials=trials, epochs=epochs, population=4, same_values=False)
    optuna_trials = _optuna(study_dir)
    lost = [t for t in optuna_trials if t not in _trials(study_dir)]
    for trial_id in lost:   # a cohort started after Tune's last snapshot: its members failed, never COMPLETE
        assert optuna_trials[trial_id].state.name == "FAIL" and "orphan_reason" in optuna_trials[trial_id].user_attrs


# ------------------------------------------------------------------ per-member early stopping, divergence

def test_members_stop_early_or_diverge_alone_and_optuna_is_told_each(tmp_path):
    """grokking_asha with its grace at epoch 2 (the structure phase from epoch 1), one cohort at a time; one member's parameters become NaN at
    epoch 1 (a real non-finite loss follows): it alone is DIVERGED, members below the rung cutoff are PRUNED
    after 2 epochs, the rest run all 6. Each member's Optuna trial has an intermediate value per epoch it
    trained: a PRUNED one up to its rung (Optuna's value of a PRUNED trial is its last intermediate value)."""
    studies = Studies(tmp_path)
    try:
        rc, output = studies.run("--space", "smoke", "--trials", "8", "--population", "4", "--epochs", "6",
                                 "--concurrency", "1", "--scheduler", "grokking_asha", "--grace-period", "2",
                                 "--set", "phases.structure_start=1",   # the searched keys act from epoch 1
                                 "--name", "s", "--results", str(tmp_path), "--checkpoint-every", "2",
                                 faults={"kind": "nan", "epoch": 1, "trials": 1}, timeout=500)
    finally:
        studies.cleanup()
    study_dir = tmp_path / "s"
    table, rows, optuna_trials, curves = _trials(study_dir), _rows(study_dir), _optuna(study_dir), _curves(study_dir)
    statuses = {t: r["status"] for t, r in table.items()}
    assert rc == 0, output[-3000:]
    assert len(table) == 8 and set(statuses.values()) == {"COMPLETED", "PRUNED", "DIVERGED"}, statuses
    diverged = [t for t, s in statuses.items() if s == "DIVERGED"]
    assert len(diverged) == 1 and sorted(rows[diverged[0]]) == [0]
    assert "non-finite" in table[diverged[0]]["reason"] or "nan" in table[diverged[0]]["reason"].lower()
    assert optuna_trials[diverged[0]].state.name == "FAIL" and "diverged" in optuna_trials[diverged[0]].user_attrs
    for trial_id in table:   # steps 1..epochs done, each the metric of that epoch's row; the diverged one: its 1
        assert optuna_trials[trial_id].intermediate_values == pytest.approx(curves[trial_id], rel=1e-12), trial_id
    rung = {p.stem: json.loads(p.read_text())["value"] for p in (study_dir / RUNGS_DIR / "epoch=2").glob("*.json")}
    for trial_id, status in statuses.items():
        if status == "PRUNED":
            assert sorted(rows[trial_id]) == [0, 1] and table[trial_id]["epochs_done"] == 2
            assert "grokking_asha" in table[trial_id]["reason"]
            assert rung[trial_id] < max(v for t, v in rung.items() if t != trial_id)
            assert optuna_trials[trial_id].state.name == "PRUNED"
            assert sorted(optuna_trials[trial_id].intermediate_values) == [1, 2]
            assert optuna_trials[trial_id].intermediate_values[2] == pytest.approx(rung[trial_id], rel=1e-12)
            assert optuna_trials[trial_id].value == pytest.approx(rung[trial_id], rel=1e-12)
        elif status == "COMPLETED":
            assert sorted(rows[trial_id]) == list(range(6))
            assert optuna_trials[trial_id].state.name == "COMPLETE"
            assert sorted(optuna_trials[trial_id].intermediate_values) == list(range(1, 7))
    assert set(rung) == set(statuses) - set(diverged), "every member that reached the rung recorded its value"
    report = verify.verify(str(study_dir), complete=True)
    assert report.ok, report.text()


def test_the_member_rule_is_grokking_safe_and_decides_once(tmp_path):
    location = StudyLocation.open(str(tmp_path), "rule")
    rule = MemberStopping(rungs=(4, 12), metric="heldout_Q", mode="max", memorised_when=("train_Q", 1.7))
    assert rule.decide(location, "a", 3, 0.1, memorised=False) is None          # not a rung: never stopped
    assert rule.decide(location, "a", 4, 1.0, memorised=False) is None          # first at the rung: goes on
    assert rule.decide(location, "b", 4, 2.0, memorised=False) is None
    assert rule.decide(location, "c", 4, 0.5, memorised=True) is None           # memorised: never stopped
    reason = rule.decide(location, "d", 4, 0.9, memorised=False)
    assert reason and "heldout_Q" in reason and "epoch 4" in reason
    assert rule.decide(location, "d", 4, 5.0, memorised=False) == reason        # a restart: the same decision
    assert rule.memorised({"train_Q": 1.8}) and not rule.memorised({"train_Q": 1.6})
    assert cutoff([1.0, 2.0, 0.5], "max") == pytest.approx(1.0 + (2.0 - 1.0) * (4 / 3 - 1))
    assert cutoff([], "max") is None and cutoff([float("nan")], "min") is None


def test_population_is_refused_where_there_is_no_cohort_engine_or_it_is_not_positive(tmp_path):
    for args, message in ((["--space", "modular_addition", "--population", "4"], "no cohort engine"),
                          (["--space", "smoke", "--population", "0"], "--population must be")):
        result = subprocess.run([sys.executable, "-m", "study.run", *args, "--name", "x", "--results",
                                 str(tmp_path), "--dry-run"], cwd=REPO, env=driver_env(), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ cohorts from a pool
def test_pick_cohort_takes_the_oldest_then_its_batch_sizes():
    from tvae.cohort.members import pick_cohort

    shapes = [(128, 64), (256, 512), (128, 64), (128, 128), (256, 512), (256, 64), (128, 64)]
    candidates = [{"coverage.batch_size": c, "data.batch_size": s} for c, s in shapes]
    assert pick_cohort(candidates, 4) == [0, 2, 6, 5]      # the oldest, its shape, then its structure batch
    assert pick_cohort(candidates[1:], 2) == [0, 3]
    assert pick_cohort([{}, {}, {}], 2) == [0, 1]           # no batch sizes searched: ask order
    assert pick_cohort([], 3) == []


def test_cohorts_are_picked_from_a_pool_of_asked_trials_and_the_pool_survives_a_restore(tmp_path):
    """The cohort searcher on a real Optuna journal (`grokking`, whose trials differ in batch sizes): every asked
    trial trains in exactly one cohort, tagged with its member id; cohorts hold fewer distinct batch sizes than
    the ask order would give; a searcher restored from its saved state trains the pooled trials, asking none again."""
    from search_spaces import get as get_space
    from study.config import StudyConfig
    from study.tune_driver import CohortSearch, MEMBERS_KEY, make_searcher
    from tvae.cohort.members import STEP_SHAPE_KEYS

    trials, population = 12, 4
    config = StudyConfig(space="grokking", name="pool", trials=trials, epochs=60, population=population,
                         results=str(tmp_path))
    location = StudyLocation.open(str(tmp_path), "pool")
    location.makedirs(location.path)
    space = get_space("grokking")
    make_searcher(space, config, location)
    first = CohortSearch("grokking", location, trials, population, config.seed)
    cohorts = {"a": first.suggest("a")[MEMBERS_KEY]}
    assert first.asked == 2 * population and len(first.pool) == population
    first.save(str(tmp_path / "searcher.pkl"))
    second = CohortSearch("grokking", location, trials, population, config.seed)
    second.restore(str(tmp_path / "searcher.pkl"))
    cohorts["b"] = second.suggest("b")[MEMBERS_KEY]
    cohorts["c"] = second.suggest("c")[MEMBERS_KEY]
    assert second.suggest("d") == CohortSearch.FINISHED and second.asked == trials
    numbers = [m["number"] for members in cohorts.values() for m in members]
    assert sorted(numbers) == list(range(trials)), "each asked trial in exactly one cohort"
    assert cohorts["a"][0]["number"] == 0 and cohorts["b"][0]["number"] == min(numbers[population:])
    study = optuna_store.load_study(location)
    tags = {t.number: t.user_attrs.get("tune_trial_id") for t in study.trials}
    assert {m["number"]: m["trial_id"] for c in cohorts.values() for m in c} == tags
    shape = lambda o: tuple(o.get(k) for k in STEP_SHAPE_KEYS)  # noqa: E731
    by_number = {m["number"]: shape(m["overrides"]) for c in cohorts.values() for m in c}
    picked = sum(len({shape(m["overrides"]) for m in c}) for c in cohorts.values())
    in_order = sum(len({by_number[n] for n in range(i, i + population)}) for i in range(0, trials, population))
    assert picked <= in_order and len(set(by_number.values())) > 1


def test_a_restored_cohort_searcher_continues_its_sampler_instead_of_drawing_the_first_trials_again(tmp_path):
    """Two studies of the same seed, one searcher uninterrupted, the other saved and restored after its first
    cohort: the restored one draws what the uninterrupted one draws next (a sampler re-seeded on restore would
    repeat the study's first parameters)."""
    from search_spaces import get as get_space
    from study.config import StudyConfig
    from study.tune_driver import CohortSearch, MEMBERS_KEY, make_searcher

    def searcher(name):
        config = StudyConfig(space="grokking", name=name, trials=8, epochs=60, population=2, results=str(tmp_path))
        location = StudyLocation.open(str(tmp_path), name)
        location.makedirs(location.path)
        make_searcher(get_space("grokking"), config, location)
        return CohortSearch("grokking", location, 8, 2, config.seed), location

    straight, _ = searcher("straight")
    interrupted, location = searcher("interrupted")
    params = lambda members: [m["params"] for m in members]  # noqa: E731
    assert params(straight.suggest("a")[MEMBERS_KEY]) == params(interrupted.suggest("a")[MEMBERS_KEY])
    interrupted.save(str(tmp_path / "searcher.pkl"))
    restored = CohortSearch("grokking", location, 8, 2, 0)
    restored.restore(str(tmp_path / "searcher.pkl"))
    for cohort in ("b", "c"):        # "c" needs new asks: the pool held two cohorts' worth after "a"
        assert params(restored.suggest(cohort)[MEMBERS_KEY]) == params(straight.suggest(cohort)[MEMBERS_KEY])
    drawn = [json.dumps(t.params, sort_keys=True) for t in optuna_store.load_study(location).trials]
    assert len(drawn) == 8 and len(set(drawn)) == 8, "no parameters drawn twice"
