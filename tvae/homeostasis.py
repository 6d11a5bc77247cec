"""Homeostasis: freezes and unfreezes encoders from the evaluation metrics (upstream's HomeostasisController).

Encoder A (starts frozen): unfrozen, it is frozen again when coverage < freeze threshold; frozen, it is
unfrozen when coverage >= unfreeze threshold and hierarchy_A has stalled on ``plateau_patience`` consecutive
checks. Encoder B (starts trainable): frozen after ``patience`` consecutive checks whose windowed |hierarchy_B|
gain is < plateau threshold; unfrozen when |hierarchy_B| dropped by > 0.01 since the previous check.
Q-gated annealing relaxes (or tightens) thresholds when a component is frozen again. Every decision returns a
human-readable event string.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from tvae.config import HomeostasisConfig


class Homeostasis:
    def __init__(self, cfg: HomeostasisConfig, start_epoch: int):
        self.cfg = cfg
        self.start_epoch = start_epoch            # first epoch of the structure phase
        self.frozen = {"encoder_A": True, "encoder_B": False}
        self.freeze_thr = cfg.coverage_freeze_threshold
        self.unfreeze_thr = cfg.coverage_unfreeze_threshold
        self.patience_B = cfg.plateau_patience
        self.last_change = {"encoder_A": -10 ** 9, "encoder_B": -10 ** 9}
        self.hist_A: deque[float] = deque(maxlen=cfg.window)
        self.hist_B: deque[float] = deque(maxlen=cfg.window)
        self.stall_A = 0
        self.plateau_B = 0
        self.prev_h_B: float | None = None
        self.cycle_Q = {"encoder_A": 0.0, "encoder_B": 0.0}

    # ------------------------------------------------------------------ decision
    def update(self, epoch: int, coverage: float, hierarchy_A: float, hierarchy_B: float, dist_corr: float) -> list[str]:
        cfg = self.cfg
        q = dist_corr + 1.5 * abs(hierarchy_A)
        self.hist_A.append(abs(hierarchy_A))
        self.hist_B.append(abs(hierarchy_B))
        events: list[str] = []
        if not cfg.enabled or epoch - self.start_epoch < cfg.warmup_epochs:
            self.prev_h_B = abs(hierarchy_B)
            return events

        def may_change(name: str) -> bool:
            return epoch - self.last_change[name] >= cfg.hysteresis_epochs

        def gain(hist: deque) -> float:
            return hist[-1] - hist[0]

        # encoder A: coverage-gated
        if not self.frozen["encoder_A"]:
            if coverage < self.freeze_thr and may_change("encoder_A"):
                events.append(self._set("encoder_A", True, epoch, q,
                                        f"coverage {coverage:.4f} < freeze threshold {self.freeze_thr:.4f}"))
        else:
            stalled = len(self.hist_A) == self.hist_A.maxlen and gain(self.hist_A) < cfg.plateau_threshold
            if coverage >= self.unfreeze_thr and stalled:
                self.stall_A += 1
            else:
                self.stall_A = 0
            if self.stall_A >= cfg.plateau_patience and may_change("encoder_A"):
                self.stall_A = 0
                events.append(self._set("encoder_A", False, epoch, q,
                                        f"coverage {coverage:.4f} >= {self.unfreeze_thr:.4f} and hierarchy_A stalled"))
        # encoder B: hierarchy-gated
        if not self.frozen["encoder_B"]:
            plateau = len(self.hist_B) == self.hist_B.maxlen and gain(self.hist_B) < cfg.plateau_threshold
            self.plateau_B = self.plateau_B + 1 if plateau else 0
            if self.plateau_B >= self.patience_B and may_change("encoder_B"):
                self.plateau_B = 0
                events.append(self._set("encoder_B", True, epoch, q,
                                        f"|hierarchy_B| gained < {cfg.plateau_threshold} for {self.patience_B} checks"))
        else:
            if self.prev_h_B is not None and abs(hierarchy_B) < self.prev_h_B - 0.01 and may_change("encoder_B"):
                self.plateau_B = 0
                events.append(self._set("encoder_B", False, epoch, q,
                                        f"|hierarchy_B| fell from {self.prev_h_B:.4f} to {abs(hierarchy_B):.4f}"))
        self.prev_h_B = abs(hierarchy_B)
        return events

    def _set(self, name: str, frozen: bool, epoch: int, q: float, reason: str) -> str:
        self.frozen[name] = frozen
        self.last_change[name] = epoch
        text = f"epoch {epoch}: {'froze' if frozen else 'unfroze'} {name} ({reason})"
        if not frozen:
            self.cycle_Q[name] = q
            return text
        if self.cfg.annealing:
            dq = q - self.cycle_Q[name]
            if dq > 0:
                self._anneal(name, relax=True)
                text += f"; Q rose by {dq:.4f}: relaxed"
            elif dq < -0.05:
                self._anneal(name, relax=False)
                text += f"; Q fell by {-dq:.4f}: tightened"
        return text

    def _anneal(self, name: str, relax: bool) -> None:
        cfg = self.cfg
        if name == "encoder_A":
            step = -cfg.annealing_step if relax else cfg.annealing_step
            self.freeze_thr = min(max(self.freeze_thr + step, cfg.coverage_floor), cfg.coverage_freeze_threshold)
            self.unfreeze_thr = min(max(self.unfreeze_thr + step, self.freeze_thr + 0.005),
                                    max(cfg.coverage_unfreeze_threshold, self.freeze_thr + 0.005))
        else:
            delta = 1 if relax else -1
            self.patience_B = min(max(self.patience_B + delta, cfg.plateau_patience), cfg.patience_ceiling)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "frozen": dict(self.frozen), "freeze_thr": self.freeze_thr, "unfreeze_thr": self.unfreeze_thr,
            "patience_B": self.patience_B, "last_change": dict(self.last_change),
            "hist_A": list(self.hist_A), "hist_B": list(self.hist_B), "stall_A": self.stall_A,
            "plateau_B": self.plateau_B, "prev_h_B": self.prev_h_B, "cycle_Q": dict(self.cycle_Q),
            "start_epoch": self.start_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = dict(state["frozen"])
        self.freeze_thr = state["freeze_thr"]
        self.unfreeze_thr = state["unfreeze_thr"]
        self.patience_B = state["patience_B"]
        self.last_change = dict(state["last_change"])
        self.hist_A = deque(state["hist_A"], maxlen=self.cfg.window)
        self.hist_B = deque(state["hist_B"], maxlen=self.cfg.window)
        self.stall_A = state["stall_A"]
        self.plateau_B = state["plateau_B"]
        self.prev_h_B = state["prev_h_B"]
        self.cycle_Q = dict(state["cycle_Q"])
        self.start_epoch = state["start_epoch"]
