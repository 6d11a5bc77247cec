"""Benchmark: scan + every detector over a generated dataset (default 2,000 trials × 500 epochs = 1,000,000
epoch rows with train/held-out acc and loss pairs and a train-only coverage), written as a study-style Parquet
dataset. Prints a table and one JSON line: wall seconds (median of runs) of scan and of the detectors, and the
process's CPU seconds (steadier on a shared machine; `load_avg_1m` says how shared it was). Not a test: timings
on a shared machine are noisy (median of runs).

    python -m analysis.bench [--trials 2000] [--epochs 500] [--repeats 3] [--engine in-memory] [--keep DIR]

Polars' thread count is fixed when polars is first imported: set POLARS_MAX_THREADS in the environment.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    """CPU seconds of this process (all threads): steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", default="in-memory", choices=["in-memory", "streaming", "auto"],
                    help="polars engine for collect (default in-memory: about 2x less CPU than streaming here)")
    ap.add_argument("--keep", type=Path, help="write the dataset here and keep it (default: a temp dir)")
    args = ap.parse_args(argv)
    import polars as pl

    from analysis import detect, scan
    from analysis.synthetic import KINDS, dataset, write_study

    root = args.keep or Path(tempfile.mkdtemp(prefix="analysis-bench-"))
    try:
        kinds = [KINDS[i % len(KINDS)] for i in range(args.trials)]
        t0 = time.perf_counter()
        write_study(dataset(kinds, epochs=args.epochs, seed=0, study="bench"), root)
        write_s = time.perf_counter() - t0
        timings = {"scan_s": [], "detect_s": [], "total_s": [], "cpu_s": []}
        rows = n_events = 0
        for _ in range(args.repeats):
            c0 = _cpu()
            t0 = time.perf_counter()
            lf = scan(root)
            t1 = time.perf_counter()
            # what analysis.report computes: the grokking tables of every pair and every event row
            table, ev = detect.collect_all_events(lf, engine=args.engine)
            t2 = time.perf_counter()
            timings["cpu_s"].append(_cpu() - c0)
            rows = lf.select(pl.len()).collect().item()
            n_events = ev.height
            for k, v in (("scan_s", t1 - t0), ("detect_s", t2 - t1), ("total_s", t2 - t0)):
                timings[k].append(v)
        med = {k: round(statistics.median(v), 3) for k, v in timings.items()}
        classes = dict(table.group_by("class").len().iter_rows())
        result = {"bench": "analysis", "trials": args.trials, "epochs": args.epochs, "rows": rows,
                  "events": n_events, "classes": classes, "repeats": args.repeats, "engine": args.engine,
                  "write_s": round(write_s, 2), "threads": pl.thread_pool_size(),
                  "load_avg_1m": round(os.getloadavg()[0], 1), **med,
                  "runs_total_s": [round(v, 3) for v in timings["total_s"]]}
        print(f"{'step':<12}{'median s':>10}")
        for k in ("scan_s", "detect_s", "total_s", "cpu_s"):
            print(f"{k:<12}{med[k]:>10.3f}")
        print(json.dumps(result))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
