"""``python -m tvae.bench``: time training and evaluation per epoch of the TernaryVAE trainer.

    python -m tvae.bench [--device cpu|cuda] [--threads N] [--epochs N] [--preset v5_12_4] [--set KEY=VALUE ...]
                         [--no-cuda-graphs] [--single-stream] [--compile]

One coverage epoch runs first (not timed, it also warms up); then ``--epochs`` epochs are timed, the first half
in the structure phase and the rest in the geometry phase (the phases that dominate a run). Prints a table of
medians, then one JSON line with ``train_epoch_s``, ``eval_s``, ``epoch_s``, ``device``, ``threads``.
``epoch_s`` is the median of the per-epoch sums (training + the full evaluation every epoch gets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvae.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10, help="timed epochs (default 10)")
    p.add_argument("--preset", default="v5_12_4")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="GPU: run the steps eagerly instead of replaying one CUDA graph per epoch")
    p.add_argument("--single-stream", action="store_true",
                   help="GPU: run the A and B paths of a step on one stream (default: two, see TernaryRun)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each step's loss (compiles once per phase: the 'max' column shows it)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2")
    import torch

    torch.set_num_threads(args.threads)
    from tvae import config as config_mod, trainer

    try:
        overrides = dict(config_mod.parse_assignment(s) for s in args.sets)
        overrides.update({"phases.structure_start": 1, "phases.geometry_start": 1 + args.epochs // 2})
        cfg = config_mod.build(args.preset, overrides=overrides, epochs=1 + args.epochs, seed=0)
        run = trainer.run_from_config(cfg, args.device, cuda_graphs=args.cuda_graphs, compile=args.compile)
        if args.single_stream:
            run.side_stream = None
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run.train_epoch()                                   # coverage epoch: warm-up, not timed
    rows = []
    for _ in range(args.epochs):
        row = run.train_epoch()
        t = run.timings
        rows.append((row["phase"], t["train_s"], t["eval_s"], t["train_cpu_s"], t["eval_cpu_s"]))
    med = statistics.median
    train = med([r[1] for r in rows])
    ev = med([r[2] for r in rows])
    total = med([r[1] + r[2] for r in rows])
    graphs = run.graphs is not None
    print(f"tvae.bench  preset={args.preset} device={args.device} threads={args.threads} "
          f"timed epochs={args.epochs} load={os.getloadavg()[0]:.2f}"
          + (f" cuda_graphs={graphs} streams={1 if run.side_stream is None else 2}" if args.device == "cuda" else "") + (" compile=True" if args.compile else ""))
    if graphs:
        print("the first epoch of each phase runs eagerly and captures the graph (its time: the 'max' column)")
    print("wall-clock medians (s); cpu = process CPU time, a check when the machine is loaded")
    print(f"{'phase':<10}{'epochs':>7}{'train':>9}{'eval':>9}{'epoch':>9}{'cpu train':>11}{'cpu eval':>10}{'max':>9}")
    for phase in ("structure", "geometry", "all"):
        sel = [r for r in rows if r[0] == phase or phase == "all"]
        if sel:
            print(f"{phase:<10}{len(sel):>7}{med([r[1] for r in sel]):>9.4f}{med([r[2] for r in sel]):>9.4f}"
                  f"{med([r[1] + r[2] for r in sel]):>9.4f}{med([r[3] for r in sel]):>11.4f}"
                  f"{med([r[4] for r in sel]):>10.4f}{max(r[1] + r[2] for r in sel):>9.4f}")
    print(json.dumps({"train_epoch_s": round(train, 5), "eval_s": round(ev, 5), "epoch_s": round(total, 5),
                      "device": args.device, "threads": args.threads}
                     | ({"cuda_graphs": graphs} if args.device == "cuda" else {})
                     | ({"compile": True} if args.compile else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
