"""The GPU path: each epoch's steps replayed as one CUDA graph (skipped where no GPU is present)."""
import math

import pytest
import torch

from tvae import trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PHASES = {"preset": "tiny", "phases.structure_start": 2, "phases.geometry_start": 4}


def _train(cuda_graphs: bool, epochs: int = 6):
    run = trainer.make_run(PHASES, epochs=epochs, seed=0, device="cuda", cuda_graphs=cuda_graphs)
    return run, [run.train_epoch() for _ in range(epochs)]


def test_graph_replay_trains_like_eager_steps():
    graph_run, graph_rows = _train(True)
    eager_run, eager_rows = _train(False)
    assert graph_run.graphs is not None and eager_run.graphs is None
    # one capture per (phase, trainable modules, frozen encoders): coverage, structure, geometry, plus one per
    # homeostasis change the run may have made
    assert graph_run.graphs.captures >= 3
    for g, e in zip(graph_rows, eager_rows):
        assert g["phase"] == e["phase"]
        assert math.isfinite(g["loss"])
        # same recipe, same seed; random draws inside a graph may differ from eager ones: same scale of loss
        assert g["loss"] == pytest.approx(e["loss"], rel=0.25)
    # replayed epochs moved the weights (a graph that only recorded would leave them unchanged)
    assert graph_rows[-1]["update_ratio"] > 0


def test_learning_rates_reach_the_captured_optimiser():
    run, rows = _train(True, epochs=5)
    group = next(g for g in run.optimizer.param_groups if g["name"] == "proj_B")
    assert torch.is_tensor(group["lr"]) and group["lr"].device.type == "cuda"
    scale = run.cfg.optim.lr_scale_projections
    assert float(group["lr"]) == pytest.approx(rows[-1]["lr"] * scale, rel=1e-6)


def test_a_gpu_checkpoint_resumes_on_gpu_and_on_cpu(tmp_path):
    run, _ = _train(True, epochs=4)
    run.save(tmp_path)
    for device in ("cuda", "cpu"):
        resumed = trainer.load_run(tmp_path, device=device, epochs=6)
        rows = [resumed.train_epoch() for _ in range(2)]
        assert [r["epoch"] for r in rows] == [4, 5]
        assert all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.parametrize("graphs", [True, False])
def test_metrics_on_the_device_equal_the_host_ones(graphs):
    """The evaluation on the GPU (every metric in torch; with graphs, replayed as a CUDA graph) against the numpy
    metrics of the same embeddings; both splits, a frozen encoder's cached outputs included."""
    run = trainer.make_run(PHASES | {"data.train_fraction": 0.8}, epochs=5, seed=0, device="cuda",
                           cuda_graphs=graphs)
    for _ in range(5):
        row = run.train_epoch()                 # evaluates on the device (the second structure epoch: a replay)
        on_device = run._evaluate(row["phase"])          # again (a replay where graphs are on)
        with torch.inference_mode():                     # the numpy metrics of the same embeddings
            on_host = run._evaluate_on_host(row["phase"])
        assert on_device == pytest.approx({k: row[k] for k in on_device}, rel=1e-12, nan_ok=True)
        assert on_device.keys() == on_host.keys() and "heldout_Q" in on_device
        for key, value in on_device.items():
            assert value == pytest.approx(on_host[key], rel=1e-6, abs=1e-9, nan_ok=True), key
        for split in run.evals:             # a fraction of counts: exact (1.0 when every operation decodes)
            assert on_device[f"{split}_coverage"] == on_host[f"{split}_coverage"]
    if graphs:
        assert any(key[0] == "evaluation" for key in run.graphs._graphs)


@pytest.mark.parametrize("paths", [1, 2])
def test_radius_terms_on_the_device_equal_the_host_ones(paths):
    """The hand-written radius terms (and their gradient) on CUDA, against the same computation on the CPU."""
    from test_tvae_radius_terms import _step, _weights, _with_constants
    from tvae import radius_terms

    raw, levels = _step(dtype=torch.float32)
    w = _weights(zero=True)
    out = {}
    for device in ("cpu", "cuda"):
        dev_levels = radius_terms.Levels(*(t.to(device) for t in (levels.targets, levels.radial_weights,
                                                                    levels.sep_lo, levels.sep_hi)))
        step = _with_constants({k: t.to(device) for k, t in raw.items()}, dev_levels, w)
        path_weights = torch.tensor([0.7, 1.0][-paths:], device=device)
        r = (torch.rand(paths, 96, generator=torch.Generator().manual_seed(1)) * 3).to(device).requires_grad_()
        terms = radius_terms.terms(r, step, w, path_weights, dev_levels)
        grad, = torch.autograd.grad(terms, r, torch.linspace(0.5, 1.5, 6, device=device))
        out[device] = (terms.cpu(), grad.cpu())
    assert torch.allclose(out["cuda"][0], out["cpu"][0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(out["cuda"][1], out["cpu"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("graphs", [False, True])
def test_two_streams_train_like_one(graphs):
    """The A and B paths of a step on two streams (the default) against both on one: the same random draws in
    the same order, the same kernels; only GPU atomics may reorder sums."""
    rows = {}
    for streams in (2, 1):
        run = trainer.make_run(PHASES, epochs=5, seed=0, device="cuda", cuda_graphs=graphs,
                               two_streams=None if streams == 2 else False)
        assert (run.side_stream is not None) == (streams == 2)     # two streams: the GPU's default
        rows[streams] = [run.train_epoch() for _ in range(5)]
    for two, one in zip(rows[2], rows[1]):
        assert two["phase"] == one["phase"]
        for key in ("loss", "grad_norm", "weight_norm", "train_hierarchy_B", "train_coverage", "train_dist_corr"):
            assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), (two["epoch"], key)


def test_population_bench_reports_gpu_memory_per_member():
    import json
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-m", "tvae.bench", "--device", "cuda", "--preset", "tiny", "--epochs", "2",
                        "--population", "1,4"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()[-2:]]
    assert all(x["device"] == "cuda" and x["epoch_gpu_mib_per_member"] > 0 for x in lines)
