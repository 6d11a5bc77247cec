"""End-to-end studies with real processes, a real local Ray, real signals, real Parquet and Optuna storage.

Each study runs as ``python -m study.run`` in its own session; a killed driver's leftovers are found by that
session id and ended by pid (never a global ``ray stop``: other Ray instances may run on this machine).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from study import optuna_store, recorder
from study.layout import StudyLocation
from study_processes import REPO, Studies, driver_env, kill_session, live_trials, wait_for

pytestmark = pytest.mark.slow


def _statuses(study_dir: Path) -> dict[str, str]:
    return {r["trial_id"]: r["status"] for r in live_trials(study_dir)}


def _assert_complete_study(study_dir: Path, trials: int, epochs: int) -> None:
    location = StudyLocation.open(str(study_dir.parent), study_dir.name)
    table = recorder.read_epochs(location)
    pairs = list(zip(table["trial_id"].to_pylist(), table["epoch"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == trials * epochs, "each (trial, epoch) must appear exactly once"
    trials_rows = pq.read_table(study_dir / "trials.parquet").to_pylist()
    assert len(trials_rows) == trials
    assert {r["status"] for r in trials_rows} == {"COMPLETED"}
    ids = {r["trial_id"] for r in trials_rows}
    assert {t for t, _ in pairs} == ids
    for trial_id in ids:
        assert sorted(e for t, e in pairs if t == trial_id) == list(range(epochs))
    study = optuna_store.load_study(location)
    by_tune_id = {t.user_attrs.get("tune_trial_id"): t for t in study.trials}
    assert ids <= set(by_tune_id), "Optuna's storage must hold every trial"
    assert all(by_tune_id[i].state.name == "COMPLETE" for i in ids)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")], "no zombie RUNNING trials"
    params = {json.dumps({k: v for k, v in r.items() if k.startswith("param_")}, sort_keys=True)
              for r in trials_rows}
    assert len(params) == trials, "each trial has its own parameters"


# --------------------------------------------------------------------------- the smoke study + the dashboard

@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """The issue's acceptance run, probing the Ray dashboard while it runs."""
    root = tmp_path_factory.mktemp("smoke")
    studies = Studies(root)
    driver = studies.start("--space", "smoke", "--trials", "6", "--epochs", "5", "--name", "s1",
                           "--results", str(root), "--checkpoint-every", "2")
    probe: dict[str, object] = {}
    try:
        url = wait_for(lambda: re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", driver.output()), 120,
                       "the dashboard URL", driver).group(1)
        with urllib.request.urlopen(url + "/", timeout=10) as response:
            probe["page"] = response.status
        token = (Path.home() / ".ray" / "auth_token").read_text().strip() \
            if (Path.home() / ".ray" / "auth_token").exists() else ""
        request = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            probe["api"] = json.loads(response.read())
        probe["running"] = driver.alive()
        probe["rc"] = driver.wait(timeout=400)
    finally:
        studies.cleanup()
    return root / "s1", driver, probe


def test_dashboard_answers_on_loopback_while_the_study_runs(smoke_study):
    _, driver, probe = smoke_study
    assert probe["running"] is True
    assert probe["page"] == 200
    assert "ray_version" in probe["api"]
    assert "ray get-auth-token" in driver.output()


