"""The held-out split kinds (`data.make_split`): sizes, disjointness, determinism, and what the trainer does with
them (samplers and held-out metrics on the held-out operations only)."""
import dataclasses

import pytest
import torch

from tvae import config, data
from tvae.trainer import TernaryRun


def data_cfg(**kw) -> config.DataConfig:
    return dataclasses.replace(config.DataConfig(), **kw)


def as_set(t: torch.Tensor) -> set[int]:
    return set(t.tolist())


def test_default_split_is_the_stratified_split_of_before():
    for fraction, seed in [(1.0, 0), (0.8, 3), (0.05, 7)]:
        a = data.make_split(data_cfg(train_fraction=fraction, split_seed=seed))
        b = data.stratified_split(fraction, seed)
        assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    tr = data.stratified_split(0.8, 3).train
    assert torch.bincount(data.valuations(tr), minlength=10).tolist() == [10498, 3499, 1166, 389, 130, 43, 14, 5, 2, 1]


@pytest.mark.parametrize("lo,hi,n_held", [(4, 9, 243), (2, 9, 2187), (3, 3, 486), (9, 9, 1)])
def test_valuation_split_holds_out_exactly_those_levels(lo, hi, n_held):
    s = data.make_split(data_cfg(split="valuation", split_level_min=lo, split_level_max=hi))
    v = data.valuations()
    assert len(s.heldout) == n_held and len(s.train) == data.N_OPS - n_held
    assert ((v[s.heldout] >= lo) & (v[s.heldout] <= hi)).all()
    assert not ((v[s.train] >= lo) & (v[s.train] <= hi)).any()


def test_trit_split_holds_out_one_digit_value():
    s = data.make_split(data_cfg(split="trit", split_position=4, split_value=1))
    t = data.all_trits()
    assert len(s.heldout) == 6561 and len(s.train) == 13122
    assert (t[s.heldout, 4] == 1).all() and (t[s.train, 4] != 1).all()


@pytest.mark.parametrize("pairs", [1, 2, 3])
def test_compositional_split_hides_pairs_but_no_single_value(pairs):
    s = data.make_split(data_cfg(split="compositional", split_position=2, split_position_b=6, split_pairs=pairs,
                                 split_seed=5))
    t = data.all_trits().long()
    assert len(s.heldout) == pairs * 2187 and len(s.train) == data.N_OPS - pairs * 2187
    held_pairs = {(int(a), int(b)) for a, b in t[s.heldout][:, [2, 6]].unique(dim=0)}
    train_pairs = {(int(a), int(b)) for a, b in t[s.train][:, [2, 6]].unique(dim=0)}
    assert len(held_pairs) == pairs and not held_pairs & train_pairs
    assert len(held_pairs | train_pairs) == 9
    # every value of either position is still seen in training
    assert {a for a, _ in train_pairs} == {-1, 0, 1} and {b for _, b in train_pairs} == {-1, 0, 1}
    # no two held-out pairs share a value at either position
    assert len({a for a, _ in held_pairs}) == pairs and len({b for _, b in held_pairs}) == pairs


KINDS = [dict(split="stratified", train_fraction=0.3),
         dict(split="valuation", split_level_min=3),
         dict(split="trit", split_position=1, split_value=0),
         dict(split="compositional", split_position=0, split_position_b=8, split_pairs=2)]


@pytest.mark.parametrize("kw", KINDS, ids=lambda kw: kw["split"])
@pytest.mark.parametrize("fraction", [1.0, 0.05])
def test_every_kind_is_disjoint_sorted_and_seeded(kw, fraction):
    kw = kw | {"train_fraction": min(fraction, kw.get("train_fraction", 1.0))}
    a = data.make_split(data_cfg(split_seed=11, **kw))
    b = data.make_split(data_cfg(split_seed=11, **kw))
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    assert not as_set(a.train) & as_set(a.heldout)
    assert torch.equal(a.train, a.train.sort().values) and torch.equal(a.heldout, a.heldout.sort().values)
    assert len(a.train) > 0 and len(a.heldout) > 0
    if kw["split"] != "stratified":
        # the structured set does not depend on the training fraction; the training share does
        full = data.make_split(data_cfg(split_seed=11, **(kw | {"train_fraction": 1.0})))
        assert torch.equal(a.heldout, full.heldout)
        if kw["train_fraction"] < 1.0:
            assert as_set(a.train) < as_set(full.train)
            expected = sum(max(1, round(n * 0.05)) for n in torch.bincount(data.valuations(full.train)).tolist() if n)
            assert len(a.train) == expected
            c = data.make_split(data_cfg(split_seed=12, **kw))
            assert not torch.equal(a.train, c.train)


def test_seed_changes_the_random_kinds():
    a = data.make_split(data_cfg(split="compositional", split_pairs=1, split_seed=0))
    held = {data.make_split(data_cfg(split="compositional", split_pairs=1, split_seed=s)).heldout[0].item()
            for s in range(12)}
    assert len(held) > 1 and len(a.heldout) == 2187


