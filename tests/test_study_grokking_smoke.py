"""A smoke-sized `grokking` study, as a real `python -m study.run` on a real local Ray: four short trials whose
sampled split kinds are all four kinds (the sampler's seed 11 draws them), each with held-out metrics; once a
trial per process, once as one cohort of four (members with different splits, training fractions and batch
sizes)."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from study import recorder
from study.layout import StudyLocation
from study_processes import Studies
from tvae import data

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("population", [1, 4])
def test_smoke_grokking_study_samples_every_split_kind(tmp_path, population):
    studies = Studies(tmp_path)
    try:
        rc, output = studies.run("--space", "grokking", "--name", "g", "--trials", "4", "--epochs", "4",
                                 "--set", "preset=tiny", "--seed", "11", "--concurrency", "2",
                                 "--population", str(population), "--results", str(tmp_path), timeout=400)
    finally:
        studies.cleanup()
    assert rc == 0, output[-4000:]
    trials = pq.read_table(tmp_path / "g" / "trials.parquet").to_pylist()
    assert {r["status"] for r in trials} == {"COMPLETED"}
    assert {r["param_split"] for r in trials} == set(data.SPLIT_KINDS)
    for r in trials:
        assert 0.05 <= r["param_train_fraction"] <= 0.9
        assert r["final_heldout_coverage"] is not None and r["final_heldout_Q"] is not None, r
    rows = recorder.read_epochs(StudyLocation.open(str(tmp_path), "g")).to_pylist()
    assert len(rows) == 4 * 4
    assert all(row["heldout_hierarchy_B"] is not None for row in rows)
