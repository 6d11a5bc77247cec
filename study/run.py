"""``python -m study.run``: run (or resume) a study of many trials on Ray Tune with Optuna sampling.

A study lives in RESULTS/NAME (default results/<space>). If it is interrupted (Ctrl-C, SIGTERM, a killed
driver, a reboot), the command printed at start-up continues it:  python -m study.run --name NAME --resume.

Exit status: 0 all trials finished; 1 some trials failed after their retries (--resume retries them);
2 bad arguments; 130 interrupted (the resume command is printed).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import signal
import sys
from typing import Any

EXIT_OK, EXIT_FAILED_TRIALS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_HELP = {
    "space": "search space name (list them with `python -m search_spaces`); sets the task, the metric and "
             "the defaults below",
    "name": "study name: the folder RESULTS/NAME (default: the space name)",
    "trials": "number of trials to finish (default: the space's)",
    "epochs": "epochs per trial (default: the space's)",
    "concurrency": "trials running at once (default 2)",
    "cpus_per_trial": "CPUs Ray reserves per trial (default 1); each trial uses --threads-per-trial torch threads",
    "gpus_per_trial": "GPUs per trial; a fraction such as 0.25 packs 4 trials on one card (default 0 = CPU). "
                      "Ray only counts fractions: make sure the trials fit in the card's memory",
    "address": "join an existing Ray cluster (e.g. 10.0.0.5:6379 or ray://...) instead of starting a private "
               "local one; --results must then be storage every node reaches",
    "results": "results root, a local path or a pyarrow filesystem URI (file:///…, s3://…, gs://…, hdfs://…) "
               "(default: results)",
    "seed": "seed of the Optuna sampler and of every trial's run (default 0)",
    "scheduler": "fifo (run every trial to the end) or grokking_asha (ASHA that never stops a trial before "
                 "its grace period nor once it has memorised) (default: the space's)",
    "grace_period": "grokking_asha: no trial is stopped before this epoch (default: the space's)",
    "checkpoint_every": "epochs between trial checkpoints; the epoch rows reach the Parquet dataset at each "
                        "checkpoint, and a resumed trial loses at most this many epochs (default 10)",
    "max_failures": "retries of a trial that crashes (a diverging trial is never retried) (default 2)",
    "threads_per_trial": "torch threads in each trial (default 1)",
    "dashboard_port": "port of the local Ray dashboard on 127.0.0.1 (default: 8265, or the next free port)",
    "resume": "continue the study RESULTS/NAME: finish the requested trials, continue unfinished ones from "
              "their last checkpoint, keep the sampler's knowledge",
    "set": "KEY=VALUE: fix a task config key for every trial (repeatable), e.g. --set optim.weight_decay=0.1; "
           "the key must exist and not be one the space searches; VALUE is JSON (1e-3, 3, true, null, [..]), "
           "else a decimal number (.5), else text",
    "population": "study trials trained together as one cohort in each Ray Tune trial (one process, stacked "
                  "parameters; each trial keeps its own Optuna trial, rows, status and early stopping). Default 1: a "
                  "trial per process. docs/cohorts.md",
    "dry_run": "print the plan (new study, or what a resume would skip, continue, retry or start) and exit",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--space", help=_HELP["space"])
    add("--name", help=_HELP["name"])
    add("--trials", type=int, help=_HELP["trials"])
    add("--epochs", type=int, help=_HELP["epochs"])
    add("--concurrency", type=int, help=_HELP["concurrency"])
    add("--cpus-per-trial", type=float, help=_HELP["cpus_per_trial"])
    add("--gpus-per-trial", type=float, help=_HELP["gpus_per_trial"])
    add("--address", help=_HELP["address"])
    add("--results", help=_HELP["results"])
    add("--seed", type=int, help=_HELP["seed"])
    add("--scheduler", choices=["fifo", "grokking_asha"], help=_HELP["scheduler"])
    add("--grace-period", type=int, help=_HELP["grace_period"])
    add("--checkpoint-every", type=int, help=_HELP["checkpoint_every"])
    add("--max-failures", type=int, help=_HELP["max_failures"])
    add("--threads-per-trial", type=int, help=_HELP["threads_per_trial"])
    add("--population", type=int, help=_HELP["population"])
    add("--dashboard-port", type=int, help=_HELP["dashboard_port"])
    add("--set", action="append", metavar="KEY=VALUE", help=_HELP["set"])
    add("--resume", action="store_true", help=_HELP["resume"])
    add("--dry-run", action="store_true", help=_HELP["dry_run"])
    return parser


def _given(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"resume", "dry_run", "set"}
    return {k: v for k, v in vars(args).items() if v is not None and k not in skip}


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1e-3", "c=x"]`` → ``{"a.b": 0.001, "c": "x"}`` (the grammar of ``tvae.configlib.parse_value``)."""
    from tvae.configlib import parse_assignments

    return parse_assignments(items)


