"""Scenario 2: a worker node of a real multi-node Ray cluster (`ray.cluster_utils.Cluster`, all nodes on this
machine) is lost mid-trial: the trial continues from its last checkpoint on another node, and every invariant
holds."""
from __future__ import annotations

import os

import pytest

from chaoslib import assert_invariants, attempt_markers, part_files, trials_rows
from study_processes import STARTUP_TIMEOUT, wait_for


@pytest.fixture
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    # the head runs the driver only (no CPU for trials); two one-CPU workers run the trials
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [made.add_node(num_cpus=1) for _ in range(2)]
        made.wait_for_nodes()
        yield made, workers
    finally:
        made.shutdown()


@pytest.mark.chaos
def test_lost_worker_node_mid_trial_continues_from_its_checkpoint_elsewhere(studies, tmp_path, cluster):
    made, workers = cluster
    results = tmp_path / "results"
    study_dir = results / "nodes"
    driver = studies.start("--space", "smoke", "--name", "nodes", "--trials", "1", "--epochs", "8",
                           "--concurrency", "1", "--checkpoint-every", "1", "--max-failures", "3",
                           "--address", made.address, "--results", str(results),
                           # this in-process cluster runs without token authentication; study.cluster would
                           # otherwise assume token mode because ~/.ray/auth_token may exist on this machine
                           env={"RAY_AUTH_MODE": "disabled"})
    # the trial has checkpointed at least twice: a good moment to pull its node out
    wait_for(lambda: len(part_files(study_dir)) >= 2, STARTUP_TIMEOUT + 120, "two checkpoints of the trial",
             driver)
    (trial_id, markers), = attempt_markers(study_dir).items()
    lost = [w for w in workers if w.node_id == markers[0]["node_id"]]
    assert lost, f"the trial ran on {markers[0]['node_id']}, not on a worker node"
    made.remove_node(lost[0], allow_graceful=False)
    rc = driver.wait(420)
    assert rc == 0, driver.output()[-4000:]
    (row,) = trials_rows(study_dir)
    assert row["status"] == "COMPLETED" and row["attempts"] >= 2
    markers = attempt_markers(study_dir)[trial_id]
    assert markers[-1]["node_id"] != markers[0]["node_id"]        # it moved to the surviving node
    assert markers[-1]["start_epoch"] >= 1 and markers[-1]["from_checkpoint"]   # ... from its checkpoint
    assert_invariants(study_dir)
