"""Detectors on labelled synthetic curves (analysis.synthetic): classes, times, events and their rules."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analysis import detect
from analysis.rules import DETECTOR_VERSION
from analysis.synthetic import EXPECTED_CLASS, KINDS, dataset

KINDS_TWICE = list(KINDS) * 2


@pytest.fixture(scope="module", params=[0, 1])
def curves(request) -> pl.DataFrame:
    return dataset(KINDS_TWICE, epochs=400, noise=0.02, seed=request.param)


def kind_of(trial_id: str) -> str:
    return trial_id.split("-", 1)[1]


@pytest.mark.parametrize("pair", ["acc", "loss"])
def test_every_labelled_kind_gets_its_class(curves: pl.DataFrame, pair: str):
    table = detect.grokking(curves.lazy(), pair).collect()
    assert table.height == len(KINDS_TWICE)
    for row in table.iter_rows(named=True):
        kind = kind_of(row["trial_id"])
        assert row["class"] == EXPECTED_CLASS[kind], (pair, row)
        assert row["ungrokked"] == (kind == "ungrokking"), (pair, row)
        assert row["rule"] == f"class.{row['class']}"


def test_times_and_delay_match_the_curves(curves: pl.DataFrame):
    table = detect.grokking(curves.lazy(), "acc").collect()
    by_kind = {kind_of(r["trial_id"]): r for r in table.iter_rows(named=True)}
    grok = by_kind["grokking"]
    # train steps at 10 % of 400 epochs, held-out at 70 % (sigmoid width 4): thresholds cross a few epochs later
    assert 40 <= grok["t_mem"] <= 70 and 280 <= grok["t_gen"] <= 300
    assert grok["delay"] == grok["t_gen"] - grok["t_mem"]
    assert grok["heldout_at_mem"] < 0.1
    ungrok = by_kind["ungrokking"]
    assert 200 <= ungrok["t_gen"] <= 220 and 295 <= ungrok["t_ungrok"] <= 310
    assert by_kind["memorization"]["t_gen"] is None and by_kind["confusion"]["t_mem"] is None
    comp = by_kind["comprehension"]
    assert comp["delay"] < 10


def test_thresholds_are_parameters_and_change_the_answer(curves: pl.DataFrame):
    # with a delay rule longer than the grokking delay, the grokking trials become comprehension
    strict = detect.grokking(curves.lazy(), "acc", min_delay=1000).collect()
    grok_rows = strict.filter(pl.col("trial_id").str.ends_with("-grokking"))
    assert set(grok_rows["class"]) == {"comprehension"}
    params = json.loads(grok_rows["params"][0])
    assert params["min_delay"] == 1000 and params["train_threshold"] == 0.99 and params["pair"] == "acc"
    # an unreachable train threshold turns everything into confusion
    none = detect.grokking(curves.lazy(), "acc", train_threshold=1.5).collect()
    assert set(none["class"]) == {"confusion"}


def test_plateaus_and_plateau_jump_on_the_grokking_heldout_curve(curves: pl.DataFrame):
    lf = curves.lazy()
    grok = pl.col("trial_id").str.ends_with("-grokking")
    pla = detect.plateaus(lf, "heldout_acc").filter(grok).collect()
    first = pla.group_by("trial_id").agg(pl.all().sort_by("epoch").first())
    assert (first["epoch"] == 0).all() and first["epoch_end"].is_between(240, 290).all()
    assert first["magnitude"].is_between(0.0, 0.05).all()                  # the level: chance
    tr = detect.transitions(lf, "heldout_acc").filter(grok).collect()
    assert tr["rule"].to_list().count("transition.plateau_jump") == 2        # one per grokking trial
    jump = tr.filter(pl.col("rule") == "transition.plateau_jump")
    assert jump["epoch"].is_between(270, 290).all() and jump["magnitude"].is_between(0.5, 1.0).all()


def test_noise_and_slow_rise_have_no_abrupt_level_change(curves: pl.DataFrame):
    lf = curves.lazy()
    for metric in ("train_acc", "heldout_acc"):
        tr = detect.transitions(lf, metric).collect()
        calm = tr.filter(pl.col("trial_id").str.ends_with("-confusion")
                         | (pl.col("trial_id").str.ends_with("-comprehension")
                            & (pl.col("rule") != "transition.slope_change")))
        assert calm.height == 0, calm
    # the noise trial is one plateau from start to end
    pla = detect.plateaus(lf, "heldout_acc").filter(pl.col("trial_id").str.ends_with("-confusion")).collect()
    assert pla.group_by("trial_id").len()["len"].to_list() == [1, 1]
    assert (pla["epoch"] == 0).all() and (pla["epoch_end"] == 399).all()


def test_ungrokking_is_a_negative_level_shift(curves: pl.DataFrame):
    tr = detect.transitions(curves.lazy(), "heldout_acc").filter(
        pl.col("trial_id").str.ends_with("-ungrokking")).collect()
    drops = tr.filter(pl.col("magnitude") < 0)
    assert drops.height == 2 and drops["epoch"].is_between(290, 310).all()
    assert (drops["magnitude"] < -0.4).all()


def test_run_without_heldout_gets_a_plateau_then_jump_in_coverage():
    df = dataset(["confusion"] * 3, epochs=300, noise=0.01, seed=3).drop("heldout_acc", "heldout_loss")
    ev = detect.events(df.lazy()).collect()
    jumps = ev.filter((pl.col("metric") == "train_coverage") & (pl.col("rule") == "transition.plateau_jump"))
    assert jumps.height == 3
    assert jumps["epoch"].is_between(175, 185).all() and jumps["magnitude"].is_between(0.6, 0.8).all()
    assert ev.filter(pl.col("event") == "class").height == 0      # no pair, no classification


def test_pairs_are_listed_accuracy_first_losses_last():
    from analysis.metrics import pairs
    schema = dict.fromkeys(["train_loss", "heldout_loss", "train_zz", "heldout_zz", "train_acc", "heldout_acc",
                            "train_Q", "train_coverage", "heldout_coverage"])
    assert pairs(schema) == ["acc", "coverage", "zz", "loss"]


def test_event_rows_name_their_rule_parameters_and_version(curves: pl.DataFrame):
    ev = detect.events(curves.lazy()).collect()
    assert ev.schema == pl.Schema(detect.EVENT_SCHEMA)
    assert (ev["detector_version"] == DETECTOR_VERSION).all()
    assert ev["rule"].null_count() == 0
    kinds = set(ev["event"])
    assert {"plateau", "transition", "memorized", "generalized", "ungrokked", "class"} <= kinds
    for row in ev.unique(subset=["rule", "metric"]).iter_rows(named=True):
        params = json.loads(row["params"])
        if row["event"] in ("plateau", "transition"):
            assert params["metric"] == row["metric"] and "window" in params
        else:
            assert {"hold", "train_threshold", "heldout_threshold", "pair"} <= set(params)
    classes = ev.filter(pl.col("event") == "class")
    assert classes.height == 2 * len(KINDS_TWICE)          # one per trial and pair (acc, loss)


def test_direction_table_and_override_for_a_lower_is_better_metric():
    # hierarchy_B is good when negative: a trial that reaches −0.8 on train early and on held-out late groks
    t = np.arange(300)
    train = -0.8 / (1 + np.exp(-(t - 30) / 2.0))
    held = -0.8 / (1 + np.exp(-(t - 200) / 2.0))
    df = pl.DataFrame({"study": "h", "trial_id": "x", "epoch": t, "train_hierarchy_B": train,
                       "heldout_hierarchy_B": held})
    row = detect.grokking(df.lazy(), "hierarchy_B").collect().row(0, named=True)
    assert row["class"] == "grokking" and 30 <= row["t_mem"] <= 40 and 195 <= row["t_gen"] <= 210
    # flipping the direction (with thresholds that then mean "at most") changes the answer
    flipped = detect.grokking(df.lazy(), "hierarchy_B", directions={"hierarchy_B": "max"},
                              train_threshold=-0.1, heldout_threshold=-0.1, ungrok_threshold=-0.5).collect()
    assert flipped["class"][0] == "comprehension" and flipped["t_mem"][0] == 0


def test_missing_heldout_values_and_nans(curves: pl.DataFrame):
    df = curves.with_columns(
        pl.when(pl.col("trial_id").str.ends_with("-grokking")).then(None).otherwise(pl.col("heldout_acc"))
        .alias("heldout_acc"),
        pl.when(pl.col("epoch") == 100).then(float("nan")).otherwise(pl.col("train_acc")).alias("train_acc"))
    table = detect.grokking(df.lazy(), "acc").collect()
    assert set(table.filter(pl.col("trial_id").str.ends_with("-grokking"))["class"]) == {"no_heldout"}
    assert set(table.filter(pl.col("trial_id").str.ends_with("-memorization"))["class"]) == {"memorization"}


def test_duplicate_rows_and_shuffled_order_do_not_change_the_answer(curves: pl.DataFrame):
    base = detect.grokking(curves.lazy(), "acc").collect()
    messy = pl.concat([curves, curves.head(500)]).sample(fraction=1.0, shuffle=True, seed=1)
    assert detect.grokking(messy.lazy(), "acc").collect().equals(base)


def test_bad_arguments_are_refused_with_the_name(curves: pl.DataFrame):
    lf = curves.lazy()
    with pytest.raises(ValueError, match="window_size"):
        detect.plateaus(lf, "train_acc", window_size=5)
    with pytest.raises(ValueError, match="holds"):
        detect.grokking(lf, "acc", holds=3)
    with pytest.raises(ValueError, match="pairs in the data: acc, loss"):
        detect.grokking(lf, "Q")
    with pytest.raises(ValueError, match="nope"):
        detect.transitions(lf, "nope")
    with pytest.raises(ValueError, match=r"phase \(String\) are not numeric"):
        detect.plateaus(lf, "phase")
    with pytest.raises(ValueError, match="direction"):
        detect.grokking(lf.rename({"train_acc": "train_zz", "heldout_acc": "heldout_zz"}), "zz")


def test_many_studies_keep_trials_apart():
    a = dataset(["grokking"], epochs=200, study="A", seed=1)
    b = dataset(["memorization"], epochs=200, study="B", seed=2)    # same trial_id "t00000-…"? no: kinds differ
    b = b.with_columns(pl.lit("t00000-grokking").alias("trial_id"))  # same id in another study
    table = detect.grokking(pl.concat([a, b]).lazy(), "acc").collect().sort("study")
    assert table["class"].to_list() == ["grokking", "memorization"]


def test_collect_all_events_equals_the_detectors_run_one_by_one(curves: pl.DataFrame):
    lf = curves.lazy()
    table, ev = detect.collect_all_events(lf)
    alone = pl.concat([detect.grokking(lf, p) for p in ("acc", "loss")]).collect()
    assert_frame_equal(table.sort("study", "trial_id", "pair"), alone.sort("study", "trial_id", "pair"))
    one_by_one = detect.events(lf).collect()
    key = ["study", "trial_id", "epoch", "event", "metric", "rule"]
    assert_frame_equal(ev.sort(key), one_by_one.sort(key), check_exact=False, rel_tol=1e-9)  # sums' order


def test_pairs_without_default_thresholds_are_left_out_by_default(curves: pl.DataFrame):
    lf = curves.with_columns(pl.col("train_acc").alias("train_zz"), pl.col("heldout_acc").alias("heldout_zz"),
                             pl.col("train_acc").alias("train_richness_A"),
                             pl.col("heldout_acc").alias("heldout_richness_A")).lazy()
    table, ev = detect.collect_all_events(lf)
    assert set(table["pair"]) == {"acc", "loss"}
    assert not ev["metric"].str.contains("zz|richness").filter(ev["event"] == "class").any()
    # asked for explicitly, with a direction and thresholds, the unknown pair is classified like acc
    zz = detect.grokking(lf, "zz", directions={"zz": "max"}, train_threshold=0.99, heldout_threshold=0.95,
                         ungrok_threshold=0.65).collect()
    acc = detect.grokking(lf, "acc").collect()
    assert zz["class"].to_list() == acc["class"].to_list()
