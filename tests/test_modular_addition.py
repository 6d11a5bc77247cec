"""The positive control (tvae.modular_addition, search_spaces.modular_addition): config errors, exact resume,
divergence, and three real training runs that the grokking detector must label correctly."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tvae import modular_addition as ma
from tvae.tasks import DivergedError, load_run, make_run

REPO = Path(__file__).resolve().parents[1]
SMALL = {"data.modulus": 17, "model.hidden": 32, "steps_per_epoch": 3}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(run, epochs):
    return [run.train_epoch() for _ in range(epochs)]


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


# ------------------------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("overrides, words", [
    ({"optim.weight_decy": 1.0}, ["unknown config key", "'optim.weight_decy'", "optim.weight_decay"]),
    ({"modulus": 7}, ["unknown config key", "'modulus'"]),
    ({"data.modulus.x": 7}, ["unknown config key", "'data.modulus.x'"]),
    ({"optim": 1.0}, ["'optim' is a section"]),
    ({"data.modulus": 7.5}, ["data.modulus", "expected an int", "7.5"]),
    ({"data.modulus": "13"}, ["data.modulus", "expected an int"]),
    ({"steps_per_epoch": True}, ["steps_per_epoch", "expected an int"]),
    ({"optim.weight_decay": "1"}, ["optim.weight_decay", "expected a float"]),
    ({"model.activation": "tanh"}, ["model.activation", "is not one of", "'tanh'"]),
    ({"data.train_fraction": 0.0}, ["data.train_fraction", "(0, 1]"]),
    ({"data.train_fraction": 1.5}, ["data.train_fraction", "(0, 1]"]),
    ({"optim.weight_decay": -0.1}, ["optim.weight_decay", ">= 0"]),
    ({"data.modulus": 1}, ["data.modulus", ">= 2"]),
])
def test_bad_overrides_are_refused_naming_the_key(overrides, words):
    with pytest.raises(ValueError) as error:
        make_run("modular_addition", overrides, epochs=1)
    for word in words:
        assert word in str(error.value)


def test_overrides_reach_the_run_and_ints_are_accepted_for_floats():
    run = make_run("modular_addition", {**SMALL, "optim.weight_decay": 0, "data.train_fraction": 0.5}, epochs=2)
    assert run.config.optim.weight_decay == 0.0 and isinstance(run.config.optim.weight_decay, float)
    assert run.config.data.modulus == 17 and run.model[0].in_features == 34 and run.model[2].out_features == 17
    assert len(run.data.train_index) == round(0.5 * 17 * 17)
    assert len(run.data.train_index) + len(run.data.heldout_index) == 17 * 17
    assert set(run.data.train_index.tolist()).isdisjoint(run.data.heldout_index.tolist())
    assert ma.apply_overrides(ma.Config(), ma.flatten(run.config)) == run.config


def test_split_depends_on_split_seed_only():
    a = make_run("modular_addition", SMALL, epochs=1, seed=1)
    b = make_run("modular_addition", SMALL, epochs=1, seed=2)
    c = make_run("modular_addition", {**SMALL, "data.split_seed": 5}, epochs=1, seed=1)
    assert torch.equal(a.data.train_index, b.data.train_index)
    assert not torch.equal(a.data.train_index, c.data.train_index)
    assert not torch.equal(a.model[0].weight, b.model[0].weight)  # the run seed sets the initial weights


# ------------------------------------------------------------------------------------------ rows and resume

def test_row_has_the_documented_columns_and_no_heldout_without_a_split():
    row = make_run("modular_addition", SMALL, epochs=1).train_epoch()
    for name in ("epoch", "phase", "epoch_seconds", "train_acc", "heldout_acc", "train_loss", "heldout_loss",
                 "loss", "lr", "grad_norm", "weight_norm", "update_ratio"):
        assert name in row, name
    assert row["epoch"] == 0 and row["phase"] == "train"
    assert all(math.isfinite(v) for k, v in row.items() if k not in ("epoch", "phase"))
    full = make_run("modular_addition", {**SMALL, "data.train_fraction": 1.0}, epochs=1).train_epoch()
    assert "heldout_acc" not in full and "heldout_loss" not in full and "train_acc" in full


def test_training_past_the_requested_epochs_is_refused():
    run = make_run("modular_addition", SMALL, epochs=1)
    run.train_epoch()
    with pytest.raises(RuntimeError, match="already trained"):
        run.train_epoch()


def test_resume_is_exact(tmp_path):
    straight = make_run("modular_addition", SMALL, epochs=12, seed=3)
    expected = _train(straight, 12)

    first = make_run("modular_addition", SMALL, epochs=12, seed=3)
    head = _train(first, 5)
    first.save(tmp_path / "ckpt")
    del first
    torch.manual_seed(999)  # disturb every global RNG between save and load
    untouched = torch.rand(3)
    torch.manual_seed(999)
    resumed = load_run("modular_addition", tmp_path / "ckpt")
    assert torch.equal(torch.rand(3), untouched)  # loading a run leaves the process's RNG alone
    assert resumed.epoch == 5 and resumed.epochs == 12
    tail = _train(resumed, 7)

    assert _without_timing(head + tail) == _without_timing(expected)
    assert {k: v for k, v in resumed.summary().items() if k != "epoch_seconds"} == \
           {k: v for k, v in straight.summary().items() if k != "epoch_seconds"}
    assert resumed.summary()["best_train_acc"] == max(r["train_acc"] for r in expected)


def test_the_run_keeps_its_rng_to_itself():
    torch.manual_seed(7)
    untouched = torch.rand(3)
    torch.manual_seed(7)
    run = make_run("modular_addition", SMALL, epochs=2, seed=3)
    run.train_epoch()
    assert torch.equal(torch.rand(3), untouched)  # building and training left the process's RNG alone
    torch.manual_seed(12345)
    again = make_run("modular_addition", SMALL, epochs=2, seed=3)
    assert torch.equal(again.model[0].weight, make_run("modular_addition", SMALL, epochs=2, seed=3).model[0].weight)
    assert not torch.equal(again.model[0].weight, make_run("modular_addition", SMALL, epochs=2, seed=4).model[0].weight)


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_run("modular_addition", tmp_path / "nothing")
    run = make_run("modular_addition", SMALL, epochs=2)
    run.train_epoch()
    run.save(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / ma.CHECKPOINT_NAME
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cannot restore the checkpoint .*modular_addition.pt"):
        load_run("modular_addition", tmp_path / "ckpt")
    assert path.stat().st_size == len(good) // 2  # the failed load wrote nothing


def test_save_leaves_no_temporary_files(tmp_path):
    run = make_run("modular_addition", SMALL, epochs=2)
    run.train_epoch()
    run.save(tmp_path)
    run.train_epoch()
    run.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ma.CHECKPOINT_NAME]
    assert load_run("modular_addition", tmp_path).epoch == 2


def test_non_finite_loss_raises_diverged_error():
    run = make_run("modular_addition", {**SMALL, "optim.lr": 1e30}, epochs=3)
    with pytest.raises(DivergedError, match="non-finite .* at epoch"):
        _train(run, 3)


def test_cli_trains_and_refuses_unknown_keys():
    command = [sys.executable, "-m", "tvae.modular_addition", "--epochs", "3", "--every", "0"]
    good = subprocess.run(command + [f"--set={k}={v}" for k, v in SMALL.items()], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert good.returncode == 0, good.stderr
    result = json.loads(good.stdout.strip().splitlines()[-1])
    assert result["epochs"] == 3 and result["overrides"] == SMALL and 0.0 <= result["final_heldout_acc"] <= 1.0
    bad = subprocess.run(command + ["--set", "optim.weight_decy=1"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert bad.returncode == 2 and "unknown config key 'optim.weight_decy'" in bad.stderr


# ------------------------------------------------------------------------------------------- search space

def test_search_space_samples_valid_overrides():
    import optuna

    from search_spaces.modular_addition import SPACE

    assert SPACE.task == "modular_addition" and SPACE.metric == "heldout_acc" and SPACE.mode == "max"
    assert SPACE.scheduler == "fifo"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_decays = set()
    for _ in range(20):
        overrides = SPACE.define(study.ask())
        config = ma.apply_overrides(ma.Config(), {**SPACE.fixed, **overrides})
        seen_decays.add(config.optim.weight_decay)
        assert 0.3 <= config.data.train_fraction <= 0.9
    assert 0.0 in seen_decays and max(seen_decays) >= 1.0
    row = make_run(SPACE.task, {**SMALL, **overrides}, epochs=1).train_epoch()
    assert SPACE.metric in row


# ------------------------------------------------------------------------- the phases, classified for real

# trial_id: (overrides, epochs, expected class); regimes measured in docs/positive-control.md. The grokking run
# generalises at epoch ~120 (seeds 0-3), so 170 epochs leave room for the 10-epoch hold; the memorisation run gets
# the same budget; the comprehension run (3x the training batch, the most expensive) is done by epoch ~15.
PHASES = {
    "grokking": ({"optim.weight_decay": 1.0, "data.train_fraction": 0.3}, 170, "grokking"),
    "memorization": ({"optim.weight_decay": 0.0, "data.train_fraction": 0.3}, 170, "memorization"),
    "comprehension": ({"optim.weight_decay": 1.0, "data.train_fraction": 0.9}, 60, "comprehension"),
}


def _write_trial(root, study, trial_id, rows):
    table = pa.Table.from_pylist([{"study": study, "trial_id": trial_id, "attempt": 0, **row} for row in rows])
    table = table.replace_schema_metadata({"tvae_study.schema_version": "1"})
    directory = root / "epochs" / f"trial_id={trial_id}"
    directory.mkdir(parents=True)
    pq.write_table(table, directory / f"part-{rows[0]['epoch']}-{rows[-1]['epoch']}.parquet")


@pytest.mark.slow
def test_real_runs_are_classified_grokking_memorization_comprehension(tmp_path):
    import analysis
    import analysis.detect

    curves = {}
    for trial_id, (overrides, epochs, _) in PHASES.items():
        run = make_run("modular_addition", overrides, epochs=epochs, seed=0)
        rows = []
        for _ in range(epochs):
            row = run.train_epoch()
            row["wall_time"] = time.time()
            rows.append(row)
        curves[trial_id] = rows
        _write_trial(tmp_path, "positive-control", trial_id, rows)

    # the curves themselves show the three regimes
    grok = curves["grokking"]
    t_mem = next(r["epoch"] for r in grok if r["train_acc"] >= 0.99)
    assert grok[t_mem]["heldout_acc"] < 0.1 and grok[-1]["heldout_acc"] > 0.95
    assert max(r["heldout_acc"] for r in curves["memorization"]) < 0.1
    assert curves["memorization"][-1]["train_acc"] == 1.0

    lf = analysis.scan(tmp_path)
    table = analysis.detect.grokking(lf, "acc").collect()
    labels = dict(zip(table["trial_id"].to_list(), table["class"].to_list()))
    assert labels == {trial_id: expected for trial_id, (_, _, expected) in PHASES.items()}, table
