"""Scenario 4: corrupt or truncated files — a checkpoint, an epoch part file, the Optuna journal, trials.parquet —
are each detected and named in a clear message, then repaired from what is intact (damaged bytes kept aside) or
refused (non-zero exit, nothing changed); never silently dropped."""
from __future__ import annotations

import shutil
import signal

import pytest

from chaoslib import assert_invariants, attempt_markers, checkpoints, part_files, snapshot, trials_rows
from study_processes import REPO, STARTUP_TIMEOUT, Studies, driver_env, wait_for
from study.verify import verify

EXIT_USAGE = 2


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """One real, finished study (2 trials × 3 epochs); each test damages its own copy."""
    root = tmp_path_factory.mktemp("finished")
    manager = Studies(root)
    try:
        rc, out = manager.run("--space", "smoke", "--name", "done", "--trials", "2", "--epochs", "3",
                              "--checkpoint-every", "1", "--results", str(root / "results"), timeout=420)
    finally:
        manager.cleanup()
    assert rc == 0, out[-3000:]
    assert_invariants(root / "results" / "done")
    return root / "results" / "done"


@pytest.fixture
def damaged(finished_study, tmp_path):
    copy = tmp_path / "results" / "done"
    shutil.copytree(finished_study, copy)
    return copy


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _resume(studies, study_dir, timeout=420):
    return studies.run("--name", study_dir.name, "--results", str(study_dir.parent), "--resume", timeout=timeout)


def _status(studies_root, study_dir):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "study.status", str(study_dir)], cwd=REPO, env=driver_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.chaos
@pytest.mark.fast
def test_torn_epoch_part_is_named_and_the_resume_refused(studies, damaged):
    part = part_files(damaged)[1]
    _truncate(part)
    report = verify(str(damaged), complete=True)
    assert "files" in report.violated() and str(part) in report.text()
    status = _status(studies, damaged)
    assert status.returncode != 0 and str(part) in status.stderr, status.stderr
    before = snapshot(damaged)
    rc, out = _resume(studies, damaged)
    assert rc == EXIT_USAGE, out[-3000:]
    assert "unreadable epoch part" in out and str(part) in out
    assert snapshot(damaged) == before


@pytest.mark.chaos
@pytest.mark.fast
def test_corrupt_journal_line_is_named_and_the_resume_refused(studies, damaged):
    journal = damaged / "optuna.journal"
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2][: len(lines[2]) // 2]
    journal.write_bytes(b"\n".join(lines))
    report = verify(str(damaged), complete=True)
    assert "files" in report.violated() and "line 3" in report.text()
    before = snapshot(damaged)
    rc, out = _resume(studies, damaged)
    assert rc == EXIT_USAGE, out[-3000:]
    assert "corrupt at line 3" in out and str(journal) in out
    assert snapshot(damaged) == before


@pytest.mark.chaos
def test_torn_journal_tail_and_corrupt_trials_table_are_repaired(studies, damaged):
    journal = damaged / "optuna.journal"
    torn = b'{"op_code": 6, "worker_id": "dead", "trial_id": 1, "par'
    journal.write_bytes(journal.read_bytes() + torn)
    table = damaged / "trials.parquet"
    _truncate(table, 0.3)
    report = verify(str(damaged), complete=True)
    assert "torn line" in report.text() and str(table) in report.text()
    rc, out = _resume(studies, damaged)
    assert rc == 0, out[-4000:]
    assert "ended in a torn record" in out and "trials.parquet is unreadable" in out
    kept = list(damaged.glob("optuna.journal.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn      # the damaged bytes are kept, not dropped
    assert len(list(damaged.glob("trials.parquet.corrupt-*"))) == 1
    assert [r["status"] for r in trials_rows(damaged)] == ["COMPLETED", "COMPLETED"]   # rebuilt
    assert_invariants(damaged)


@pytest.mark.chaos
def test_corrupt_checkpoints_are_named_and_the_trial_continues_from_what_is_intact(studies, tmp_path):
    results = tmp_path / "results"
    study_dir = results / "ckpt"
    driver = studies.start("--space", "smoke", "--name", "ckpt", "--trials", "2", "--epochs", "6",
                           "--concurrency", "2", "--checkpoint-every", "1", "--results", str(results))
    wait_for(lambda: b"checkpoint_0000" in b"".join(p.read_bytes() for p in
                                                     (study_dir / "tune").glob("experiment_state-*.json")),
             STARTUP_TIMEOUT + 120, "a recorded checkpoint", driver)
    driver.signal(signal.SIGKILL)
    driver.wait(120)
    driver.kill_group()
    unfinished = {r["trial_id"] for r in trials_rows(study_dir) if r["status"] != "COMPLETED"}
    damaged = [c for c in checkpoints(study_dir) if c.parent.name.removeprefix("trial_") in unfinished]
    assert damaged
    for checkpoint in damaged:
        _truncate(checkpoint / "run" / "checkpoint.pt", 0.4)
    rc, out = _resume(studies, study_dir)
    assert rc == 0, out[-4000:]
    repairs = [line for markers in attempt_markers(study_dir).values() for m in markers
               for line in m.get("repairs", [])]
    assert any("is unreadable" in line for line in repairs), attempt_markers(study_dir)
    assert any("starts over" in line for line in repairs)
    assert "is unreadable" in out               # also printed where the user sees it
    report = assert_invariants(study_dir)
    assert any("is unreadable" in note for note in report.notes)
