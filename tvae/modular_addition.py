"""The positive control known to grok: modular addition (a + b) mod p (``docs/positive-control.md``).

Every pair (a, b) with 0 <= a, b < p is one example; its label is (a + b) mod p. A seeded split (the same for
every run with the same ``data.split_seed``) keeps ``data.train_fraction`` of the pairs for training and holds
out the rest. The model is a one-hidden-layer MLP on the one-hot pair (two one-hot vectors, concatenated);
training is full-batch AdamW with decoupled weight decay, so training itself uses no randomness at all.

One "epoch" is ``steps_per_epoch`` full-batch optimiser steps followed by an evaluation on both splits.
The defaults were measured on one CPU thread (see ``docs/positive-control.md``): with weight decay 1 and a
train fraction of 0.3 the training split is memorised within a few epochs and the held-out split is learned
much later; with weight decay 0 the run memorises and stays at chance on the held-out split; with a large
train fraction both happen almost together.

Implements the `Run` protocol of ``tvae.tasks``. Overrides are dotted keys of `Config`
(``optim.weight_decay``, ``data.train_fraction``, ``data.modulus``, ``model.hidden``, ``steps_per_epoch``, …),
checked by the config layer every task shares (``tvae.configlib``). The run's random state is its own
(``tvae.rng``): building, training and restoring a run leave the process's generators as they were.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from tvae import checkpoint, configlib
from tvae.configlib import ConfigError
from tvae.rng import RunRNG
from tvae.tasks import DivergedError

CHECKPOINT_NAME = "modular_addition.pt"
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class DataConfig:
    modulus: int = 59            # p: the task has p*p pairs and p classes
    train_fraction: float = 0.3  # share of the pairs used for training, in (0, 1]; 1.0 = no held-out split
    split_seed: int = 0          # the split depends on this seed only, never on the run seed

    def __post_init__(self) -> None:
        _check(self.modulus >= 2, "data.modulus", f"must be >= 2, got {self.modulus}")
        _check(0.0 < self.train_fraction <= 1.0, "data.train_fraction",
               f"must be in (0, 1], got {self.train_fraction}")
        _check(round(self.train_fraction * self.modulus ** 2) >= 1, "data.train_fraction",
               f"{self.train_fraction} of {self.modulus ** 2} pairs leaves no training pair")


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 256                                   # width of the hidden layer
    activation: Literal["square", "relu", "gelu"] = "square"
    init_scale: float = 1.0                             # multiplies every initial weight (Omnigrok's α)

    def __post_init__(self) -> None:
        _check(self.hidden >= 1, "model.hidden", f"must be >= 1, got {self.hidden}")
        _check(self.init_scale > 0.0, "model.init_scale", f"must be > 0, got {self.init_scale}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-2
    weight_decay: float = 1.0   # decoupled (AdamW); 0 gives the memorisation control
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check(self.lr > 0.0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0.0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.beta1 < 1.0, "optim.beta1", f"must be in [0, 1), got {self.beta1}")
        _check(0.0 <= self.beta2 < 1.0, "optim.beta2", f"must be in [0, 1), got {self.beta2}")
        _check(self.eps > 0.0, "optim.eps", f"must be > 0, got {self.eps}")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps_per_epoch: int = 10   # full-batch AdamW steps per epoch
    epochs: int = 300           # used when make_run gets epochs=None

    def __post_init__(self) -> None:
        _check(self.steps_per_epoch >= 1, "steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch}")
        _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"modular_addition config: {key} {problem}")


def config_keys() -> list[str]:
    """Every dotted key `apply_overrides` accepts."""
    return configlib.leaf_keys(Config)


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A new `Config` with dotted ``overrides`` applied. Unknown keys and wrong types raise `ConfigError` (a
    ``ValueError``) naming the key; range checks run on the result."""
    return configlib.replace(config, overrides)


def flatten(config: Config) -> dict[str, Any]:
    """The config as dotted keys (the inverse of `apply_overrides` on the defaults)."""
    return configlib.flatten(config)


# ------------------------------------------------------------------------------------------------ data, model

@dataclass(frozen=True)
class Dataset:
    inputs: torch.Tensor      # (p*p, 2p) concatenated one-hot vectors of a and b
    labels: torch.Tensor      # (p*p,) (a + b) mod p
    train_index: torch.Tensor
    heldout_index: torch.Tensor