def check_sets(space, sets: dict[str, Any]) -> None:
    """Refuse --set keys the space searches, and keys or values the task does not accept (named)."""
    if not sets:
        return
    from search_spaces.describe import searched_keys
    from tvae import tasks

    searched = sorted(searched_keys(space) & set(sets))
    if searched:
        raise ValueError(f"--set {', '.join(searched)}: the space {space.name!r} searches "
                         f"{'this key' if len(searched) == 1 else 'these keys'}; choose another space or key")
    try:
        tasks.make_run(space.task, {**space.fixed, **sets}, epochs=1, seed=0)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"--set rejected by task {space.task!r}: {exc}") from None


def _new_config(given: dict[str, Any], sets: dict[str, Any]):
    import search_spaces
    from study.config import COHORT_TASKS, StudyConfig

    if "space" not in given:
        raise ValueError("--space is required for a new study (list them with `python -m search_spaces`)")
    space = search_spaces.get(given["space"])
    values = {"name": given.get("name", space.name), "trials": space.trials, "epochs": space.epochs,
              "scheduler": space.scheduler, "grace_period": space.grace_period, "results": "results"}
    values.update(given)
    if given.get("population", 1) > 1 and space.task not in COHORT_TASKS:
        raise ValueError(f"--population {given['population']}: the task {space.task!r} of the space {space.name!r} "
                         f"has no cohort engine (cohorts: {', '.join(COHORT_TASKS)}); use --population 1")
    if sets:
        check_sets(space, sets)
        values["extra"] = {"set": sets}
    return space, StudyConfig(**values)


