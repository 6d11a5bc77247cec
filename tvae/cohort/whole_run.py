"""``python -m tvae.cohort.whole_run [--seeds 0,1,2] [--epochs 100] [--preset v5_12_4]``: process CPU seconds of
whole runs (coverage phase and homeostasis included), the seeds one after another with the single-run trainer
against one cohort of them; and how many epochs the cohort trained as 1, 2, … groups."""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvae.cohort.whole_run", description=__doc__)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--preset", default="v5_12_4")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from tvae import config as config_mod, trainer
    from tvae.cohort import Cohort

    configs = [config_mod.build(args.preset, epochs=args.epochs, seed=int(s)) for s in args.seeds.split(",")]
    t = time.process_time()
    for cfg in configs:
        run = trainer.run_from_config(cfg)
        while run.epoch < run.epochs:
            run.train_epoch()
    single = time.process_time() - t
    cohort, groups = Cohort(configs), collections.Counter()
    t = time.process_time()
    while cohort.active:
        groups[len({cohort.members[k].signature() for k in cohort.active})] += 1
        cohort.train_epoch()
    together = time.process_time() - t
    print(f"{len(configs)} single runs: {single:.1f} CPU-s; one cohort: {together:.1f} CPU-s; "
          f"ratio {single / together:.2f}; epochs by number of groups: {dict(sorted(groups.items()))}")
    print(json.dumps({"members": len(configs), "epochs": args.epochs, "single_cpu_s": round(single, 2),
                      "cohort_cpu_s": round(together, 2), "ratio": round(single / together, 3),
                      "epochs_by_groups": dict(sorted(groups.items()))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