def test_smoke_study_records_one_row_per_trial_and_epoch(smoke_study):
    study_dir, driver, probe = smoke_study
    assert probe["rc"] == 0, driver.output()[-3000:]
    _assert_complete_study(study_dir, trials=6, epochs=5)
    # OptunaSearch reports each epoch's metric at step = training_iteration = epochs done (1..5); cohort members
    # are reported the same way (tests/test_study_population.py)
    location = StudyLocation.open(str(study_dir.parent), study_dir.name)
    table = recorder.read_epochs(location, columns=["trial_id", "epoch", "train_Q"])
    curves: dict[str, dict[int, float]] = {}
    for trial_id, epoch, value in zip(*(table[c].to_pylist() for c in ("trial_id", "epoch", "train_Q"))):
        curves.setdefault(trial_id, {})[epoch + 1] = value
    for ot in optuna_store.load_study(location).trials:
        assert ot.intermediate_values == pytest.approx(curves[ot.user_attrs["tune_trial_id"]], rel=1e-12)
    assert "python -m analysis.report" in driver.output()
    record = json.loads((study_dir / "study.json").read_text())
    assert record["arguments"]["trials"] == 6 and record["schema_version"] == 1 and "ray" in record["versions"]
    status = subprocess.run([sys.executable, "-m", "study.status", str(study_dir)], cwd=REPO, env=driver_env(),
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "6 completed" in status.stdout and "30 epoch rows" in status.stdout


# ------------------------------------------------------------------------------- interrupt, then resume

def _running_with_checkpoint(study_dir: Path, epochs: int) -> str | None:
    """A RUNNING trial whose first checkpoint (and so its first part file) is on disk, once a trial finished."""
    statuses = _statuses(study_dir)
    if "COMPLETED" not in statuses.values():
        return None
    location = StudyLocation.open(str(study_dir.parent), study_dir.name)
    for trial_id, status in statuses.items():
        parts = recorder.list_parts(location, trial_id) if status == "RUNNING" else []
        if parts and parts[-1][1] < epochs - 4:   # checkpointed, with at least 4 of its epochs still to run
            return trial_id
    return None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_study_resumes_to_exactly_the_requested_trials(tmp_path, sig):
    # 24 epochs: a wide window to interrupt in (one trial finished, another checkpointed with >= 4 epochs to
    # run). The test used to miss it when the last trial started as the others ended: trials.parquet showed
    # it PENDING for its whole run (fixed in TrialsTableWriter.on_trial_start).
    trials, epochs = 3, 24
    study_dir = tmp_path / "k"
    studies = Studies(tmp_path)
    driver = studies.start("--space", "smoke", "--trials", str(trials), "--epochs", str(epochs), "--name", "k",
                           "--results", str(tmp_path), "--checkpoint-every", "2")
    try:
        wait_for(lambda: _running_with_checkpoint(study_dir, epochs), 300, "a finished and a checkpointed trial",
                 driver)
        continuing = _running_with_checkpoint(study_dir, epochs)
        time.sleep(0.3)  # let the driver register that checkpoint (Tune persists it before reporting it)
        if sig == signal.SIGKILL:
            os.killpg(driver.proc.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        else:
            os.kill(driver.proc.pid, signal.SIGINT)
            assert driver.wait(timeout=120) == 130, driver.output()[-3000:]
            assert "Study interrupted" in driver.output()
    finally:
        driver.kill_group()
    finished_before = {t for t, s in _statuses(study_dir).items() if s == "COMPLETED"}
    parts_before = recorder.list_parts(StudyLocation.open(str(tmp_path), "k"), continuing)
    stored_before = parts_before[-1][1] + 1 if parts_before else 0
    args = driver.resume_command()
    assert "--resume" in args
    plan = subprocess.run([sys.executable, "-m", "study.run", *args, "--dry-run"], cwd=REPO, env=driver_env(),
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"{continuing}" in plan.stdout and "skip" in plan.stdout
    second = studies.start(*args)
    try:
        assert second.wait(timeout=400) == 0, second.output()[-3000:]
    finally:
        second.kill_group()
    _assert_complete_study(study_dir, trials=trials, epochs=epochs)
    assert finished_before <= set(_statuses(study_dir))
    if continuing not in _statuses(study_dir):
        # only a SIGKILL can lose a trial: it started after Tune's last experiment snapshot, so the resumed
        # Tune never knew it; its rows are removed and its Optuna trial failed, and a new trial replaced it
        assert sig == signal.SIGKILL
        assert not (study_dir / "epochs" / f"trial_id={continuing}").exists()
        lost = [t for t in optuna_store.load_study(StudyLocation.open(str(tmp_path), "k")).trials
                if t.user_attrs.get("tune_trial_id") == continuing]
        assert len(lost) == 1 and lost[0].state.name == "FAIL" and "orphan_reason" in lost[0].user_attrs
        return
    table = recorder.read_epochs(StudyLocation.open(str(tmp_path), "k"))
    rows = [r for r in table.select(["trial_id", "epoch", "attempt"]).to_pylist() if r["trial_id"] == continuing]
    attempts = [r["attempt"] for r in sorted(rows, key=lambda r: r["epoch"])]
    # no older attempt's row ever follows a newer one (a restart replaces everything after its checkpoint)
    assert attempts == sorted(attempts), attempts
    if stored_before < epochs:
        # it was cut off: its last epochs come from a later attempt
        assert attempts[-1] >= 1, attempts
        if sig == signal.SIGINT and stored_before >= 4:
            # Ctrl-C makes Tune store its state first: the trial continued from a checkpoint, keeping its rows
            assert attempts[0] == 0, attempts


# ----------------------------------------------------------------------- joining a separately started cluster

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_study_joins_an_existing_cluster_through_address(tmp_path):
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={_free_port()}", "--num-cpus=2"],
                            cwd=REPO, env=driver_env(), stdout=open(tmp_path / "head.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(errors="replace"), 120,
                 "the Ray head")
        driver = Studies(tmp_path).start("--space", "smoke", "--trials", "2", "--epochs", "2", "--name", "c",
                                         "--results", f"file://{tmp_path}/shared", "--address", f"127.0.0.1:{port}")
        try:
            assert driver.wait(timeout=400) == 0, driver.output()[-3000:]
        finally:
            driver.kill_group()
        assert "--address" in driver.resume_command()
        assert f"Running on (joined) the Ray cluster at 127.0.0.1:{port}" in driver.output()
        _assert_complete_study(tmp_path / "shared" / "c", trials=2, epochs=2)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        kill_session(head.pid)
