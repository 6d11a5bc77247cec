"""The `grokking` space: it samples every split kind with its parameters, training fractions down to 0.05 and
weight decay up to 0.1, sizes the coverage phase and the batches to the training set, and fits budgets up to
500 epochs."""
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import search_spaces
from search_spaces import grokking
from tvae import config, data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("epochs", [300, 500])
def test_space_samples_every_split_kind_into_valid_configs(epochs):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.set_user_attr("epochs", epochs)
    seen: dict[str, int] = {}
    fractions = []
    for _ in range(80):
        trial = study.ask()
        overrides = grokking.define(trial)
        cfg = config.build("v5_12_4", overrides=overrides, epochs=epochs)
        split = data.make_split(cfg.data)
        assert len(split.train) > 0 and len(split.heldout) > 0
        kind = cfg.data.split
        seen[kind] = seen.get(kind, 0) + 1
        fractions.append(cfg.data.train_fraction)
        if kind == "valuation":
            assert 2 <= cfg.data.split_level_min <= 5 and cfg.data.split_level_max == 9
        if kind == "trit":
            assert 1 <= cfg.data.split_position <= 8
        if kind == "compositional":
            assert cfg.data.split_position != cfg.data.split_position_b and 1 <= cfg.data.split_pairs <= 3
        # the coverage phase: ~1200 steps unless that would take more than half the budget
        per_epoch = -(-len(split.train) // cfg.coverage.batch_size)
        e1 = cfg.phases.structure_start
        assert e1 * per_epoch >= grokking.COVERAGE_STEPS or e1 >= epochs // 3 - epochs // 10
        assert e1 <= epochs // 3 and (epochs > 300 or e1 < grokking.SPACE.grace_period)
        assert cfg.phases.geometry_start < epochs
        # structure epochs keep about as many steps as a full-data epoch (39, within a factor sqrt(2)), batches
        # on the power-of-two grid 32-512 (cohort members with equal batches share step groups)
        assert cfg.data.batch_size in (32, 64, 128, 256, 512)
        steps = -(-len(split.train) // cfg.data.batch_size)
        assert steps <= 39 * math.sqrt(2) and (cfg.data.batch_size == 32 or steps >= 39 / math.sqrt(2))
        study.tell(trial, 0.0)
    assert set(seen) == set(data.SPLIT_KINDS)
    assert min(fractions) < 0.08 and max(fractions) <= 0.9
    dists = study.trials[0].distributions | {k: v for t in study.trials for k, v in t.distributions.items()}
    assert dists["weight_decay"].high == 0.1 and dists["train_fraction"].low == 0.05


def test_coverage_plan_follows_the_training_set():
    assert grokking.coverage_plan(data.N_OPS, 300) == (256, 16)
    assert grokking.coverage_plan(984, 300) == (128, 70)      # capped: e1 within the first third
    assert grokking.coverage_plan(984, 500) == (128, 116)
    assert grokking.coverage_plan(3937, 300) == (128, 39)
    assert grokking.structure_batch(data.N_OPS) == 512 and grokking.structure_batch(984) == 32
    # the nearest power of two in log scale: 512 * 3937 / 19683 = 102.4 -> 128 (not 64), 9841 -> 255.99 -> 256
    assert grokking.structure_batch(3937) == 128 and grokking.structure_batch(9841) == 256
    assert grokking.structure_batch(2000) == grokking.structure_batch(2400) == 64


def test_search_spaces_lists_the_split_parameters():
    out = subprocess.run([sys.executable, "-m", "search_spaces", "grokking"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("split ", "train_fraction", "split_level_min", "split_trit_position", "split_trit_value",
                 "split_pair_position", "split_pair_offset", "split_pairs", "weight_decay"):
        assert name in out.stdout, name
    assert "stratified, valuation, trit, compositional" in out.stdout
    assert "float log [0.05, 0.9]" in out.stdout
