"""A real multi-node Ray cluster: a head and two worker nodes started with `ray start` as separate processes on
loopback (each with its own resources and temporary directory, the cluster's own token), `study.run --address`,
and one worker node killed mid-trial: the trial continues from its checkpoint on the other worker, nothing is
lost or duplicated (`study.verify --complete`), the head stays up."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ray_nodes import LocalCluster
from study_processes import STARTUP_TIMEOUT, Studies, driver_env, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture
def cluster(tmp_path):
    made = LocalCluster(tmp_path)
    try:
        made.start_head(num_cpus=0)          # the head runs the driver only: trials go to the workers
        made.add_worker("w1")
        made.add_worker("w2")
        yield made
    finally:
        made.stop()


def _markers(study_dir, trial_id):
    directory = study_dir / "attempts" / f"trial_id={trial_id}"
    return [json.loads(p.read_text()) for p in sorted(directory.iterdir(), key=lambda p: int(p.name))
            if p.name.isdigit() and p.stat().st_size]


def test_lost_worker_node_mid_trial_continues_on_the_other_worker(cluster, tmp_path):
    results = tmp_path / "results"
    study_dir = results / "nodes"
    studies = Studies(tmp_path)
    try:
        driver = studies.start("--space", "smoke", "--name", "nodes", "--trials", "1", "--epochs", "10",
                               "--concurrency", "1", "--checkpoint-every", "1", "--max-failures", "3",
                               "--address", cluster.address, "--results", str(results), env=cluster.env())
        wait_for(lambda: len(list(study_dir.glob("epochs/trial_id=*/part-*.parquet"))) >= 2,
                 STARTUP_TIMEOUT + 120, "two checkpoints of the trial", driver)
        (trial_dir,) = (study_dir / "attempts").glob("trial_id=*")
        trial_id = trial_dir.name.split("=", 1)[1]
        first = _markers(study_dir, trial_id)[0]
        node = cluster.node_of(first["pid"])
        assert node is not None and node.name in ("w1", "w2"), f"the trial ran on {node and node.name}"
        node.kill()
        rc = driver.wait(420)
        assert rc == 0, driver.output()[-4000:]
    finally:
        studies.cleanup()
    assert cluster.nodes[0].proc.poll() is None, "the head must stay up"
    markers = _markers(study_dir, trial_id)
    # the head has no CPU for trials: another node id than the lost one is the other worker
    assert markers[-1]["node_id"] != first["node_id"], "the trial must move to the other worker"
    assert markers[-1]["start_epoch"] >= 1 and markers[-1]["from_checkpoint"], markers[-1]
    out = subprocess.run([sys.executable, "-m", "study.verify", str(study_dir), "--complete"], env=driver_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_driver_without_the_clusters_token_is_refused(cluster, tmp_path):
    code = ("import ray, sys; ray.init(address=sys.argv[1]); print(len(ray.nodes()))")
    env = driver_env({**cluster.env(), "RAY_AUTH_TOKEN": "0" * 64})
    refused = subprocess.run([sys.executable, "-c", code, cluster.address], env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0, refused.stdout
    assert "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]
    joined = subprocess.run([sys.executable, "-c", code, cluster.address], env=driver_env(cluster.env()),
                            capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0 and joined.stdout.strip().splitlines()[-1] == "3", joined.stderr[-2000:]
