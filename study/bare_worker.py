"""One bare trainer run, no Ray and no study machinery: the baseline `study.bench` compares against.

``python -m study.bare_worker '{"task": ..., "overrides": {...}, "epochs": N, "seed": S, "device": ..., "threads": T}'``
prints one JSON line with the epochs trained and the seconds spent training them."""
from __future__ import annotations

import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    import torch

    from tvae import tasks

    torch.set_num_threads(int(spec.get("threads", 1)))
    start = time.perf_counter()
    run = tasks.make_run(spec["task"], spec["overrides"], epochs=spec["epochs"], seed=spec["seed"],
                         device=spec.get("device", "cpu"))
    built = time.perf_counter()
    epoch_seconds = []
    while run.epoch < run.epochs:
        epoch_seconds.append(float(run.train_epoch()["epoch_seconds"]))
    print(json.dumps({"epochs": run.epoch, "seconds": time.perf_counter() - start,
                      "build_seconds": built - start, "epoch_seconds": epoch_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
