"""The tables of docs/findings.md from a `grokking` study directory (markdown on stdout).

    python docs/findings/summarise.py results/grokking-full

Finished trials only (COMPLETED, or PRUNED by the scheduler). Per split kind: the detector's classes (analysis.detect.grokking) for the Q, hierarchy_B, dist_corr, padic_dist_corr and coverage
pairs; the train/held-out gap at the end; seconds per epoch per cohort; the trials with the longest delays (or, when no trial is classified
grokking, the largest held-out gains after the training metric was reached) with their settings.
"""
from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from analysis import detect
from study import recorder
from study.layout import StudyLocation

PAIRS = ("Q", "hierarchy_B", "dist_corr", "padic_dist_corr", "coverage")
SETTINGS = ["param_split", "param_train_fraction", "param_split_level_min", "param_split_trit_position",
            "param_split_trit_value", "param_split_pair_position", "param_split_pair_offset", "param_split_pairs",
            "param_weight_decay", "param_lr", "param_lr_schedule", "param_coverage_epochs",
            "param_structure_epochs"]


def markdown(df: pl.DataFrame, floats: int = 3) -> str:
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = [f"{v:.{floats}g}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(study_dir: str) -> None:
    path = Path(study_dir)
    epochs = pl.from_arrow(recorder.read_epochs(StudyLocation.open(str(path.parent), path.name)))
    all_trials = pl.read_parquet(path / "trials.parquet")
    # finished trials only: run to the end, or stopped by the scheduler (an interrupted trial has a partial curve)
    trials = all_trials.filter(pl.col("status").is_in(["COMPLETED", "PRUNED"]))
    epochs = epochs.filter(pl.col("trial_id").is_in(trials["trial_id"].implode()))
    settings = trials.select(["trial_id", "status", "epochs_done"] + [c for c in SETTINGS if c in trials.columns])
    table = pl.concat([detect.grokking(epochs.lazy(), p).collect() for p in PAIRS], how="diagonal_relaxed")
    table = table.join(settings, on="trial_id", how="left")
    print(f"{trials.height} finished trials ({dict(trials['status'].value_counts().iter_rows())}) of "
          f"{all_trials.height} ({dict(all_trials['status'].value_counts().iter_rows())}), "
          f"{epochs.height} epoch rows\n")

    print("### Classes per split kind\n")
    counts = (table.group_by("param_split", "pair", "class").len()
              .pivot(on="class", index=["param_split", "pair"], values="len").fill_null(0)
              .sort("param_split", "pair"))
    # a fixed column order (pivot orders the classes as group_by meets them, which varies from run to run)
    order = ["comprehension", "memorization", "confusion", "grokking", "no_heldout"]
    counts = counts.select("param_split", "pair", *[c for c in order if c in counts.columns],
                           *[c for c in counts.columns if c not in order and c not in ("param_split", "pair")])
    print(markdown(counts) + "\n")

    print("### Train and held-out at the last epoch (medians per split kind)\n")
    last = epochs.sort("epoch").group_by("trial_id").last().join(settings, on="trial_id")
    gap = (last.group_by("param_split")
           .agg(pl.len().alias("trials"), pl.col("epoch").median().alias("last_epoch"),
                *[pl.col(f"{s}_{m}").median().alias(f"{s}_{m}") for m in ("Q", "hierarchy_B", "coverage")
                  for s in ("train", "heldout")])
           .sort("param_split"))
    print(markdown(gap) + "\n")

    print("### Seconds per epoch (per cohort: trials that trained together in one process)\n")
    # a cohort member's trial id is <cohort>-m<k> and its epoch_seconds is the whole cohort's epoch; a trial run
    # alone is a cohort of one. Seconds per member-epoch = cohort epoch seconds / members with a row at that epoch.
    per_epoch = (epochs.with_columns(pl.col("trial_id").str.replace(r"-m\d+$", "").alias("cohort"))
                 .group_by("cohort", "epoch")
                 .agg(pl.len().alias("members"), pl.col("epoch_seconds").first().alias("cohort_s"))
                 .with_columns((pl.col("cohort_s") / pl.col("members")).alias("member_s")))
    cost = (per_epoch.group_by("cohort")
            .agg(pl.col("members").max().alias("members"), pl.len().alias("epochs"),
                 pl.col("cohort_s").median().alias("s_per_cohort_epoch"),
                 pl.col("member_s").median().alias("s_per_member_epoch"),
                 (pl.col("cohort_s").sum() / 60).alias("minutes"))
            .sort("cohort"))
    print(markdown(cost) + "\n")
    print(f"all cohort-epochs: median {per_epoch['cohort_s'].median():.3g} s per cohort epoch, "
          f"{per_epoch['member_s'].median():.3g} s per member-epoch, {per_epoch['cohort_s'].sum() / 60:.0f} minutes "
          f"of cohort epochs in all\n")

    q = table.filter(pl.col("pair") == "Q")
    print("### Longest delays (any pair classified grokking)\n")
    grok = table.filter(pl.col("class") == "grokking").sort("delay", descending=True).head(8)
    if grok.height:
        print(markdown(grok.select(["trial_id", "pair", "t_mem", "t_gen", "delay", "heldout_at_mem",
                                    "heldout_at_gen"] + [c for c in SETTINGS if c in grok.columns])) + "\n")
    else:
        print("No trial is classified grokking for any pair.\n")
    print("### Largest held-out Q gains after training Q was reached (t_mem) \n")
    # the best held-out Q from t_mem on (the detector's heldout_best is over the whole run, often before t_mem)
    after = (epochs.join(q.select("trial_id", "t_mem"), on="trial_id").filter(pl.col("epoch") >= pl.col("t_mem"))
             .group_by("trial_id").agg(pl.col("heldout_Q").max().alias("heldout_best_after_mem")))
    late = (q.filter(pl.col("t_mem").is_not_null()).join(after, on="trial_id")
            .with_columns((pl.col("heldout_best_after_mem") - pl.col("heldout_at_mem")).alias("gain_after_mem"))
            .sort("gain_after_mem", descending=True).head(8))
    print(markdown(late.select(["trial_id", "class", "t_mem", "heldout_at_mem", "heldout_best_after_mem", "heldout_final",
                                "gain_after_mem", "train_final"] + [c for c in SETTINGS if c in late.columns])))


if __name__ == "__main__":
    main(sys.argv[1])
