"""Fault injection for the reliability suite (``tests/chaos/``): inert unless ``TVAE_STUDY_FAULTS`` is set.

The variable holds a JSON object (or a list of them), read by every trial process::

    {"kind": "raise" | "nan" | "inf" | "oom" | "pause_checkpoint", "epoch": 1, "trials": 1, "seconds": 60}

``trials`` trials (default 1) are chosen by *claim*: the first trials to reach ``epoch`` each create
``STUDY/.faults/<kind>-<slot>`` (exclusive create) holding their trial id. A claimed trial keeps its fault in every
later attempt, so a trial that raises raises again after Tune restarts it. Each fault uses a real mechanism:

  raise             the trial raises ``RuntimeError`` at the start of ``epoch`` (Tune retries it, then ERROR)
  nan / inf         every floating parameter of the run's model becomes NaN / inf before ``epoch``; the trainer's
                    own non-finite check then raises ``DivergedError`` (DIVERGED, not retried)
  oom               the trial's address space is capped with ``setrlimit(RLIMIT_AS)`` a little above its current
                    size, then it allocates a 1 GiB tensor: the allocator's real out-of-memory error
  pause_checkpoint  the first time ``epoch`` is checkpointed, the trial sleeps ``seconds`` between writing the
                    epoch part and registering the checkpoint (the window a killed driver must survive), after
                    creating ``STUDY/.faults/paused-<trial>`` so a test knows when to strike

Only local study directories are supported (claims are files created with ``os.open(O_EXCL)``).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "TVAE_STUDY_FAULTS"
FAULTS_DIR = ".faults"
KINDS = ("raise", "nan", "inf", "oom", "pause_checkpoint")


def specs() -> list[dict[str, Any]]:
    """The requested faults (empty, and nothing happens, when the variable is unset)."""
    text = os.environ.get(ENV)
    if not text:
        return []
    data = json.loads(text)
    data = data if isinstance(data, list) else [data]
    for spec in data:
        if spec.get("kind") not in KINDS:
            raise ValueError(f"{ENV}: unknown fault kind {spec.get('kind')!r}; known: {', '.join(KINDS)}")
    return data


def _holds(study_dir: str, spec: dict[str, Any], trial_id: str) -> bool:
    """Whether ``trial_id`` holds (or now claims) one of the ``trials`` slots of this fault."""
    directory = os.path.join(study_dir, FAULTS_DIR)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):   # a trial holds at most one fault
        if name.rpartition("-")[2].isdigit() and open(os.path.join(directory, name)).read() == trial_id:
            return name.rpartition("-")[0] == spec["kind"]
    slots = [os.path.join(directory, f"{spec['kind']}-{slot}") for slot in range(int(spec.get("trials", 1)))]
    for path in slots:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(trial_id)
        return True
    return False


def _due(study_dir: str, trial_id: str, epoch: int, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    return [s for s in specs() if s["kind"] in kinds and int(s.get("epoch", 0)) == epoch
            and _holds(study_dir, s, trial_id)]


def _modules(run: Any):
    import torch

    return [v for v in vars(run).values() if isinstance(v, torch.nn.Module)]


def before_epoch(study_dir: str, trial_id: str, run: Any) -> None:
    """Called by the trainable before each epoch; injects the faults due at ``run.epoch``."""
    for spec in _due(study_dir, trial_id, run.epoch, ("raise", "nan", "inf", "oom")):
        kind = spec["kind"]
        if kind == "raise":
            raise RuntimeError(f"injected fault: trial {trial_id} raises at epoch {run.epoch}")
        if kind in ("nan", "inf"):
            import torch

            with torch.no_grad():
                for module in _modules(run):
                    for parameter in module.parameters():
                        if parameter.is_floating_point():
                            parameter.fill_(float(kind))
        if kind == "oom":
            _exhaust_memory()


def before_member_epoch(study_dir: str, trial_id: str, epoch: int, cohort: Any, k: int) -> None:
    """Called by the cohort trainable before each epoch of member ``k`` (study trial ``trial_id``): ``raise``
    and ``oom`` end the whole cohort's process, as they would a trial's; ``nan`` / ``inf`` fill this member's
    parameters only, and the cohort's per-member check then stops it as diverged."""
    for spec in _due(study_dir, trial_id, epoch, ("raise", "nan", "inf", "oom")):
        kind = spec["kind"]
        if kind == "raise":
            raise RuntimeError(f"injected fault: trial {trial_id} raises at epoch {epoch}")
        if kind in ("nan", "inf"):
            cohort.flat[k].fill_(float(kind))
        if kind == "oom":
            _exhaust_memory()


def _exhaust_memory() -> None:
    import resource

    import torch

    with open("/proc/self/statm") as handle:
        size = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + (256 << 20), hard))
    torch.empty(1 << 28, dtype=torch.float32).fill_(1.0)   # 1 GiB: more than the cap allows


def during_checkpoint(study_dir: str, trial_id: str, epoch: int) -> None:
    """Called by the trainable between writing an epoch part and registering its checkpoint."""
    for spec in _due(study_dir, trial_id, epoch, ("pause_checkpoint",)):
        marker = os.path.join(study_dir, FAULTS_DIR, f"paused-{trial_id}")
        if os.path.exists(marker):
            continue   # only the first time: the resumed trial checkpoints normally
        with open(marker, "w") as handle:
            handle.write(str(epoch))
        time.sleep(float(spec.get("seconds", 60)))
