"""Stack `tvae.train` runs into one directory of epoch rows that analysis.detect / analysis.report read.

    python docs/findings/stack_runs.py results/extended/rows results/extended/seed0 results/extended/seed1 ...

Each run's epochs.parquet gets ``study`` (the output directory's name) and ``trial_id`` (the run's directory name)
columns and is written as OUT/<run>.parquet.
"""
from __future__ import annotations

import sys
from pathlib import Path

import polars as pl


def main(out: str, runs: list[str]) -> None:
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for run in map(Path, runs):
        rows = pl.read_parquet(run / "epochs.parquet")
        rows = rows.with_columns(pl.lit(target.name).alias("study"), pl.lit(run.name).alias("trial_id"))
        rows.write_parquet(target / f"{run.name}.parquet")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
