"""Labelled synthetic learning curves in the epoch-row schema, for tests and the benchmark.

Each trial gets a *kind* whose correct grokking class is known:

| kind            | train_acc                | heldout_acc                                   | class          |
|-----------------|--------------------------|-----------------------------------------------|----------------|
| comprehension   | slow rise (sigmoid)      | the same slow rise, a few epochs later        | comprehension  |
| grokking        | step at 10 % of the run  | plateau at chance, step at 70 %               | grokking       |
| memorization    | step at 10 %             | plateau at chance                             | memorization   |
| confusion       | noise around 0.3         | noise around chance                           | confusion      |
| ungrokking      | step at 10 %             | step at 50 %, lost (drop to 0.3) at 75 %      | grokking, ungrokked |

Losses are −log(0.01 + 0.99·acc) of the same curves; `train_coverage` is a TernaryVAE-style run without a
held-out split: a plateau at 0.26 then a jump to 1.0 at 60 % of the run. Binomial-like noise (σ = `noise`·2·√(a(1−a)), so
it shrinks towards 0 and 1) is added and accuracies are clipped to [0, 1]. Pure numpy, vectorised over trials.
"""
from __future__ import annotations

import numpy as np
import polars as pl

KINDS = ("comprehension", "grokking", "memorization", "confusion", "ungrokking")
EXPECTED_CLASS = {"comprehension": "comprehension", "grokking": "grokking", "memorization": "memorization",
                  "confusion": "confusion", "ungrokking": "grokking"}
CHANCE = 0.01


def _sig(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(t - centre) / width))


def curves(kind: str, epochs: int) -> dict[str, np.ndarray]:
    """Noise-free train/held-out accuracy of one kind (arrays of length `epochs`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    t = np.arange(epochs, dtype=np.float64)
    n = float(epochs)
    step = lambda at: _sig(t, at * n, max(1.0, 0.01 * n))  # noqa: E731
    lift = lambda s: CHANCE + (1 - CHANCE) * s  # noqa: E731
    if kind == "comprehension":
        train = lift(_sig(t, 0.4 * n, 0.06 * n))
        heldout = lift(_sig(t, 0.41 * n, 0.06 * n))
    elif kind == "grokking":
        train, heldout = lift(step(0.1)), lift(step(0.7))
    elif kind == "memorization":
        train, heldout = lift(step(0.1)), np.full(epochs, CHANCE)
    elif kind == "confusion":
        train, heldout = np.full(epochs, 0.3), np.full(epochs, CHANCE)
    else:  # ungrokking
        train = lift(step(0.1))
        heldout = lift(step(0.5)) * (1 - 0.7 * step(0.75))
    return {"train_acc": train, "heldout_acc": heldout}


def dataset(kinds: list[str], *, epochs: int = 500, noise: float = 0.01, seed: int = 0,
            study: str = "synthetic") -> pl.DataFrame:
    """One row per (trial, epoch); trial `t<i>-<kind>` follows `kinds[i]`."""
    rng = np.random.default_rng(seed)
    base = {k: curves(k, epochs) for k in set(kinds)}
    t = np.arange(epochs)
    cov = 0.26 + 0.74 * _sig(t.astype(np.float64), 0.6 * epochs, max(1.0, 0.005 * epochs))
    n = len(kinds)
    train = np.stack([base[k]["train_acc"] for k in kinds])
    heldout = np.stack([base[k]["heldout_acc"] for k in kinds])
    # accuracy on a finite set is binomial: its noise shrinks towards 0 and 1
    spread = lambda a: noise * 2 * np.sqrt(a * (1 - a))  # noqa: E731
    train = np.clip(train + spread(train) * rng.standard_normal(train.shape), 0, 1)
    heldout = np.clip(heldout + spread(heldout) * rng.standard_normal(heldout.shape), 0, 1)
    coverage = np.clip(cov[None, :] + rng.normal(0, noise, (n, epochs)), 0, 1)
    loss = lambda a: -np.log(0.01 + 0.99 * a)  # noqa: E731
    ids = np.array([f"t{i:05d}-{k}" for i, k in enumerate(kinds)])
    return pl.DataFrame({
        "study": np.full(n * epochs, study),
        "trial_id": np.repeat(ids, epochs),
        "epoch": np.tile(t, n).astype(np.int64),
        "phase": np.full(n * epochs, "train"),
        "train_acc": train.ravel(), "heldout_acc": heldout.ravel(),
        "train_loss": loss(train).ravel(), "heldout_loss": loss(heldout).ravel(),
        "train_coverage": coverage.ravel(),
    })


def write_study(df: pl.DataFrame, directory, *, rows_per_part: int | None = None) -> None:
    """Write `df` as a study-style epoch dataset: `directory/epochs/trial_id=<ID>/part-<first>-<last>.parquet`."""
    from pathlib import Path

    root = Path(directory) / "epochs"
    for (tid,), part in df.group_by("trial_id", maintain_order=True):
        folder = root / f"trial_id={tid}"
        folder.mkdir(parents=True, exist_ok=True)
        chunks = [part] if not rows_per_part else [part.slice(i, rows_per_part)
                                                   for i in range(0, part.height, rows_per_part)]
        for chunk in chunks:
            first, last = chunk["epoch"].min(), chunk["epoch"].max()
            chunk.write_parquet(folder / f"part-{first:06d}-{last:06d}.parquet")
