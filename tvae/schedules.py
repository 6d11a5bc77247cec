"""Learning-rate schedules: pure functions of the epoch returning a factor of the base learning rate.

No scheduler state exists, so a resumed run reproduces the schedule exactly. Each parameter group multiplies
the factor by its own scale.
"""
from __future__ import annotations

import math

from tvae.config import ScheduleConfig, SchedulePhase


def cosine(t: float, period: float, floor: float = 0.0) -> float:
    """1 -> floor over [0, period] (half cosine)."""
    t = min(max(t, 0.0), period)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t / period))


def cosine_restarts(epoch: int, T0: int, Tmult: int, floor: float = 0.0) -> float:
    """CosineAnnealingWarmRestarts evaluated in closed form: cycles of length T0, T0*Tmult, ..."""
    t, period = epoch, T0
    while t >= period:
        t -= period
        period *= Tmult
    return cosine(t, period, floor)


def _phase_factor(ph: SchedulePhase, epoch: int) -> float:
    t = epoch - ph.start
    length = ph.end - ph.start
    if ph.annealing == "constant":
        return ph.scale
    if ph.annealing == "cosine":
        return ph.scale * cosine(t, length, ph.final_scale)
    if ph.annealing == "linear":
        return ph.scale * (1.0 - (1.0 - ph.final_scale) * min(t / length, 1.0))
    return ph.scale * cosine_restarts(t, ph.T0, ph.Tmult, ph.final_scale)


def multi_phase(phases: list[SchedulePhase], epoch: int) -> float:
    """The phase containing ``epoch`` (start <= epoch < end) decides; after the last phase its end value holds,
    before the first phase the first phase's start value."""
    ordered = sorted(phases, key=lambda p: p.start)
    for ph in ordered:
        if ph.start <= epoch < ph.end:
            return _phase_factor(ph, epoch)
    if epoch < ordered[0].start:
        return _phase_factor(ordered[0], ordered[0].start)
    last = max(ordered, key=lambda p: p.end)
    return _phase_factor(last, last.end)


def warmup(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up: (epoch + 1) / warmup_epochs for the first warmup_epochs epochs."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return 1.0
    return (epoch + 1) / warmup_epochs


def lr_factor(cfg: ScheduleConfig, epoch: int, total_epochs: int) -> float:
    """Multiplier of the base learning rate at ``epoch``."""
    if cfg.kind == "constant":
        f = 1.0
    elif cfg.kind == "cosine":
        span = max(total_epochs - cfg.warmup_epochs, 1)
        f = cosine(epoch - cfg.warmup_epochs, span, cfg.min_scale)
    elif cfg.kind == "cosine_restarts":
        f = cosine_restarts(epoch, cfg.T0, cfg.Tmult, cfg.min_scale)
    elif cfg.kind == "multi_phase":
        f = multi_phase(cfg.phases, epoch)
    else:  # pragma: no cover - the config refuses other kinds
        raise ValueError(f"unknown schedule kind {cfg.kind!r}")
    return f * warmup(epoch, cfg.warmup_epochs)
