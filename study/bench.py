"""``python -m study.bench``: trial-epochs per second of a study against the bare trainer on the same machine.

1. A real study (private local Ray with its dashboard, Optuna, Parquet rows, checkpoints) of TRIALS trials ×
   EPOCHS epochs, CONCURRENCY at once with --cpus-per-trial CPUs (and --gpus-per-trial GPUs) each; timed over
   `Tuner.fit()` (Ray's own start-up is reported apart: a study pays it once).
2. The bare trainer (`study.bare_worker`, one process per trial, no Ray) on the *same* trials' overrides, the
   same number at once, with the thread limits Ray gives its workers (1 torch thread, OMP_NUM_THREADS=1);
   timed from the first process start to the last exit.
Both include process/actor start-up, imports and building each run. Prints a table and one JSON line.

With ``--population K``, the comparison is instead two real studies of the same trials (the sampler's seeded
start-up draws: keep TRIALS ≤ 10 for identical parameters, the output says whether they were): one trial per
process against cohorts of K trials per Ray Tune trial (`study.cohort_trainable`), CONCURRENCY Tune trials at
once each, the order alternating between repeats.

On a GPU, --gpus-per-trial 0.25 --concurrency 4 packs four trials on one card: the study figure is then the
aggregate throughput of the packed card.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _overrides(space, params: dict) -> dict:
    import optuna

    return {**space.fixed, **space.define(optuna.trial.FixedTrial(params))}


def run_study(space, config, location) -> tuple[float, float, list[dict], list[float]]:
    """(Ray start-up seconds, fit seconds, the trials' params, every row's epoch_seconds)."""
    from study import cluster, recorder, trials_table, tune_driver

    t0 = time.perf_counter()
    cluster.start(None, dashboard_port=None)
    t1 = time.perf_counter()
    try:
        tuner, callback = tune_driver.build_tuner(space, config, location, resume=False)
        outcome = tune_driver.fit(tuner, config.trials, callback.scheduler)
        t2 = time.perf_counter()
    finally:
        cluster.stop()
    if outcome.interrupted or set(outcome.statuses.values()) != {"COMPLETED"}:
        raise RuntimeError(f"benchmark study did not complete: {outcome.statuses}")
    rows = trials_table.read(location).to_pylist()
    params = [{k[len("param_"):]: v for k, v in r.items() if k.startswith("param_") and v is not None}
              for r in rows]
    epoch_seconds = recorder.read_epochs(location, columns=["epoch_seconds"])["epoch_seconds"].to_pylist()
    return t1 - t0, t2 - t1, params, epoch_seconds


def compare_population(space, args) -> int:
    """Two real studies side by side, a trial per process against cohorts of ``args.population``."""
    from study.config import StudyConfig
    from study.layout import StudyLocation

    seconds: dict[int, list[float]] = {1: [], args.population: []}
    params: dict[int, list[dict]] = {}
    for repeat in range(args.repeats):
        order = [1, args.population] if repeat % 2 == 0 else [args.population, 1]
        for population in order:
            with tempfile.TemporaryDirectory(prefix="tvae-bench-") as tmp:
                config = StudyConfig(space=space.name, name=f"bench{repeat}k{population}", trials=args.trials,
                                     epochs=args.epochs, concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial,
                                     gpus_per_trial=args.gpus_per_trial, results=tmp, seed=args.seed, scheduler="fifo",
                                     checkpoint_every=args.checkpoint_every, population=population)
                location = StudyLocation.open(tmp, config.name)
                location.makedirs(location.path)
                _started, fitted, params[population], _rows = run_study(space, config, location)
                seconds[population].append(fitted)
    work = args.trials * args.epochs
    rate = {k: work / statistics.median(v) for k, v in seconds.items()}
    same = sorted(map(_key, params[1])) == sorted(map(_key, params[args.population]))
    ratio = rate[args.population] / rate[1]
    print(f"{'':30}{'seconds':>10}{'trial-epochs/s':>16}")
    print(f"{'study, a trial per process':30}{statistics.median(seconds[1]):>10.1f}{rate[1]:>16.3f}")
    print(f"{'study, cohorts of ' + str(args.population):30}{statistics.median(seconds[args.population]):>10.1f}"
          f"{rate[args.population]:>16.3f}")
    print(f"cohorts / a trial per process: {ratio:.2f}×  ({args.trials} trials × {args.epochs} epochs, "
          f"{args.concurrency} Tune trials at once, space {space.name}, same parameters: {'yes' if same else 'no'}, "
          f"{args.repeats} repeat(s), medians of Tuner.fit seconds)")
    print(json.dumps({"bench": "study_population", **_measured_setup(space, args), "population": args.population,
                      "single_seconds": seconds[1], "cohort_seconds": seconds[args.population],
                      "single_trial_epochs_per_s": rate[1], "cohort_trial_epochs_per_s": rate[args.population],
                      "cohort_over_single": ratio, "same_parameters": same}))
    return 0


def _measured_setup(space, args) -> dict:
    """What a JSON line of the bench records about the setup it measured."""
    return {"space": space.name, "trials": args.trials, "epochs": args.epochs, "concurrency": args.concurrency,
            "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "checkpoint_every": args.checkpoint_every, "repeats": args.repeats}


def _key(params: dict) -> str:
    return json.dumps({k: round(v, 12) if isinstance(v, float) else v for k, v in params.items()}, sort_keys=True)


def run_bare(space, params: list[dict], epochs: int, seed: int, concurrency: int, device: str,
             threads: int, epoch_seconds: list[float] | None = None) -> float:
    """Wall seconds for the bare trainer to train every trial, ``concurrency`` processes at once (each
    epoch's own seconds are appended to ``epoch_seconds``)."""
    specs = [json.dumps({"task": space.task, "overrides": _overrides(space, p), "epochs": epochs, "seed": seed,
                         "device": device, "threads": threads}) for p in params]
    # the same thread limits Ray gives its workers (OMP_NUM_THREADS = the task's CPUs; numpy's BLAS follows it),
    # so the comparison is not skewed by BLAS threads oversubscribing the cores
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, int(threads))))
    start = time.perf_counter()
    running: list[subprocess.Popen] = []
    while specs or running:
        while specs and len(running) < concurrency:
            running.append(subprocess.Popen([sys.executable, "-m", "study.bare_worker", specs.pop(0)], cwd=REPO,
                                            env=env, stdout=subprocess.PIPE, text=True))
        for proc in list(running):
            if proc.poll() is not None:
                out = proc.stdout.read()
                if proc.returncode != 0:
                    raise RuntimeError(f"bare worker failed ({proc.returncode}): {out}")
                if epoch_seconds is not None:
                    epoch_seconds.extend(json.loads(out.strip().splitlines()[-1])["epoch_seconds"])
                running.remove(proc)
        time.sleep(0.05)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="baseline", help="search space (default baseline: the v5.12.4 recipe)")
    parser.add_argument("--trials", type=int, default=2, help="trials (default 2)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per trial (default 30)")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once (default 2)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (default 0)")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="study checkpoint cadence (default 10)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat both measurements; medians reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--population", type=int, default=None,
                        help="compare a study with cohorts of this many trials against one with a trial per process "
                             "(instead of the bare trainer)")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import search_spaces
    from study.config import StudyConfig
    from study.layout import StudyLocation

    space = search_spaces.get(args.space)
    if args.population is not None:
        if args.population < 2:
            parser.error("--population: give the cohort size to compare, ≥ 2")
        return compare_population(space, args)
    device = "cuda" if args.gpus_per_trial > 0 else "cpu"
    ray_s, study_s, bare_s = [], [], []
    study_epoch_s: list[float] = []
    bare_epoch_s: list[float] = []
    params: list[dict] | None = None
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="tvae-bench-") as tmp:
            # the same seed every repeat: the same trials; the order alternates so drift hits both sides
            config = StudyConfig(space=space.name, name=f"bench{repeat}", trials=args.trials, epochs=args.epochs,
                                 concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial,
                                 gpus_per_trial=args.gpus_per_trial, results=tmp, seed=args.seed,
                                 scheduler="fifo", checkpoint_every=args.checkpoint_every)
            location = StudyLocation.open(tmp, config.name)
            location.makedirs(location.path)
            bare_first = params is not None and repeat % 2 == 1
            if bare_first:
                bare_s.append(run_bare(space, params, args.epochs, config.seed, args.concurrency, device, 1,
                                       bare_epoch_s))
            started, fitted, params, rows = run_study(space, config, location)
            study_epoch_s.extend(rows)
            ray_s.append(started)
            study_s.append(fitted)
            if not bare_first:
                bare_s.append(run_bare(space, params, args.epochs, config.seed, args.concurrency, device, 1,
                                       bare_epoch_s))
    work = args.trials * args.epochs
    study_rate, bare_rate = work / statistics.median(study_s), work / statistics.median(bare_s)
    ratio = study_rate / bare_rate
    print(f"{'':24}{'seconds':>10}{'trial-epochs/s':>16}")
    print(f"{'bare trainer':24}{statistics.median(bare_s):>10.1f}{bare_rate:>16.3f}")
    print(f"{'study (Tuner.fit)':24}{statistics.median(study_s):>10.1f}{study_rate:>16.3f}")
    print(f"{'  + Ray start-up':24}{statistics.median(ray_s):>10.1f}")
    print(f"median seconds per epoch inside a trial: bare {statistics.median(bare_epoch_s):.3f}, "
          f"study {statistics.median(study_epoch_s):.3f}")
    print(f"study / bare: {ratio:.1%}  ({args.trials} trials × {args.epochs} epochs, {args.concurrency} at once, "
          f"{args.cpus_per_trial} CPU + {args.gpus_per_trial} GPU each, space {space.name}, "
          f"{args.repeats} repeat(s), medians)")
    print(json.dumps({"bench": "study", **_measured_setup(space, args), "bare_seconds": bare_s, "study_seconds": study_s,
                      "ray_start_seconds": ray_s, "bare_trial_epochs_per_s": bare_rate,
                      "study_trial_epochs_per_s": study_rate, "study_over_bare": ratio,
                      "bare_median_epoch_seconds": statistics.median(bare_epoch_s),
                      "study_median_epoch_seconds": statistics.median(study_epoch_s)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
