"""The arguments of a study as a typed, validated dataclass, and what `study.json` holds.

A study is defined by its *identity* (space, trials, epochs, seed, scheduler, checkpoint cadence, resources per
trial); `--resume` reuses the stored identity and refuses a different one. *Runtime* options (address,
results location) may change between runs of the same study.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import shlex
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

SCHEDULERS = ("fifo", "grokking_asha")
IDENTITY = ("space", "trials", "epochs", "seed", "scheduler", "grace_period", "checkpoint_every",
            "concurrency", "cpus_per_trial", "gpus_per_trial", "max_failures", "population")
# tasks whose trials can train as cohorts (``--population`` > 1): the ones with a cohort engine
COHORT_TASKS = ("ternary_vae",)



@dataclass(frozen=True)
class StudyConfig:
    space: str
    name: str
    trials: int
    epochs: int
    concurrency: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    results: str = "results"
    seed: int = 0
    scheduler: str = "fifo"
    grace_period: int | None = None
    checkpoint_every: int = 10
    max_failures: int = 2
    threads_per_trial: int = 1
    dashboard_port: int | None = None
    # study trials per Tune trial, trained as one cohort; 1 (the default on every device): a trial per process.
    # On a CPU cohorts of 8 make a 32-trial `grokking` study 1.19-1.27x faster but an 8-trial one only 1.04x, and a
    # study smaller than population x concurrency leaves cores idle (docs/cohorts.md); on a GPU no cohort has been
    # measured yet. So cohorts are asked for (--population), not the default
    population: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.trials >= 1, f"--trials must be ≥ 1, got {self.trials}"),
            (self.epochs >= 1, f"--epochs must be ≥ 1, got {self.epochs}"),
            (self.concurrency >= 1, f"--concurrency must be ≥ 1, got {self.concurrency}"),
            (self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}"),
            (self.gpus_per_trial >= 0, f"--gpus-per-trial must be ≥ 0, got {self.gpus_per_trial}"),
            (self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(),
             f"--gpus-per-trial above 1 must be a whole number, got {self.gpus_per_trial}"),
            (self.scheduler in SCHEDULERS, f"--scheduler must be one of {', '.join(SCHEDULERS)}, "
                                           f"got {self.scheduler!r}"),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be ≥ 1, got {self.checkpoint_every}"),
            (self.max_failures >= 0, f"--max-failures must be ≥ 0, got {self.max_failures}"),
            (self.threads_per_trial >= 1, f"--threads-per-trial must be ≥ 1, got {self.threads_per_trial}"),
            (self.grace_period is None or self.grace_period >= 1,
             f"--grace-period must be ≥ 1, got {self.grace_period}"),
            (self.population >= 1, f"--population must be ≥ 1, got {self.population}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    @property
    def tune_trials(self) -> int:
        """Ray Tune trials of the study: one per trial, or one per cohort of ``population`` trials."""
        return -(-self.trials // self.population)

    def identity(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in IDENTITY}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown study argument(s): {', '.join(unknown)}")
        return cls(**data)

    def resume_command(self, python: str = "python") -> str:
        parts = [python, "-m", "study.run", "--name", self.name, "--results", self.results, "--resume"]
        if self.address:
            parts += ["--address", self.address]
        return shlex.join(parts)


def check_same_identity(stored: StudyConfig, requested: dict[str, Any]) -> None:
    """Refuse a resume whose explicitly given identity arguments differ from the stored study's."""
    differing = [f"--{k.replace('_', '-')} {requested[k]!r} (the study has {getattr(stored, k)!r})"
                 for k in IDENTITY if k in requested and requested[k] != getattr(stored, k)]
    if differing:
        raise ValueError("cannot resume with different study arguments: " + "; ".join(differing)
                         + ". Start a new study with another --name to change them.")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("tvae-study", "torch", "ray", "optuna", "pyarrow", "geoopt", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def study_record(config: StudyConfig, *, task: str, metric: str, mode: str, schema_version: int) -> dict[str, Any]:
    """What `study.json` holds."""
    return {
        "study": config.name,
        "arguments": config.to_dict(),
        "task": task,
        "metric": metric,
        "mode": mode,
        "seed": config.seed,
        "schema_version": schema_version,
        "versions": package_versions(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
    }
