"""Scenario 1: the driver is killed (SIGINT, SIGTERM, SIGKILL) at several moments — during start-up, mid-trial,
during a checkpoint, between trials — then resumed with the printed command; also killed twice in a row. After
the final resume the study holds exactly the requested trials and every invariant of `study.verify` holds."""
from __future__ import annotations

import signal
import time

import pytest

from chaoslib import assert_invariants, attempt_markers, part_files, trials_rows
from study_processes import STARTUP_TIMEOUT, wait_for

RUN_TIMEOUT = 420


def _args(results, name, *, trials=2, epochs=6, concurrency=2, every=2):
    return ["--space", "smoke", "--name", name, "--trials", str(trials), "--epochs", str(epochs),
            "--concurrency", str(concurrency), "--checkpoint-every", str(every), "--results", str(results)]


def _resume(results, name):
    return ["--name", name, "--results", str(results), "--resume"]


def _latest_state(study_dir) -> bytes:
    states = sorted((study_dir / "tune").glob("experiment_state-*.json"))
    return states[-1].read_bytes() if states else b""


def _checkpoint_recorded(study_dir) -> bool:
    """Ray Tune's experiment snapshot names a trial checkpoint (a resume can continue from it)."""
    return b"checkpoint_0000" in _latest_state(study_dir)


def _strike(driver, sig: int) -> bool:
    """Signal the driver, check how it ended; return whether it said there is a study to resume."""
    driver.signal(sig)
    rc = driver.wait(RUN_TIMEOUT)
    # an interrupted driver stops what it started; a SIGKILLed one cannot (its group is killed below)
    left = [] if sig == signal.SIGKILL else driver.session_left()
    driver.kill_group()
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        return True
    assert not left, f"still running after the driver exited: {left}"
    out = driver.output()
    assert rc == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    if "nothing was stored" in out:
        return False
    assert "--resume" in out, out[-3000:]
    return True


def _finish(studies, results, name, trials=2):
    rc, out = studies.run(*_resume(results, name), timeout=RUN_TIMEOUT)
    assert rc == 0, out[-4000:]
    study_dir = results / name
    assert len(trials_rows(study_dir)) == trials
    assert_invariants(study_dir)
    return study_dir


def _continued_from_checkpoint(study_dir) -> bool:
    return any(m.get("start_epoch", 0) > 0 for markers in attempt_markers(study_dir).values() for m in markers[1:])


@pytest.mark.chaos
@pytest.mark.parametrize("sig, moment", [(signal.SIGINT, "importing"), (signal.SIGTERM, "importing"),
                                         (signal.SIGINT, "ray-starting"), (signal.SIGTERM, "ray-starting"),
                                         (signal.SIGKILL, "ray-started")],
                         ids=["SIGINT-importing", "SIGTERM-importing", "SIGINT-ray-starting",
                              "SIGTERM-ray-starting", "SIGKILL-ray-started"])
def test_killed_during_start_up(studies, tmp_path, sig, moment):
    """``importing``: 1.5 s after launch (Python imports, Ray starting); ``ray-starting``: Ray's raylet is up
    (ray.init is still connecting); ``ray-started``: study.json is written (Ray is up, Tune not started).
    Whatever was stored, the printed next step finishes the study, and an interrupted driver leaves no Ray
    process running (an interrupted ray.init once left the node's agents behind)."""
    results = tmp_path / "results"
    args = _args(results, "startup")
    driver = studies.start(*args)
    if moment == "importing":
        time.sleep(1.5)
    elif moment == "ray-starting":
        wait_for(lambda: any("raylet" in cmd for cmd in driver.session_processes()), STARTUP_TIMEOUT,
                 "Ray's raylet", driver, 0.05)
    else:
        wait_for(lambda: (results / "startup" / "study.json").exists(), STARTUP_TIMEOUT, "study.json", driver,
                 0.05)
    stored = _strike(driver, sig)
    if stored:
        _finish(studies, results, "startup")
    else:   # interrupted before anything was stored: the same command starts the study
        rc, out = studies.run(*args, timeout=RUN_TIMEOUT)
        assert rc == 0, out[-4000:]
        assert_invariants(results / "startup")


@pytest.mark.chaos
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_mid_trial_resumes_from_the_last_checkpoint(studies, tmp_path, sig):
    results = tmp_path / "results"
    study_dir = results / "mid"
    driver = studies.start(*_args(results, "mid"))
    wait_for(lambda: _checkpoint_recorded(study_dir), STARTUP_TIMEOUT + 120, "a recorded checkpoint", driver)
    assert not any(r["status"] == "COMPLETED" for r in trials_rows(study_dir))
    _strike(driver, sig)
    _finish(studies, results, "mid")
    assert _continued_from_checkpoint(study_dir), attempt_markers(study_dir)


@pytest.mark.chaos
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_during_a_checkpoint(studies, tmp_path, sig):
    """The trial has written the part file of epochs 0-1 but not yet registered their checkpoint."""
    results = tmp_path / "results"
    study_dir = results / "ckpt"
    driver = studies.start(*_args(results, "ckpt"),
                           faults=[{"kind": "pause_checkpoint", "epoch": 2, "seconds": 600}])
    paused = wait_for(lambda: list((study_dir / ".faults").glob("paused-*")), STARTUP_TIMEOUT + 120,
                      "a trial paused inside its checkpoint", driver)
    trial_id = paused[0].name.split("-", 1)[1]
    assert any(p.parent.name == f"trial_id={trial_id}" for p in part_files(study_dir))
    _strike(driver, sig)
    _finish(studies, results, "ckpt")


@pytest.mark.chaos
def test_killed_between_trials(studies, tmp_path):
    results = tmp_path / "results"
    study_dir = results / "between"
    driver = studies.start(*_args(results, "between", trials=3, epochs=2, concurrency=1, every=1))
    wait_for(lambda: any(r["status"] == "COMPLETED" for r in trials_rows(study_dir)), STARTUP_TIMEOUT + 120,
             "the first trial to complete", driver, 0.05)
    _strike(driver, signal.SIGKILL)
    _finish(studies, results, "between", trials=3)


@pytest.mark.chaos
def test_killed_twice_in_a_row(studies, tmp_path):
    results = tmp_path / "results"
    study_dir = results / "twice"
    driver = studies.start(*_args(results, "twice"))
    wait_for(lambda: _checkpoint_recorded(study_dir), STARTUP_TIMEOUT + 120, "a recorded checkpoint", driver)
    _strike(driver, signal.SIGKILL)
    first_state = _latest_state(study_dir)
    parts_before = set(part_files(study_dir))
    driver = studies.start(*_resume(results, "twice"))
    # the resumed driver has taken its own snapshot and written new rows: strike again
    wait_for(lambda: _latest_state(study_dir) != first_state and _checkpoint_recorded(study_dir)
             and set(part_files(study_dir)) - parts_before, STARTUP_TIMEOUT + 120, "progress after the resume",
             driver)
    _strike(driver, signal.SIGKILL)
    _finish(studies, results, "twice")
    assert max(len(m) for m in attempt_markers(study_dir).values()) >= 2
