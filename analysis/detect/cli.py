"""`python -m analysis.detect PATH [PATH …] [--pair NAME] [--json] …`: classes per trial, then the events.

`analysis/detect/__main__.py` runs `main`; the detectors themselves are `analysis.detect`."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Sequence

import polars as pl

from analysis import metrics as M
from analysis.detect import collect_all_events, grokking, auto_window
from analysis.rules import GrokkingRule, PlateauRule, TransitionRule


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.detect",
        description="Classify every trial (comprehension, grokking, memorization, confusion) for a "
                    "train_<m>/heldout_<m> pair and list plateaus, transitions and grokking events.")
    ap.add_argument("paths", nargs="+", metavar="PATH",
                    help="study directory, Parquet file, directory of Parquet files or glob")
    ap.add_argument("--pair", action="append", help="metric pair m (train_m/heldout_m); repeatable; "
                    "default: every pair in the data")
    ap.add_argument("--metric", action="append", help="metric for plateaus/transitions; repeatable; default: "
                    "every column with a known direction")
    ap.add_argument("--json", action="store_true", help="one JSON object per line (trials, then events)")
    ap.add_argument("--no-events", action="store_true", help="print only the per-trial classification")
    ap.add_argument("--window", type=int, help="plateau/transition window in epochs (default: 5%% of the "
                    "median trial length, at least 5)")
    ap.add_argument("--hold", type=int, default=GrokkingRule.hold, help="epochs a threshold must hold")
    ap.add_argument("--min-delay", type=int, default=GrokkingRule.min_delay)
    ap.add_argument("--delay-ratio", type=float, default=GrokkingRule.delay_ratio)
    ap.add_argument("--train-threshold", type=float)
    ap.add_argument("--heldout-threshold", type=float)
    ap.add_argument("--ungrok-threshold", type=float)
    ap.add_argument("--direction", action="append", default=[], metavar="METRIC=max|min",
                    help="override a metric's direction; repeatable")
    return ap


def _jsonable(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `… | head`
        return 0


def _main(argv: Sequence[str] | None = None) -> int:
    from analysis.scan import ScanError, scan

    args = _parser().parse_args(argv)
    try:
        directions = M.parse_directions(args.direction)
        lf = scan(args.paths)
        schema = dict(lf.collect_schema())
        pairs = args.pair if args.pair else M.classifiable_pairs(schema, directions)
        window = args.window if args.window else auto_window(lf)
        grule = GrokkingRule(train_threshold=args.train_threshold, heldout_threshold=args.heldout_threshold,
                             ungrok_threshold=args.ungrok_threshold, hold=args.hold, ungrok_hold=args.hold,
                             min_delay=args.min_delay, delay_ratio=args.delay_ratio)
        ev = None
        if args.no_events:
            tables = [grokking(lf, pair, rule=grule, directions=directions) for pair in pairs]
            table = pl.concat(tables).collect(engine="in-memory") if tables else None
        else:
            table, ev = collect_all_events(
                lf, pairs=pairs, metrics=args.metric, directions=directions, grokking_rule=grule,
                plateau=PlateauRule(window=window, min_span=max(window, round(1.5 * window))),
                transition=TransitionRule(window=window))
        if not pairs:
            table = None
    except (ScanError, ValueError, pl.exceptions.PolarsError, OSError) as exc:
        print(f"analysis.detect: error: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    if args.json:
        if table is not None:
            for row in table.drop("params").iter_rows(named=True):
                out.write(json.dumps(_jsonable({"record": "trial", **row})) + "\n")
        if ev is not None:
            for row in ev.iter_rows(named=True):
                row["params"] = json.loads(row["params"])
                out.write(json.dumps(_jsonable({"record": "event", **row})) + "\n")
        return 0
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60,
                   tbl_hide_dataframe_shape=True):
        if table is None:
            out.write("no train_<m>/heldout_<m> pair in the data: no grokking classification\n")
        else:
            out.write("trials\n")
            out.write(str(table.select("study", "trial_id", "pair", "class", "t_mem", "t_gen", "delay",
                                       "ungrokked", "n_epochs", "heldout_final")) + "\n")
        if ev is not None:
            out.write(f"\nevents ({ev.height}; window {window} epochs)\n")
            out.write(str(ev.select("study", "trial_id", "event", "metric", "epoch", "epoch_end", "magnitude",
                                    "rule")) + "\n")
    return 0
