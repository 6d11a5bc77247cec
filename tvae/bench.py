"""``python -m tvae.bench``: time training and evaluation per epoch of the TernaryVAE trainer.

    python -m tvae.bench [--device cpu|cuda] [--threads N] [--epochs N] [--preset v5_12_4] [--set KEY=VALUE ...]
                         [--no-cuda-graphs] [--single-stream] [--compile] [--whole-run]

One coverage epoch runs first (not timed, it also warms up); then ``--epochs`` epochs are timed, the first half
in the structure phase and the rest in the geometry phase (the phases that dominate a run). Prints a table of
medians, then one JSON line with ``train_epoch_s``, ``eval_s``, ``epoch_s``, ``device``, ``threads``.
``epoch_s`` is the median of the per-epoch sums (training + the full evaluation every epoch gets).

``--population K[,K...]`` times the cohort engine (`tvae.cohort`): K members (seeds 0..K-1) trained as one
cohort, on the same schedule. With several K (and ``--single``, the single-run trainer as well) the
candidates train side by side, one epoch of each in turn, so that a loaded machine slows them alike. Each prints
a JSON line with ``population``, ``epoch_s`` (one cohort epoch, training + evaluation, median) and
``trial_epochs_s`` (= K / epoch_s), the medians of its training and evaluation apart (``train_s``, ``eval_s``),
the process CPU seconds of the epoch, and ``ops_per_epoch``: the operations
one more (untimed) epoch dispatches to torch's kernels (on a GPU, kernel launches and views; a CUDA-graph
replay counts as none: what should not grow with K); on a GPU also
``epoch_gpu_mib_per_member``: the most GPU memory one of its epochs allocated beyond what was allocated before
it (activations, inputs, gradients, evaluation blocks), divided by K; the parameters and Adam state of one member
take 4 × 3 bytes per parameter on top. ``--cohort-steps eager|graph`` picks how the cohort's steps run (default:
the device's, graph form on CUDA, eager elsewhere; `tvae.cohort.engine`); on CUDA ``--no-cuda-graphs`` runs the
graph form without replaying it as CUDA graphs. The JSON line names the way in ``steps``.

``--whole-run`` times every epoch of the preset's own schedule instead (``--epochs`` in all, default the
preset's; coverage included): what a study's trial costs, with the homeostasis freezes and the late epochs
that the default's early epochs do not show. Its JSON line adds ``total_s`` and ``mean_epoch_s``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvae.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None,
                   help="timed epochs (default 10; with --whole-run, the preset's epochs)")
    p.add_argument("--preset", default="v5_12_4")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="GPU: run the steps eagerly instead of replaying one CUDA graph per epoch")
    p.add_argument("--single-stream", action="store_true",
                   help="GPU: run the A and B paths of a step on one stream (default: two; tvae.execution)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each step's loss (compiles once per phase: the 'max' column shows it)")
    p.add_argument("--whole-run", action="store_true",
                   help="time every epoch of the preset's own phases and schedule (see above)")
    p.add_argument("--population", default=None, metavar="K[,K...]",
                   help="time cohorts of K members (tvae.cohort), side by side when several")
    p.add_argument("--single", action="store_true",
                   help="with --population: also time the single-run trainer, side by side")
    p.add_argument("--cohort-steps", choices=["eager", "graph"], default=None,
                   help="with --population: the cohort's steps eagerly or in graph form (default: the device's)")
    args = p.parse_args(argv)
    if args.population is not None:
        try:
            sizes = [int(x) for x in args.population.split(",")]
        except ValueError:
            p.error(f"--population: expected K[,K...] with integers, got {args.population!r}")
        if any(k < 1 for k in sizes):
            p.error("--population: every K must be >= 1")
        if args.whole_run or args.compile:
            p.error("--population times the bench schedule; drop --whole-run/--compile")
        return _population(args, sizes)
    if args.epochs is None and not args.whole_run:
        args.epochs = 10
    if args.epochs is not None and args.epochs < 2:
        p.error("--epochs must be >= 2")
    import torch

    torch.set_num_threads(args.threads)
    from tvae import config as config_mod, trainer

    try:
        overrides = dict(config_mod.parse_assignment(s) for s in args.sets)
        if args.whole_run:
            cfg = config_mod.build(args.preset, overrides=overrides, epochs=args.epochs, seed=0)
        else:
            overrides.update({"phases.structure_start": 1, "phases.geometry_start": 1 + args.epochs // 2})
            cfg = config_mod.build(args.preset, overrides=overrides, epochs=1 + args.epochs, seed=0)
        run = trainer.run_from_config(cfg, args.device, cuda_graphs=args.cuda_graphs, compile=args.compile,
                                      two_streams=False if args.single_stream else None)
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.whole_run:
        run.train_epoch()                               # coverage epoch: warm-up, not timed
    rows = []
    for _ in range(run.epochs - run.epoch):
        row = run.train_epoch()
        t = run.timings
        rows.append((row["phase"], t["train_s"], t["eval_s"], t["train_cpu_s"], t["eval_cpu_s"]))
    med = statistics.median
    epoch_s = [r[1] + r[2] for r in rows]                # training + evaluation of each epoch
    train = med([r[1] for r in rows])
    ev = med([r[2] for r in rows])
    total = med(epoch_s)
    graphs = run.graphs is not None
    print(f"tvae.bench  preset={args.preset} device={args.device} threads={args.threads} "
          f"timed epochs={len(rows)}{' (whole run)' if args.whole_run else ''} load={os.getloadavg()[0]:.2f}"
          + (f" cuda_graphs={graphs} streams={2 if run.execution.two_streams else 1}" if args.device == "cuda" else "")
          + (" compile=True" if args.compile else ""))
    if graphs:
        print("the first epoch of each phase runs eagerly and captures the graph (its time: the 'max' column)")
    print("wall-clock medians (s); cpu = process CPU time, a check when the machine is loaded")
    print(f"{'phase':<10}{'epochs':>7}{'train':>9}{'eval':>9}{'epoch':>9}{'cpu train':>11}{'cpu eval':>10}{'max':>9}")
    for phase in ("coverage", "structure", "geometry", "all"):
        sel = [r for r in rows if r[0] == phase or phase == "all"]
        if sel:
            print(f"{phase:<10}{len(sel):>7}{med([r[1] for r in sel]):>9.4f}{med([r[2] for r in sel]):>9.4f}"
                  f"{med([r[1] + r[2] for r in sel]):>9.4f}{med([r[3] for r in sel]):>11.4f}"
                  f"{med([r[4] for r in sel]):>10.4f}{max(r[1] + r[2] for r in sel):>9.4f}")
    print(json.dumps({"train_epoch_s": round(train, 5), "eval_s": round(ev, 5), "epoch_s": round(total, 5),
                      "device": args.device, "threads": args.threads}
                     | ({"cuda_graphs": graphs} if args.device == "cuda" else {})
                     | ({"compile": True} if args.compile else {})
                     | ({"whole_run": True, "total_s": round(sum(epoch_s), 3),
                         "mean_epoch_s": round(sum(epoch_s) / len(epoch_s), 5)}
                        if args.whole_run else {})))
    return 0


def _population(args, sizes: list[int]) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from tvae import config as config_mod, trainer
    from tvae.cohort import Cohort

    epochs = args.epochs or 10
    try:
        overrides = dict(config_mod.parse_assignment(s) for s in args.sets)
        overrides.update({"phases.structure_start": 1, "phases.geometry_start": 1 + epochs // 2})
        # the coverage epoch, the timed epochs, then one counted epoch
        build = lambda seed: config_mod.build(args.preset, overrides=overrides, epochs=2 + epochs, seed=seed)  # noqa: E731
        graph_steps = None if args.cohort_steps is None else args.cohort_steps == "graph"
        cuda_graphs = None if args.cuda_graphs else False
        candidates: list[tuple[str, int, Any]] = [
            (f"cohort K={k}", k, Cohort([build(s) for s in range(k)], args.device, graph_steps=graph_steps,
                                        cuda_graphs=cuda_graphs))
            for k in sizes]
        if args.single:
            candidates.insert(0, ("single run", 1, trainer.run_from_config(build(0), args.device)))
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    for _, _, engine in candidates:
        engine.train_epoch()                            # coverage epoch: warm-up, not timed
    times: dict[str, list[tuple[float, ...]]] = {name: [] for name, _, _ in candidates}  # epoch, cpu, train, eval
    peak: dict[str, int] = {name: 0 for name, _, _ in candidates}   # GPU bytes an epoch adds to what was allocated
    for _ in range(epochs):
        for name, _, engine in candidates:              # side by side: one epoch of each in turn
            if cuda:
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            engine.train_epoch()
            if cuda:
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated() - before)
            t = engine.timings
            times[name].append((t["train_s"] + t["eval_s"], t["train_cpu_s"] + t["eval_cpu_s"], t["train_s"],
                                t["eval_s"]))
    ops = {name: _count_ops(engine.train_epoch) for name, _, engine in candidates}
    med = statistics.median
    print(f"tvae.bench --population  preset={args.preset} device={args.device} threads={args.threads} "
          f"timed epochs={epochs} (side by side) load={os.getloadavg()[0]:.2f}")
    print(f"{'engine':<16}{'K':>5}{'epoch_s':>10}{'trial-epochs/s':>16}{'cpu epoch_s':>13}{'cpu trial-ep/s':>16}"
          f"{'ops/epoch':>11}")
    lines = []
    for name, k, engine in candidates:
        wall, cpu, train, ev = (med([t[i] for t in times[name]]) for i in range(4))
        print(f"{name:<16}{k:>5}{wall:>10.4f}{k / wall:>16.3f}{cpu:>13.4f}{k / cpu:>16.3f}{ops[name]:>11}")
        lines.append({"engine": "single" if name == "single run" else "cohort", "population": k,
                      "epoch_s": round(wall, 5), "trial_epochs_s": round(k / wall, 4),
                      "train_s": round(train, 5), "eval_s": round(ev, 5),
                      "cpu_epoch_s": round(cpu, 5), "cpu_trial_epochs_s": round(k / cpu, 4),
                      "device": args.device, "threads": args.threads, "steps": _steps_way(engine),
                      "ops_per_epoch": ops[name]}
                     | ({"epoch_gpu_mib_per_member": round(peak[name] / k / 2 ** 20, 2)} if cuda else {}))
    for line in lines:
        print(json.dumps(line))
    return 0


def _count_ops(fn) -> int:
    """How many operations ``fn()`` dispatches to torch's kernels (aten calls, views included): on a GPU each
    one that is not a view is a kernel launch; a CUDA-graph replay counts as none."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as count:
        fn()
    return count.n


def _steps_way(engine: Any) -> str:
    """How an engine's steps run: the single run's own way, or a cohort's eager / graph form (+ CUDA graphs)."""
    if not hasattr(engine, "graph_steps"):
        return "single"
    if not engine.graph_steps:
        return "eager"
    return "graph+cuda-graphs" if engine.cuda_graphs else "graph"


if __name__ == "__main__":
    sys.exit(main())