def _resumed_config(given: dict[str, Any], location, sets: dict[str, Any]):
    import search_spaces
    from study.config import StudyConfig, check_same_identity
    from study.progress import read_study_json

    stored = StudyConfig.from_dict(read_study_json(location)["arguments"])
    check_same_identity(stored, given)
    stored_sets = stored.extra.get("set", {})
    if sets and sets != stored_sets:
        raise ValueError(f"cannot resume with different --set values: {sets} (the study has {stored_sets}). "
                         "Start a new study with another --name to change them.")
    runtime = {k: given[k] for k in ("address", "results", "dashboard_port", "threads_per_trial") if k in given}
    config = StudyConfig(**{**stored.to_dict(), **runtime, "address": given.get("address")})
    return search_spaces.get(config.space), config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = _given(args)
    from study.layout import STUDY_JSON, StudyLocation

    try:
        if args.resume:
            if "name" not in given:
                return _fail("--resume needs --name (and --results if the study is not under results/)")
            location = StudyLocation.open(given.get("results", "results"), given["name"])
            if not location.exists(location.join(STUDY_JSON)):
                if "space" not in given:
                    return _fail(f"nothing to resume: no study at {location.display} "
                                 "(give --space to start it, --resume then continues it if it exists)")
                args.resume = False   # the idempotent form: start it now, resume it next time
                print(f"No study at {location.display} yet: starting it.")
        if args.resume:
            space, config = _resumed_config(given, location, parse_sets(args.set))
            # printed commands and every node see the results root as the parser resolved it (absolute path)
            config = dataclasses.replace(config, results=location.results)
        else:
            space, config = _new_config(given, parse_sets(args.set))
            location = StudyLocation.open(config.results, config.name)
            config = dataclasses.replace(config, results=location.results)
            if location.exists(location.join(STUDY_JSON)):
                return _fail(f"study {config.name!r} already exists at {location.display}; continue it with\n"
                             f"  {config.resume_command()}\nor choose another --name")
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        return _fail(str(exc))

    if args.dry_run:
        return _dry_run(space, config, location, args.resume)
    try:
        check_writable(location)
        if args.resume:
            from study import preflight

            for note in preflight.run(location):
                print(f"repaired: {note}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    return _run(space, config, location, args.resume)


def check_writable(location) -> None:
    """Fail early, naming the place, when the study directory cannot be created or written."""
    probe = location.join(f".write-probe-{os.getpid()}")
    try:
        location.makedirs(location.path)
        location.write_atomic(probe, b"")
        location.delete_file(probe)
    except OSError as exc:
        raise OSError(f"--results {location.results!r}: cannot write the study directory {location.display} "
                      f"({exc.strerror or exc})") from None


def check_resources(config) -> None:
    """Refuse a trial that no node of the Ray cluster can ever hold (Tune would wait for it forever)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= config.cpus_per_trial and n.get("GPU", 0) >= config.gpus_per_trial for n in nodes):
        return
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    raise ValueError(f"impossible resource request: a trial asks for --cpus-per-trial {config.cpus_per_trial:g} "
                     f"--gpus-per-trial {config.gpus_per_trial:g}, but the largest node of the Ray cluster has "
                     f"{cpus:g} CPU(s) and {gpus:g} GPU(s)")


def _dry_run(space, config, location, resume: bool) -> int:
    from study import resume as resume_plan

    if resume:
        for line in resume_plan.plan(location):
            print(line)
    else:
        print(f"New study {config.name!r} at {location.display}: space {space.name} (task {space.task}), "
              f"{config.trials} trials × {config.epochs} epochs, {config.concurrency} at once, "
              f"{config.cpus_per_trial} CPU + {config.gpus_per_trial} GPU per trial, "
              + (f"cohorts of {config.population} trials (each CPU/GPU figure per cohort), " if config.population > 1
                 else "") + f"scheduler {config.scheduler}, "
              f"optimising {space.metric} ({space.mode}), seed {config.seed}, checkpoints every "
              f"{config.checkpoint_every} epochs, on " + (f"the cluster at {config.address}" if config.address
                                                           else "a private local Ray"))
    return EXIT_OK


def _write_study_json(space, config, location, resume: bool) -> None:
    from study.config import study_record
    from study.layout import SCHEMA_VERSION, STUDY_JSON

    path = location.join(STUDY_JSON)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if resume:
        record = location.read_json(path)
        record.setdefault("resumed", []).append(now)
    else:
        record = study_record(config, task=space.task, metric=space.metric, mode=space.mode,
                              schema_version=SCHEMA_VERSION)
    location.write_json(path, record)


def _sigterm_as_sigint() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


def _run(space, config, location, resume: bool) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our Parquet rows are the record
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")
    # Tune forces an experiment snapshot when a trial has checkpointed num_to_keep (2) times since the last one,
    # and warns when that happens within 5 s: with short epochs it does, by design (the snapshot is what a
    # resume starts from), so the warning only alarms users
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    resume_cmd = config.resume_command()
    # SIGTERM behaves like Ctrl-C: Tune saves its state and stops the trials
    _sigterm_as_sigint()
    from study import cluster, compat

    try:
        compat.require_tested_versions()   # before Ray starts or anything is written
    except compat.UntestedVersionError as exc:
        return _fail(str(exc))

    ray_up = False   # cluster.start returned: an interrupt before that may have cut ray.init off
    try:
        try:
            info = cluster.start(config.address, dashboard_port=config.dashboard_port)
        except cluster.RayStartError as exc:
            print(f"error: {exc}\nNothing was written to the study directory; run the same command again.", file=sys.stderr)
            return EXIT_FAILED_TRIALS
        ray_up = True
        _sigterm_as_sigint()   # again: ray.init installs its own SIGTERM handler, which would just exit
        try:
            check_resources(config)   # before study.json: a refused new study leaves nothing behind
        except ValueError as exc:
            return _fail(str(exc))
        location.makedirs(location.path)
        _write_study_json(space, config, location, resume)
        print(f"Study {config.name!r} ({'resumed' if resume else 'new'}): {location.display}")
        print(f"If it is interrupted, continue it with:\n  {resume_cmd}", flush=True)
        print(cluster.dashboard_help(info), flush=True)
        from study import tune_driver

        if resume and not tune_driver.can_restore(location):
            resume = False  # killed before Tune wrote its first snapshot: start the trials afresh
            print("No Ray Tune state stored yet: starting the trials from the beginning.")
        tuner, callback = tune_driver.build_tuner(space, config, location, resume)
        outcome = tune_driver.fit(tuner, config.trials, callback.scheduler)
        cleaned = None if outcome.interrupted else tune_driver.finish_study(location, outcome, space.metric)
    except (KeyboardInterrupt, SystemExit) as exc:
        # a SIGTERM inside ray.init meets Ray's own handler, sys.exit(SIGTERM), before ours is back: same case
        if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
            raise
        from study.layout import STUDY_JSON

        if location.exists(location.join(STUDY_JSON)):
            print(f"\nInterrupted. Continue the study with:\n  {resume_cmd}", file=sys.stderr)
        else:
            print("\nInterrupted before the study started: nothing was stored; run the same command again.",
                  file=sys.stderr)
        if isinstance(exc, SystemExit):
            # Ray's core worker was cut off while connecting: its C++ teardown at interpreter exit can abort
            # (seen: exit 134 after this message). Stop Ray and what it started, then leave without that teardown.
            cluster.stop(interrupted_start=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    finally:
        if "study.object_journal" in sys.modules:   # a study on an object store: the journal's last upload
            try:
                sys.modules["study.object_journal"].sync_all()
            except OSError as exc:   # the store is unreachable: say so, still stop Ray
                print(f"error: the last upload of the Optuna journal failed: {exc}", file=sys.stderr)
        if "ray" in sys.modules:   # absent when Ctrl-C interrupted `import ray` itself: nothing to stop
            cluster.stop(interrupted_start=not ray_up)

    if outcome.interrupted:
        print(f"\nStudy interrupted: {outcome.finished} of {outcome.requested} trials finished. "
              f"Continue it with:\n  {resume_cmd}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _report_end(location, outcome, cleaned, resume_cmd)


def _report_end(location, outcome, cleaned, resume_cmd: str) -> int:
    from collections import Counter

    counts = Counter(outcome.statuses.values())
    print(f"\nStudy {location.name!r} done: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    if cleaned["optuna_failed"] or cleaned["partitions_removed"]:
        print(f"  cleaned up after an earlier killed driver: Optuna trials {cleaned['optuna_failed']} marked "
              f"FAIL, rows of unrecorded trials {cleaned['partitions_removed']} removed")
    from study.object_journal import dashboard_command

    print(f"Results: {location.display}")
    print(f"  progress and best trial:  python -m study.status {location.arg}")
    print(f"  report (HTML, figures):   python -m analysis.report {location.arg}")
    print(f"  Optuna dashboard:         {dashboard_command(location)}")
    if counts.get("ERROR"):
        print(f"{counts['ERROR']} trial(s) failed after their retries; retry them with:\n  {resume_cmd}",
              file=sys.stderr)
        return EXIT_FAILED_TRIALS
    return EXIT_OK


def _cli() -> int:
    """The command line: a Ctrl-C before the study is set up (imports, argument checks) exits cleanly too."""
    try:
        return main()
    except KeyboardInterrupt:
        print("\nInterrupted before the study started: nothing was stored; run the same command again.",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(_cli())
