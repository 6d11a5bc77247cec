"""Scenario 6: readers — `study.status`, `analysis.scan`, `analysis.report` and `study.verify` (which also reads the
Optuna journal, as a dashboard would) — run again and again while the study writes: none crashes, none sees a
partial row or a torn file, and none gets in the writer's way."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chaoslib import assert_invariants, part_files
from study_processes import REPO, STARTUP_TIMEOUT, driver_env, wait_for
from study.verify import verify


def _tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=driver_env(), capture_output=True, text=True,
                          timeout=300)


def _check_rows(study_dir) -> int:
    import analysis
    import polars as pl

    frame = analysis.scan(str(study_dir)).select("study", "trial_id", "epoch", "attempt", "train_Q").collect()
    assert frame.select(pl.col("study", "trial_id", "epoch").is_null().any()).row(0) == (False, False, False)
    per_trial = frame.group_by("trial_id").agg(pl.col("epoch").sort().alias("epochs"))
    for trial_id, epochs in per_trial.iter_rows():
        assert epochs == list(range(len(epochs))), f"trial {trial_id}: epochs {epochs}"
    return frame.height


@pytest.mark.chaos
def test_readers_never_crash_nor_see_partial_rows_while_the_study_writes(studies, tmp_path):
    results = tmp_path / "results"
    study_dir = results / "busy"
    driver = studies.start("--space", "smoke", "--name", "busy", "--trials", "3", "--epochs", "8",
                           "--concurrency", "2", "--checkpoint-every", "1", "--results", str(results))
    wait_for(lambda: part_files(study_dir), STARTUP_TIMEOUT + 120, "the first epoch rows", driver)
    seen_rows, reads, reported = [], 0, False
    while driver.alive():
        report = verify(str(study_dir))
        assert report.ok, report.text()
        seen_rows.append(_check_rows(study_dir))
        if reads % 3 == 0:
            status = _tool("study.status", str(study_dir), "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["rows"] >= seen_rows[0]
        if not reported and driver.alive():
            out = _tool("analysis.report", str(study_dir), "--out", str(tmp_path / "report"))
            assert out.returncode == 0, out.stderr[-3000:]
            assert (tmp_path / "report" / "index.html").exists() or list((tmp_path / "report").glob("*.html"))
            reported = True
        reads += 1
    assert driver.wait(60) == 0, driver.output()[-4000:]
    assert reads >= 3, f"only {reads} read rounds happened while the study ran"
    assert seen_rows == sorted(seen_rows), seen_rows       # rows only ever appear, never vanish
    assert _check_rows(study_dir) == 3 * 8
    assert_invariants(study_dir)