def build_dataset(data: DataConfig, device: str) -> Dataset:
    """All p*p pairs and the seeded train/held-out split (independent of the run seed)."""
    p = data.modulus
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    inputs = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).float()
    labels = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(data.split_seed))
    n_train = round(data.train_fraction * p * p)
    return Dataset(inputs.to(device), labels.to(device), order[:n_train].sort().values.to(device),
                   order[n_train:].sort().values.to(device))


class _Square(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


_ACTIVATIONS = {"square": _Square, "relu": torch.nn.ReLU, "gelu": torch.nn.GELU}


def build_model(config: Config) -> torch.nn.Module:
    """one-hot(a) ⊕ one-hot(b) → Linear(2p, hidden) → activation → Linear(hidden, p). Draws its initial weights
    from the torch RNG in force (the run's own, inside ``RunRNG.active``)."""
    p, m = config.data.modulus, config.model
    model = torch.nn.Sequential(torch.nn.Linear(2 * p, m.hidden), _ACTIVATIONS[m.activation](),
                                torch.nn.Linear(m.hidden, p))
    if m.init_scale != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(m.init_scale)
    return model


# ------------------------------------------------------------------------------------------------------ run

_MAXIMISE = ("train_acc", "heldout_acc")
_MINIMISE = ("train_loss", "heldout_loss", "loss")


class ModularAdditionRun:
    """One training run; see the module docstring. Build with `make_run` or `load_run`."""

    def __init__(self, config: Config, *, epochs: int, seed: int, device: str) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
            raise ValueError(f"modular_addition: epochs must be a positive int, got {epochs!r}")
        self.config = config
        self.epochs = int(epochs)
        self.epoch = 0
        self.seed = seed
        self.device = device
        self.data = build_dataset(config.data, device)
        self.rng = RunRNG.seeded(seed, device)
        with self.rng.active():
            self.model = build_model(config).to(device)
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                           betas=(o.beta1, o.beta2), eps=o.eps)
        self.bests: dict[str, float] = {}
        self.last_row: dict[str, Any] | None = None

    # -- the Run protocol

    def train_epoch(self) -> dict[str, Any]:
        if self.epoch >= self.epochs:
            raise RuntimeError(f"modular_addition: all {self.epochs} epochs are already trained")
        start = time.perf_counter()
        with self.rng.active():
            row = self._train_epoch()
        row["epoch_seconds"] = time.perf_counter() - start
        self._update_bests(row)
        self.last_row = row
        self.epoch += 1
        return dict(row)

    def _train_epoch(self) -> dict[str, Any]:
        x = self.data.inputs[self.data.train_index]
        y = self.data.labels[self.data.train_index]
        params = [p for p in self.model.parameters()]
        before = torch.cat([p.detach().flatten() for p in params])
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        grad_sum = torch.zeros((), device=self.device)
        for _ in range(self.config.steps_per_epoch):
            loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_sum += torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            self.optimizer.step()
            loss_sum += loss.detach()
        after = torch.cat([p.detach().flatten() for p in params])
        steps = self.config.steps_per_epoch
        row: dict[str, Any] = {"epoch": self.epoch, "phase": "train"}
        row.update(self._evaluate())
        row["loss"] = float(loss_sum) / steps
        row["lr"] = self.config.optim.lr
        row["grad_norm"] = float(grad_sum) / steps
        row["weight_norm"] = float(torch.linalg.vector_norm(after))
        row["update_ratio"] = float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before))
        for name in ("loss", "train_loss", "grad_norm", "weight_norm"):
            if not math.isfinite(row[name]):
                raise DivergedError(f"modular_addition: non-finite {name} ({row[name]}) at epoch {self.epoch}")
        return row

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        logits = self.model(self.data.inputs)
        losses = F.cross_entropy(logits, self.data.labels, reduction="none")
        correct = (logits.argmax(dim=1) == self.data.labels).float()
        out = {"train_acc": float(correct[self.data.train_index].mean()),
               "train_loss": float(losses[self.data.train_index].mean())}
        if len(self.data.heldout_index):
            out["heldout_acc"] = float(correct[self.data.heldout_index].mean())
            out["heldout_loss"] = float(losses[self.data.heldout_index].mean())
        return out

    def _update_bests(self, row: Mapping[str, Any]) -> None:
        for name in _MAXIMISE + _MINIMISE:
            if name not in row or not math.isfinite(row[name]):
                continue
            best = self.bests.get(name)
            better = max if name in _MAXIMISE else min
            self.bests[name] = row[name] if best is None else better(best, row[name])

    def summary(self) -> dict[str, Any]:
        out = dict(self.last_row or {})
        out.update({f"best_{name}": value for name, value in self.bests.items()})
        return out

    def save(self, directory: str | Path) -> None:
        """Write ``DIR/modular_addition.pt`` atomically (temporary file, fsync, rename)."""
        state = {"format": CHECKPOINT_FORMAT, "config": flatten(self.config), "epochs": self.epochs,
                 "epoch": self.epoch, "seed": self.seed, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": self.rng.state_dict(), "bests": dict(self.bests),
                 "last_row": self.last_row}
        checkpoint.save(Path(directory) / CHECKPOINT_NAME, state)