@pytest.mark.parametrize("key,value,needle", [
    ("data.split", "nope", "data.split"),
    ("data.split_level_min", 0, "data.split_level_min"),
    ("data.split_position", 9, "data.split_position"),
    ("data.split_value", 2, "data.split_value"),
    ("data.split_position_b", 9, "data.split_position_b"),
    ("data.split_pairs", 4, "data.split_pairs"),
])
def test_bad_split_keys_are_refused_by_name(key, value, needle):
    with pytest.raises(config.ConfigError, match=needle):
        config.build("tiny", overrides={key: value})


def test_second_position_must_differ_only_for_the_compositional_split():
    same = {"data.split_position": 3, "data.split_position_b": 3}
    assert config.build("tiny", overrides=same | {"data.split": "trit"}).data.split_position == 3
    with pytest.raises(config.ConfigError, match="data.split_position_b: must differ"):
        config.build("tiny", overrides=same | {"data.split": "compositional"})


@pytest.mark.parametrize("kw", [dict(split="valuation", split_level_min=1),   # training: level 0 only
                                dict(split="valuation", split_level_min=2, train_fraction=0.05),
                                dict(split="trit", split_position=0, split_value=-1),  # = v >= 1 held out
                                dict(split="stratified", train_fraction=0.05)],
                         ids=["v>=1", "v>=2@0.05", "trit0=-1", "stratified@0.05"])
def test_training_copes_with_missing_levels_and_tiny_training_sets(kw):
    overrides = {f"data.{k}": v for k, v in kw.items()}
    cfg = config.build("tiny", overrides=overrides, epochs=5)
    run = TernaryRun(cfg)
    split = run.split
    # the sampler only draws training operations, from the levels present in training
    batches = run.sampler.epoch_batches(torch.Generator().manual_seed(0))
    assert as_set(batches.flatten()) <= as_set(split.train)
    present = torch.bincount(data.valuations(split.train), minlength=10) > 0
    assert torch.equal(run.sampler.draws_per_level > 0, present)
    rows = [run.train_epoch() for _ in range(cfg.epochs)]
    last = rows[-1]
    for name in ("coverage", "hierarchy_B", "Q", "dist_corr", "r_v0"):
        assert f"heldout_{name}" in last and f"train_{name}" in last
    assert 0.0 <= last["heldout_coverage"] <= 1.0


def test_heldout_metrics_are_computed_on_the_heldout_operations():
    cfg = config.build("tiny", overrides={"data.split": "valuation", "data.split_level_min": 3}, epochs=1)
    run = TernaryRun(cfg)
    ev = run.evals["heldout"]
    assert as_set(torch.from_numpy(ev.ops)) == as_set(run.split.heldout)
    assert ev.v.min() >= 3
    assert set(ev.pi.tolist()) | set(ev.pj.tolist()) <= as_set(run.split.heldout)
    train = run.evals["train"]
    assert train.v.max() <= 2 and as_set(torch.from_numpy(train.ops)) == as_set(run.split.train)
    row = run.train_epoch()
    # r_v0 and r_v9 are the mean radius of the split's own level 0 / 9: level 0 is never held out here
    assert row["heldout_r_v0"] != row["heldout_r_v0"] and row["train_r_v9"] != row["train_r_v9"]   # NaN: absent


CLI_KINDS = {
    "stratified": ["--set", "data.train_fraction=0.5"],
    "valuation": ["--set", "data.split=valuation", "--set", "data.split_level_min=3"],
    "trit": ["--set", "data.split=trit", "--set", "data.split_position=2", "--set", "data.split_value=-1"],
    "compositional": ["--set", "data.split=compositional", "--set", "data.split_position=1",
                      "--set", "data.split_position_b=7", "--set", "data.split_pairs=3"],
}


def test_cli_set_selects_each_kind_and_rows_carry_heldout_metrics(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq
    import yaml

    root = Path(__file__).resolve().parents[1]
    procs = {kind: subprocess.Popen([sys.executable, "-m", "tvae.train", "--quiet", "--preset", "tiny", "--epochs",
                                     "2", "--out", str(tmp_path / kind), *args], cwd=root,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for kind, args in CLI_KINDS.items()}
    for kind, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, (kind, err)
        saved = yaml.safe_load((tmp_path / kind / "config.yaml").read_text())
        assert saved["data"]["split"] == kind
        rows = pq.read_table(tmp_path / kind / "epochs.parquet").to_pylist()
        assert len(rows) == 2
        for name in ("coverage", "hierarchy_B", "Q", "dist_corr", "padic_dist_corr"):
            assert rows[-1][f"heldout_{name}"] is not None, (kind, name)
    bad = subprocess.run([sys.executable, "-m", "tvae.train", "--preset", "tiny", "--epochs", "1", "--set",
                          "data.split=diagonal", "--out", str(tmp_path / "bad")], cwd=root, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "data.split" in bad.stderr
