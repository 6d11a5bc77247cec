"""End-to-end trainer tests on the `tiny` preset (full data, few large batches, few epochs)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tvae import trainer
from tvae.tasks import DivergedError, Run, load_run, make_run

ROOT = Path(__file__).resolve().parents[1]
TINY = {"preset": "tiny"}


def _metrics(row):
    return {k: v for k, v in row.items() if k not in ("epoch_seconds", "wall_time")}


# the tiny preset with a structure and a geometry epoch right after the first coverage epoch
TINY_ALL_PHASES = TINY | {"phases.structure_start": 1, "phases.geometry_start": 2}


def _assert_trains_alike(a, b, epochs=3):
    """Runs ``a`` and ``b`` give bitwise the same rows, epoch by epoch."""
    for _ in range(epochs):
        assert _metrics(a.train_epoch()) == _metrics(b.train_epoch())


def test_phases_switch_at_their_epochs_and_rows_follow_the_schema():
    run = make_run("ternary_vae", TINY | {"phases.structure_start": 2, "phases.geometry_start": 3}, epochs=4, seed=0)
    assert isinstance(run, Run)
    rows = [run.train_epoch() for _ in range(4)]
    assert [r["phase"] for r in rows] == ["coverage", "coverage", "structure", "geometry"]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    # coverage phase trains the A path; afterwards encoder A and the decoder are frozen
    assert rows[0]["frozen_encoder_A"] is False and rows[0]["frozen_decoder"] is False
    assert rows[2]["frozen_encoder_A"] is True and rows[2]["frozen_decoder"] is True
    assert rows[2]["frozen_encoder_B"] is False
    # losses: KL/recon only in coverage; the geodesic term joins in geometry
    assert rows[1]["loss_hierarchy"] == 0.0 and rows[2]["loss_hierarchy"] > 0
    assert rows[2]["loss_geodesic"] == 0.0 and rows[3]["loss_geodesic"] > 0
    # encoder B is tied to A in the coverage phase, then starts as its copy
    assert rows[1]["train_hierarchy_B"] == rows[1]["train_hierarchy_A"]
    for row in rows:
        for name in trainer.SPLIT_METRICS:
            assert isinstance(row[f"train_{name}"], float)
        assert not any(k.startswith("heldout_") for k in row)
        assert row["train_Q"] == pytest.approx(row["train_dist_corr"] + 1.5 * abs(row["train_hierarchy_B"]))
        assert 0.0 <= row["train_coverage"] <= 1.0 and row["lr"] > 0 and row["curvature"] == 1.0
    summary = run.summary()
    assert summary["best_train_Q"] == max(r["train_Q"] for r in rows)


def test_heldout_metrics_when_train_fraction_below_one():
    run = make_run("ternary_vae", TINY | {"data.train_fraction": 0.8}, epochs=3, seed=0)
    rows = [run.train_epoch() for _ in range(3)]
    for name in trainer.SPLIT_METRICS:
        assert f"heldout_{name}" in rows[-1]
    assert len(run.split.heldout) == 3936
    assert math.isfinite(rows[-1]["heldout_hierarchy_B"]) and math.isnan(rows[-1]["heldout_r_v9"])
    assert rows[-1]["heldout_hierarchy_B"] != rows[-1]["train_hierarchy_B"]
    # the split does not depend on the trial seed
    other = make_run("ternary_vae", TINY | {"data.train_fraction": 0.8}, epochs=3, seed=5)
    assert other.split.heldout.tolist() == run.split.heldout.tolist()


# second case: homeostasis freezes encoder B at the first structure epoch, so the resumed epochs use the
# cached outputs of a frozen encoder
FREEZE_B = {"homeostasis.plateau_threshold": 10.0, "homeostasis.plateau_patience": 1, "homeostasis.window": 1,
            "homeostasis.warmup_epochs": 0, "homeostasis.hysteresis_epochs": 1}


@pytest.mark.parametrize("extra", [{}, FREEZE_B], ids=["default", "encoder_B_frozen"])
def test_resume_is_exact(tmp_path, extra):
    straight = make_run("ternary_vae", TINY | extra, epochs=5, seed=1)
    rows_straight = [straight.train_epoch() for _ in range(5)]
    if extra:
        assert rows_straight[2]["frozen_encoder_B"] is True    # frozen when the run is saved after epoch 3

    first = make_run("ternary_vae", TINY | extra, epochs=5, seed=1)
    rows = [first.train_epoch() for _ in range(3)]
    first.save(tmp_path)
    del first
    resumed = load_run("ternary_vae", tmp_path)
    assert resumed.epoch == 3
    rows += [resumed.train_epoch() for _ in range(2)]
    assert [_metrics(r) for r in rows] == [_metrics(r) for r in rows_straight]
    assert resumed.summary()["best_train_Q"] == straight.summary()["best_train_Q"]


def test_non_finite_loss_raises_diverged_error():
    run = make_run("ternary_vae", TINY | {"coverage.lr": 1e30}, epochs=3, seed=0)
    with pytest.raises(DivergedError, match=r"epoch \d+: loss term"):
        for _ in range(3):
            run.train_epoch()


def test_cli_resume_gives_the_same_rows_as_a_straight_run(tmp_path):
    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "tvae.train", "--quiet", *args], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    cli("--preset", "tiny", "--epochs", "4", "--out", str(tmp_path / "a"))
    cli("--preset", "tiny", "--epochs", "2", "--out", str(tmp_path / "b"), "--checkpoint-every", "2")
    cli("--out", str(tmp_path / "b"), "--resume", "--epochs", "4")
    a = pq.read_table(tmp_path / "a" / "epochs.parquet").drop(["epoch_seconds", "wall_time"]).to_pylist()
    b = pq.read_table(tmp_path / "b" / "epochs.parquet").drop(["epoch_seconds", "wall_time"]).to_pylist()
    assert a == b and [r["epoch"] for r in a] == [0, 1, 2, 3]
    final = json.loads((tmp_path / "b" / "final.json").read_text())
    assert final["epoch"] == 3 and final["status"] == "completed" and "best_train_Q" in final
    assert (tmp_path / "b" / "config.yaml").read_text().startswith("preset: tiny")


@pytest.mark.parametrize("mode", [[], ["--whole-run"]])
def test_bench_prints_its_table_and_json_line(mode):
    r = subprocess.run([sys.executable, "-m", "tvae.bench", "--preset", "tiny", "--epochs", "4", *mode], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"train_epoch_s", "eval_s", "epoch_s", "device", "threads"} <= out.keys()
    assert out["device"] == "cpu" and out["threads"] == 1 and 0 < out["train_epoch_s"] < out["epoch_s"]
    if mode:        # every epoch of the preset's phases, the coverage phase included
        assert out["whole_run"] and "coverage " in r.stdout and abs(out["total_s"] - 4 * out["mean_epoch_s"]) < 0.01
    else:
        assert "structure " in r.stdout and "geometry " in r.stdout and "coverage " not in r.stdout


@pytest.mark.parametrize("steps", ["eager", "graph"])
def test_population_bench_prints_one_json_line_per_candidate(steps):
    r = subprocess.run([sys.executable, "-m", "tvae.bench", "--preset", "tiny", "--epochs", "2", "--population", "1,2",
                        "--single", "--cohort-steps", steps], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()[-3:]]
    assert [(x["engine"], x["population"]) for x in lines] == [("single", 1), ("cohort", 1), ("cohort", 2)]
    assert [x["steps"] for x in lines] == ["single", steps, steps]
    for x in lines:
        assert x["trial_epochs_s"] == pytest.approx(x["population"] / x["epoch_s"], rel=1e-3)
        assert "epoch_gpu_mib_per_member" not in x      # GPU memory is measured on a GPU only
        assert x["ops_per_epoch"] > 1000                   # an epoch's steps and evaluation, counted
        assert 0 < x["train_s"] < x["epoch_s"] and 0 < x["eval_s"] < x["epoch_s"]
    assert lines[2]["ops_per_epoch"] > lines[1]["ops_per_epoch"]     # a second member's draws at least


def test_learnable_curvature_receives_gradients():
    run = make_run("ternary_vae", TINY | {"model.learnable_curvature": True}, epochs=3, seed=0)
    rows = [run.train_epoch() for _ in range(3)]
    assert rows[0]["curvature"] != 1.0 and rows[2]["curvature"] != rows[1]["curvature"]
    assert all(math.isfinite(r["train_hierarchy_B"]) for r in rows)


@pytest.mark.slow
def test_compiled_steps_train_like_eager_steps():
    """`compile=True` (torch.compile of each step's loss): same recipe, same seed, every loss term alike. The first
    epoch starts from the same weights (its terms agree to 1e-3); fused kernels round differently, so later epochs
    drift apart (measured: at most 16 % in one term by epoch 3): each term must then be within 25 %, which still
    catches a term that is missing, extra, or weighted 2x."""
    eager = make_run("ternary_vae", TINY_ALL_PHASES, epochs=3, seed=0)
    compiled = trainer.make_run(TINY_ALL_PHASES, epochs=3, seed=0, compile=True)
    assert compiled.execution.compile and not eager.execution.compile
    for epoch in range(3):
        e, c = eager.train_epoch(), compiled.train_epoch()
        assert e["phase"] == c["phase"]
        tolerance = 1e-3 if epoch == 0 else 0.25
        for term in trainer.TERMS:
            key = f"loss_{term}"
            assert math.isfinite(c[key]), key
            assert (c[key] == 0.0) == (e[key] == 0.0), f"epoch {epoch}: {key} eager {e[key]} compiled {c[key]}"
            assert c[key] == pytest.approx(e[key], rel=tolerance), f"epoch {epoch}: {key}"
        assert sum(e[f"loss_{t}"] != 0.0 for t in trainer.TERMS) >= (1 if epoch == 0 else 4)


def test_gradients_handed_over_train_like_gradients_added_in_place():
    """The GPU's gradient hand-over (fresh gradients, one foreach copy into the flat buffer) run on the CPU gives
    bitwise the same training as the CPU's in-place accumulation."""
    added = make_run("ternary_vae", TINY_ALL_PHASES, epochs=3, seed=0)
    handed = trainer.make_run(TINY_ALL_PHASES, epochs=3, seed=0, hand_over_grads=True)
    assert handed.execution.hand_over_grads and not added.execution.hand_over_grads
    _assert_trains_alike(handed, added)
    flat = {run: run._flat_grad.untyped_storage().data_ptr() for run in (handed, added)}
    in_buffer = lambda run: {p.grad is not None and p.grad.untyped_storage().data_ptr() == flat[run]  # noqa: E731
                             for p, _ in run._grad_slots}
    assert in_buffer(added) == {True} and in_buffer(handed) == {False}    # the two ways really differ


def test_epochs_flush_subnormal_floats_and_switch_flushing_off_afterwards():
    """Subnormal weights and Adam moments (dead units decaying) made late epochs 2-4x slower; an epoch runs with
    the CPU flushing them to zero, observed from inside the epoch by a forward hook."""
    subnormal = torch.tensor([1e-39])
    assert subnormal.mul(1.0).item() != 0.0              # not flushing before
    inside = []
    run = trainer.make_run(TINY, epochs=1, seed=0)
    run.model.decoder.register_forward_hook(lambda *_: inside.append(subnormal.mul(1.0).item()))
    run.train_epoch()
    assert inside and set(inside) == {0.0}               # flushed during the epoch
    assert subnormal.mul(1.0).item() != 0.0              # and not after it


def test_adam_kernel_called_directly_trains_like_optimizer_step():
    """The CPU's direct call of the fused Adam kernel (`trainer.adam_step`) gives bitwise the same training as
    torch.optim.Adam.step(), across the phase changes that freeze and unfreeze parameter groups."""
    direct = trainer.make_run(TINY_ALL_PHASES, epochs=3, seed=0)
    stepped = trainer.make_run(TINY_ALL_PHASES, epochs=3, seed=0, direct_adam=False)
    assert direct.execution.direct_adam and not stepped.execution.direct_adam
    _assert_trains_alike(direct, stepped)
    assert trainer.adam_step(direct.optimizer)          # every trainable group has state: the direct path ran


@pytest.mark.parametrize("phase", ["coverage", "structure"])
def test_metrics_in_torch_equal_the_numpy_ones(phase):
    """The GPU's evaluation path (every metric in torch, `_evaluate_on_device`) run on the CPU, against the
    numpy definitions on the same weights; both splits."""
    from tvae import config as config_mod

    epochs = 1 if phase == "coverage" else 3
    cfg = config_mod.build("tiny", overrides={"data.train_fraction": 0.8, "phases.structure_start": 1}, epochs=3,
                           seed=0)
    run = trainer.run_from_config(cfg, device_metrics=True)
    for _ in range(epochs):
        run.train_epoch()
    run.model.eval()
    with torch.inference_mode():
        on_device, on_host = run._evaluate_on_device(phase), run._evaluate_on_host(phase)
    assert on_device.keys() == on_host.keys() and "heldout_hierarchy_B" in on_device
    for key, value in on_device.items():
        assert math.isfinite(value) or key == "heldout_r_v9", key      # v = 9: one operation, in the train split
        # r_v0 / r_v9: float64 sums on the device, float32 means in numpy
        assert value == pytest.approx(on_host[key], rel=1e-6 if key.endswith(("r_v0", "r_v9")) else 1e-10,
                                      abs=1e-12, nan_ok=True), key
    for split in run.evals:
        assert on_device[f"{split}_coverage"] == on_host[f"{split}_coverage"]


@pytest.mark.parametrize("shape", [(39, 10), (39,), (39, 512), (39, 3, 5)])
def test_aligned_steps_keep_values_and_align_every_step(shape):
    t = torch.arange(math.prod(shape), dtype=torch.int64 if len(shape) == 3 else torch.float32).view(shape)
    aligned = trainer.aligned_steps(t)
    assert torch.equal(aligned, t)
    assert all(aligned[s].data_ptr() % 16 == 0 for s in range(shape[0]))


def test_execution_switches_take_the_device_defaults_and_refuse_what_cannot_run():
    from tvae.execution import Execution

    cpu = torch.device("cpu")
    assert Execution().resolve(cpu, "adam") == Execution(cuda_graphs=False, compile=False, device_metrics=False,
                                                          two_streams=False, hand_over_grads=False, direct_adam=True)
    assert not Execution().resolve(cpu, "riemannian_adam").direct_adam     # geoopt keeps its own step()
    assert Execution(device_metrics=True).resolve(cpu, "adam").device_metrics
    with pytest.raises(ValueError, match="two_streams needs a CUDA device"):
        trainer.make_run(TINY, epochs=1, two_streams=True)
    with pytest.raises(ValueError, match="direct_adam"):
        trainer.make_run(TINY | {"optim.optimizer": "riemannian_adam"}, epochs=1, direct_adam=True)
    with pytest.raises(TypeError, match="side_stream"):
        trainer.make_run(TINY, epochs=1, side_stream=None)


def test_building_a_run_leaves_the_callers_random_generators_alone():
    import random

    import numpy as np

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    make_run("ternary_vae", TINY, epochs=1, seed=7)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]