# --------------------------------------------------------------------------------------- task entry points

def make_run(overrides: Mapping[str, Any], *, epochs: int | None = None, seed: int = 0,
             device: str = "cpu") -> ModularAdditionRun:
    """A fresh run. Unknown or mistyped override keys raise ``ValueError`` naming the key."""
    config = apply_overrides(Config(), overrides)
    return ModularAdditionRun(config, epochs=config.epochs if epochs is None else epochs, seed=seed,
                              device=device)


def load_run(directory: str | Path, *, device: str = "cpu") -> ModularAdditionRun:
    """Restore a run written by `ModularAdditionRun.save`; training continues exactly where it stopped."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"modular_addition: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unknown checkpoint format {state.get('format') if isinstance(state, dict) else state!r}")
        config = apply_overrides(Config(), state["config"])
        run = ModularAdditionRun(config, epochs=state["epochs"], seed=state["seed"], device=device)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.epoch = state["epoch"]
        run.bests = dict(state["bests"])
        run.last_row = state["last_row"]
        run.rng.load_state_dict(state["rng"])
    except Exception as error:  # a torn, truncated or foreign file: say which file and why
        raise ValueError(f"modular_addition: cannot restore the checkpoint {path}: {error}") from error
    return run


# ----------------------------------------------------------------------------------------------------- CLI

def milestones(rows: list[Mapping[str, Any]], *, train_level: float = 0.99,
               heldout_levels: tuple[float, ...] = (0.1, 0.5, 0.9, 0.95)) -> dict[str, int | None]:
    """First epochs at which train_acc / heldout_acc reach the given levels (None: never). For measuring."""
    def first(name: str, level: float) -> int | None:
        return next((int(r["epoch"]) for r in rows if r.get(name, -1.0) >= level), None)

    out: dict[str, int | None] = {f"train_acc>={train_level:g}": first("train_acc", train_level)}
    out.update({f"heldout_acc>={level:g}": first("heldout_acc", level) for level in heldout_levels})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m tvae.modular_addition [--set key=value …] [--epochs N] [--seed S]``: train one run on one CPU
    thread, print a curve every ``--every`` epochs, the milestone epochs and one JSON line (with wall and process
    CPU seconds: on a shared machine the CPU seconds are the steadier number)."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m tvae.modular_addition", description=main.__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config override; keys: {', '.join(config_keys())}")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--every", type=int, default=25, help="print a curve row every N epochs (0: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        overrides = configlib.parse_assignments(args.set)
        run = make_run(overrides, epochs=args.epochs, seed=args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while run.epoch < run.epochs:
        row = run.train_epoch()
        rows.append(row)
        if args.every and (row["epoch"] % args.every == 0 or run.epoch == run.epochs):
            print(f"epoch {row['epoch']:4d}  train_acc {row['train_acc']:.3f}  heldout_acc "
                  f"{row.get('heldout_acc', float('nan')):.3f}  train_loss {row['train_loss']:.2e}  heldout_loss "
                  f"{row.get('heldout_loss', float('nan')):.2e}  weight_norm {row['weight_norm']:.1f}")
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result = {"overrides": overrides, "epochs": run.epochs, "seed": args.seed, **milestones(rows),
              "final_train_acc": rows[-1]["train_acc"], "final_heldout_acc": rows[-1].get("heldout_acc"),
              "median_epoch_seconds": float(np.median([r["epoch_seconds"] for r in rows])),
              "total_seconds": total, "cpu_seconds": cpu, "cpu_seconds_per_epoch": cpu / len(rows)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
