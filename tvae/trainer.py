"""The TernaryVAE trainer: one `TernaryRun` trains epoch by epoch and returns the epoch row.

Phases (docs/design.md): coverage [0, e1) -> structure [e1, e2) -> geometry [e2, end). Implements the `Run`
protocol of `tvae.tasks` through `make_run` and `load_run`.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from tvae import checkpoint, config as config_mod, data, losses, metrics, radius_terms
from tvae.config import Config
from tvae.device_metrics import NAMES as DEVICE_METRICS, DeviceMetrics
from tvae.execution import Execution
from tvae.geometry import distance, log0, radius
from tvae.homeostasis import Homeostasis
from tvae.model import TernaryVAE, sample
from tvae.schedules import cosine, lr_factor
from tvae.tasks import DivergedError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 2   # 2: one flat optimiser tensor per module (version-1 optimiser state does not fit)
PHASES = ("coverage", "structure", "geometry")
TERMS = ("recon", "kl", "hierarchy", "richness", "separation", "radial", "rank", "zero", "geodesic")
SPLIT_METRICS = ("coverage", "hierarchy_A", "hierarchy_B", "richness_A", "richness_B", "dist_corr",
                 "padic_dist_corr", "Q", "r_v0", "r_v9")
# which way is better, for best_<metric>
BEST_DIRECTION = {"coverage": max, "hierarchy_A": min, "hierarchy_B": min, "dist_corr": max,
                  "padic_dist_corr": max, "Q": max}


def make_optimizer(cfg: Config, groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Optimizer:
    """RiemannianAdam (geoopt) or torch Adam with coupled L2: identical updates on Euclidean parameters.

    On a GPU the torch Adam is capturable (its step counts and per-group learning rates are device tensors),
    so a CUDA graph can record it; `set_lr` writes a new learning rate into such a tensor."""
    if cfg.optim.optimizer == "riemannian_adam":
        import geoopt  # lazy: its import is slow

        return geoopt.optim.RiemannianAdam(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    if device.type == "cuda":
        for group in groups:
            group["lr"] = lr_holder(cfg, device, cfg.optim.lr)
        return torch.optim.Adam(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True,
                                capturable=True)
    return torch.optim.Adam(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)


def adam_step(optimizer: torch.optim.Optimizer) -> bool:
    """The update of ``torch.optim.Adam(fused=True).step()`` (``make_optimizer``'s CPU Adam), made by calling its
    kernel for each group that has a gradient, without ``step()``'s per-call bookkeeping (hooks, grouping by
    device, argument checks): 44 instead of 91 us per step here, the same values. False, doing nothing, while a
    group with a gradient has no state yet (torch creates it in its first ``step()``)."""
    work = []
    for group in optimizer.param_groups:
        p = group["params"][0]
        if p.grad is None:
            continue
        state = optimizer.state.get(p)
        if not state:
            return False
        work.append((group, p, state))
    for group, p, state in work:
        beta1, beta2 = group["betas"]
        state["step"] += 1
        torch._fused_adam_([p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
                           amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
    return True


def lr_holder(cfg: Config, device: torch.device, value: float) -> float | torch.Tensor:
    """How a param group holds its learning rate: a device tensor for the capturable GPU Adam, else a float."""
    if device.type == "cuda" and cfg.optim.optimizer == "adam":
        return torch.tensor(value, dtype=torch.float32, device=device)
    return value


def set_lr(group: dict[str, Any], value: float) -> None:
    if torch.is_tensor(group["lr"]):
        group["lr"].fill_(value)         # in place: a captured optimiser step reads this tensor
    else:
        group["lr"] = value


def phase_of(cfg: Config, epoch: int) -> str:
    if epoch < cfg.phases.structure_start:
        return "coverage"
    if epoch < cfg.phases.geometry_start:
        return "structure"
    return "geometry"


class _SplitEval:
    """Fixed, seeded metric samples of one split (positions are into the split's sorted index array); the host's
    metrics read them here, `tvae.device_metrics.DeviceMetrics` copies them to the device."""

    def __init__(self, ops: torch.Tensor, v_all: np.ndarray, cfg: Config, salt: int, device: torch.device):
        self.ops = ops.numpy()
        self.v = v_all[self.ops]
        rng = np.random.default_rng([cfg.eval.seed, salt])
        n = len(self.ops)
        m = min(cfg.eval.dist_corr_samples, n)
        self.dist = metrics.DistCorrSample(np.sort(rng.choice(n, size=m, replace=False)), self.v) if m >= 2 else None
        if n >= 2:
            p = cfg.eval.padic_pairs
            i = rng.integers(0, n, size=p)
            j = (i + rng.integers(1, n, size=p)) % n          # j != i
            self.pi, self.pj = self.ops[i], self.ops[j]
            pair_v = data.valuations(torch.from_numpy(np.abs(self.pi - self.pj))).numpy()
            self.padic_codes = metrics.padic_codes(pair_v)
        else:
            self.pi = self.pj = None
        if self.pi is not None:       # pair indices on the evaluation's device, copied there once
            self.pi_t, self.pj_t = torch.from_numpy(self.pi).to(device), torch.from_numpy(self.pj).to(device)


def unpack_device_metrics(values: np.ndarray, evals: Mapping[str, _SplitEval]) -> dict[str, float]:
    """The row entries (as `host_metrics` names them) of one model's `DeviceMetrics` values read back to the
    host (`DeviceMetrics.model_values`)."""
    out: dict[str, float] = {}
    per_split = len(DEVICE_METRICS)
    for k, (split, ev) in enumerate(evals.items()):
        m = dict(zip(DEVICE_METRICS, values[k * per_split:(k + 1) * per_split].tolist()))
        m["coverage"] /= len(ev.ops)
        out.update(_split_row(split, m))
    gram = values[len(evals) * per_split:]
    d = math.isqrt(len(gram))
    out["erank_B"] = metrics.effective_rank_from_gram(gram.reshape(d, d))
    return out


def _split_row(split: str, m: dict[str, float]) -> dict[str, float]:
    """A split's DEVICE_METRICS values as row entries ``<split>_<metric>``, with Q derived from them."""
    m = m | {"Q": metrics.q_value(m["dist_corr"], m["hierarchy_B"])}
    return {f"{split}_{name}": m[name] for name in SPLIT_METRICS}


def host_metrics(evals: Mapping[str, _SplitEval], train_ops: torch.Tensor, mu_B: torch.Tensor, z_B: torch.Tensor,
                 r_A: torch.Tensor, r_B: torch.Tensor, correct: torch.Tensor, c: torch.Tensor) -> dict[str, float]:
    """Every split's metrics (``<split>_<metric>``) and ``erank_B`` of one model's embeddings of all operations,
    computed in numpy (`tvae.metrics`)."""
    pair_d = {split: distance(z_B[ev.pi_t], z_B[ev.pj_t], c).cpu().numpy()
              for split, ev in evals.items() if ev.pi is not None}
    train_mu_B = mu_B[train_ops]
    gram = (train_mu_B.T @ train_mu_B).cpu().numpy()
    r_A, r_B = r_A.cpu().numpy(), r_B.cpu().numpy()
    correct = correct.cpu().numpy()
    out: dict[str, float] = {}
    for split, ev in evals.items():
        ops, v = ev.ops, ev.v
        ra, rb = r_A[ops], r_B[ops]
        m = {
            "coverage": float(correct[ops].mean()),
            "hierarchy_A": metrics.hierarchy(ra, v),
            "hierarchy_B": metrics.hierarchy(rb, v),
            "richness_A": metrics.richness(ra, v),
            "richness_B": metrics.richness(rb, v),
            "dist_corr": ev.dist(rb) if ev.dist is not None else float("nan"),
            "padic_dist_corr": (metrics.padic_dist_corr(pair_d[split], ev.padic_codes)
                                if split in pair_d else float("nan")),
            "r_v0": metrics.level_mean(rb, v, 0),
            "r_v9": metrics.level_mean(rb, v, 9),
        }
        out.update(_split_row(split, m))
    out["erank_B"] = metrics.effective_rank_from_gram(gram)
    return out


def update_bests(bests: dict[str, float], best_epochs: dict[str, int], row: Mapping[str, Any],
                 splits: Iterable[str]) -> None:
    """Record ``row``'s values that beat ``bests`` (the loss, and each split's `BEST_DIRECTION` metrics)."""
    candidates = {"loss": min}
    for split in splits:
        for name, better in BEST_DIRECTION.items():
            candidates[f"{split}_{name}"] = better
    for key, better in candidates.items():
        value = row.get(key)
        if value is None or not math.isfinite(value):
            continue
        if key not in bests or better(value, bests[key]) != bests[key]:
            bests[key] = value
            best_epochs[key] = row["epoch"]


def summary_of(last_row: Mapping[str, Any] | None, bests: Mapping[str, float], best_epochs: Mapping[str, int],
               epochs_completed: int, events: Iterable[str]) -> dict[str, Any]:
    """What ``final.json`` holds: the last row, ``best_<key>`` and ``best_<key>_epoch``, epochs completed and the
    homeostasis events."""
    out: dict[str, Any] = dict(last_row or {})
    for key, value in bests.items():
        out[f"best_{key}"] = value
        out[f"best_{key}_epoch"] = best_epochs[key]
    out["epochs_completed"] = epochs_completed
    out["homeostasis_events"] = list(events)
    return out


def aligned_steps(t: torch.Tensor) -> torch.Tensor:
    """``t`` (steps, ...) with each step's slice starting on a 16-byte boundary: the same values, rows padded.

    For ``--compile`` on a GPU: inductor assumes every input keeps the alignment it had when compiling (the
    first step's slice, at offset 0) and copies, at every call, an input that lacks it (a slice of a (steps, 10)
    tensor at an odd step, say)."""
    steps = t.shape[0]
    n = t.numel() // max(steps, 1)
    unit = 16 // t.element_size()
    if steps == 0 or n % unit == 0 or not t.is_contiguous():
        return t
    padded = t.new_empty((steps, -(-n // unit) * unit))
    padded[:, :n] = t.reshape(steps, n)
    return padded[:, :n].view(t.shape)


class TernaryRun:
    """One training run. ``epoch`` = epochs completed; ``train_epoch()`` trains the next one."""

    def __init__(self, cfg: Config, device: str = "cpu", execution: Execution | None = None):
        """``execution``: how the run executes on its device (`tvae.execution`; default: the device's defaults)."""
        self.cfg = cfg
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        self.execution = ex = (execution or Execution()).resolve(self.device, cfg.optim.optimizer)
        self.epochs = cfg.epochs
        self.epoch = 0
        dev = self.device

        # --- data
        self.trits = data.all_trits().to(dev)
        self.classes = (self.trits + 1).long()
        self.v = data.valuations().to(dev)
        self.v_np = self.v.cpu().numpy()
        self.split = data.make_split(cfg.data)
        self.sampler = data.StratifiedSampler(self.split.train, cfg.data.batch_size, cfg.data.high_v_budget_ratio,
                                              cfg.data.high_v_min_level).to(dev)
        self.train_ops = self.split.train.to(dev)
        self.pair_valuation = data.valuation_table().to(dev)  # v(|i-j|) look-up
        zv = data.zero_valuation(self.trits)
        rad = cfg.loss.radial
        self.targets = losses.level_targets(rad.inner_radius, rad.outer_radius, device=dev)
        self.zero_target = (rad.outer_radius - zv.float() / 9 * (rad.outer_radius - rad.inner_radius))
        self.zero_count = data.zero_count(self.trits).float()
        self.radial_weights = 1.0 + torch.exp(rad.valuation_exponent * torch.arange(10, dtype=torch.float32, device=dev))
        present = (self.sampler.draws_per_level > 0).nonzero().flatten().to(dev)
        self.levels = radius_terms.Levels(self.targets, self.radial_weights, present[:-1], present[1:])
        # weights of the paths whose radius terms count: z_A's (upstream: 1) and z_B's, or z_B's alone
        a = cfg.loss.a_path_weight
        self.path_weights = torch.tensor([a, 1.0] if a != 0.0 else [1.0], device=dev)
        self.radius_weights = {phase: self._make_radius_weights(phase) for phase in ("structure", "geometry")}
        self.evals = {"train": _SplitEval(self.split.train, self.v_np, cfg, 1, dev)}
        if len(self.split.heldout):
            self.evals["heldout"] = _SplitEval(self.split.heldout, self.v_np, cfg, 2, dev)
        self.device_metrics = (DeviceMetrics([self.evals], [self.train_ops], self.v, dev) if ex.device_metrics
                               else None)

        # --- model, optimiser, homeostasis (seeded by the trial seed; the caller's generators are left as they were)
        outer_rng = self._capture_rng()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        random.seed(cfg.seed)
        self.model = TernaryVAE(cfg.model).to(dev)
        module_params = {name: list(getattr(self.model, name).parameters()) for name in TernaryVAE.MODULES}
        if cfg.model.learnable_curvature:
            module_params["curvature"] = [self.model.raw_curvature]
        self._flatten(module_params)
        groups = [{"params": [self._flat_params[name]], "name": name} for name in module_params]
        self.optimizer = make_optimizer(cfg, groups, dev)
        self.homeostasis = Homeostasis(cfg.homeostasis, start_epoch=cfg.phases.structure_start)
        self.r_orig: torch.Tensor | None = None      # reference radii of z_B at the start of the structure phase
        # (mu, logvar) of every operation for each frozen encoder: a frozen encoder's outputs cannot change
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bests: dict[str, float] = {}
        self.best_epochs: dict[str, int] = {}
        self.last_row: dict[str, Any] | None = None
        self.events: list[str] = []
        self.timings: dict[str, float] = {}           # seconds of the last epoch: train_s, eval_s
        self._rng = self._capture_rng()
        self._restore_rng(outer_rng)
        # GPU: each epoch's steps replay as one CUDA graph (tvae/cuda_graphs.py); geoopt's optimiser is not capturable
        self.graphs = None
        if ex.cuda_graphs:
            from tvae.cuda_graphs import EpochGraphs

            self.graphs = EpochGraphs(dev)
        # the structure steps' A and B paths on two streams (`_on_two_streams`)
        self.side_stream = torch.cuda.Stream(dev) if ex.two_streams else None
        # opt-in: torch.compile (inductor) fuses each step's loss and its backward. Every phase and frozen-encoder
        # combination compiles once (10-18 s on the GPU machine, 6-19 s on one CPU core). Measured: GPU (H200,
        # with CUDA graphs) 0.043 instead of 0.069 s/epoch; CPU no gain (0.312 vs 0.308 s/epoch).
        if ex.compile:
            self._coverage_loss = torch.compile(self._coverage_loss, dynamic=False)
            self._structure_loss = torch.compile(self._structure_loss, dynamic=False)

    def _flatten(self, module_params: dict[str, list[torch.nn.Parameter]]) -> None:
        """All parameters become views into one flat buffer, with a matching flat gradient buffer. The optimiser
        sees one flat tensor per module (a view of that module's contiguous segment), so clipping is two ops on
        the whole gradient buffer (frozen modules' segments stay 0) and Adam updates a few large tensors instead
        of many small ones. On the CPU the parameters' gradients are views into that buffer (autograd adds into
        them in place); on a GPU autograd hands fresh gradients over and one foreach copy moves them in (`_step`:
        one kernel instead of an add per parameter; on the CPU fresh gradient tensors cost more than the adds:
        `Execution.hand_over_grads`)."""
        all_params = [p for ps in module_params.values() for p in ps]
        n = sum(p.numel() for p in all_params)
        ref = all_params[0]
        self._flat = torch.zeros(n, dtype=ref.dtype, device=ref.device)
        self._flat_grad = torch.zeros(n, dtype=ref.dtype, device=ref.device)
        self._flat_params: dict[str, torch.Tensor] = {}
        self._flat_grads: dict[str, torch.Tensor] = {}
        self._grad_slots: list[tuple[torch.nn.Parameter, torch.Tensor]] = []   # (parameter, its flat gradient view)
        off = 0
        for name, ps in module_params.items():
            start = off
            for p in ps:
                k = p.numel()
                self._flat[off:off + k].copy_(p.detach().reshape(-1))
                p.data = self._flat[off:off + k].view_as(p)
                slot = self._flat_grad[off:off + k].view_as(p)
                self._grad_slots.append((p, slot))
                if not self.execution.hand_over_grads:
                    p.grad = slot
                off += k
            self._flat_params[name] = self._flat[start:off]
            self._flat_grads[name] = self._flat_grad[start:off]

    # ------------------------------------------------------------------ RNG isolation
    def _capture_rng(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore_rng(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    # ------------------------------------------------------------------ phase set-up
    def _trainable(self, phase: str) -> dict[str, bool]:
        if phase == "coverage":
            return {"encoder_A": True, "encoder_B": False, "proj_A": True, "proj_B": False, "decoder": True}
        fr = self.homeostasis.frozen
        return {"encoder_A": not fr["encoder_A"], "encoder_B": not fr["encoder_B"], "proj_A": True,
                "proj_B": True, "decoder": False}

    def _begin_structure(self) -> None:
        """End of the coverage phase: encoder B starts as a copy of A; reference radii of z_B are recorded."""
        self.model.encoder_B.load_state_dict(self.model.encoder_A.state_dict())
        self.model.proj_B.load_state_dict(self.model.proj_A.state_dict())
        self.model.eval()
        with torch.no_grad():
            mu_B, _ = self.model.encoder_B(self.trits)
            # upstream's reference for the richness ratio: the Euclidean norm of z_B at the start (see README)
            self.r_orig = self.model.proj_B(mu_B).norm(dim=-1).clone()
        self._cache.clear()

    def _frozen_outputs(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of every operation from the frozen encoder ``name`` (eval mode), computed once."""
        if name not in self._cache:
            encoder = getattr(self.model, name)
            was_training = encoder.training
            encoder.eval()
            with torch.inference_mode(False), torch.no_grad():
                mu, lv = encoder(self.trits)
            encoder.train(was_training)
            self._cache[name] = (mu.clone(), lv.clone())
        return self._cache[name]

    def _set_lrs(self, phase: str, trainable: dict[str, bool]) -> float:
        o = self.cfg.optim
        e1 = self.cfg.phases.structure_start
        if phase == "coverage":   # the foundation phase has its own cosine decay over [0, e1)
            base = self.cfg.coverage.lr * cosine(self.epoch, e1, self.cfg.coverage.min_lr_scale)
            scales = {"encoder_A": 1.0, "proj_A": 1.0, "decoder": o.lr_scale_decoder}
            weight_decay = self.cfg.coverage.weight_decay
        else:                     # the main schedule counts epochs from the start of the structure phase
            base = o.lr * lr_factor(self.cfg.schedule, self.epoch - e1, self.epochs - e1)
            scales = {"encoder_A": o.lr_scale_encoder_A, "encoder_B": o.lr_scale_encoder_B,
                      "proj_A": o.lr_scale_projections, "proj_B": o.lr_scale_projections}
            weight_decay = o.weight_decay
        scales["curvature"] = 1.0
        for group in self.optimizer.param_groups:
            set_lr(group, base * scales.get(group["name"], 0.0))
            group["weight_decay"] = weight_decay
        return base

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self) -> dict[str, Any]:
        """Train the next epoch and evaluate it; returns its row. The epoch runs with the CPU flushing subnormal
        floats to zero (FTZ/DAZ, where the CPU has them; switched off again afterwards): from about epoch 40 of
        a v5_12_4 run, subnormal weights and Adam moments made epochs 2-4x slower (100 epochs on this CPU:
        53 s, flushed 29 s; tvae/README.md, difference 19)."""
        if self.epoch >= self.epochs:
            raise RuntimeError(f"all {self.epochs} epochs are already trained")
        t0 = time.perf_counter()
        outer_rng = self._capture_rng()
        self._restore_rng(self._rng)
        flushing = torch.set_flush_denormal(True)
        try:
            row = self._train_epoch()
        finally:
            if flushing:
                torch.set_flush_denormal(False)
            self._rng = self._capture_rng()
            self._restore_rng(outer_rng)
        row["epoch_seconds"] = time.perf_counter() - t0
        row["wall_time"] = time.time()
        self._update_bests(row)
        self.last_row = row
        self.epoch += 1
        return row

    def _train_epoch(self) -> dict[str, Any]:
        t_start, c_start = time.perf_counter(), time.process_time()
        cfg, model = self.cfg, self.model
        phase = phase_of(cfg, self.epoch)
        if phase != "coverage" and self.r_orig is None:
            self._begin_structure()
        trainable = self._trainable(phase)
        for name in TernaryVAE.MODULES:
            module = getattr(model, name)
            module.train(trainable[name])
            module.requires_grad_(trainable[name])
        for name in ("encoder_A", "encoder_B"):
            if trainable[name] or phase == "coverage":
                self._cache.pop(name, None)
        lr = self._set_lrs(phase, trainable)
        for name, flat in self._flat_params.items():      # frozen modules: no gradient, no Adam update
            flat.grad = self._flat_grads[name] if trainable.get(name, True) else None
        before = self._flat.clone()                         # every parameter, in one flat buffer (_flatten)

        if phase == "coverage":
            inputs, steps_fn = self._coverage_inputs(), self._coverage_steps
        else:
            inputs, steps_fn = self._structure_inputs(phase), lambda inp: self._structure_steps(inp, phase)
        if self.graphs is None:
            sums, grad_sum = steps_fn(inputs)
        else:   # the graph key: everything the recorded steps depend on besides the inputs
            key = (phase, tuple(sorted(trainable.items())), tuple(sorted(self.homeostasis.frozen.items())))
            sums, grad_sum = self.graphs.run(key, steps_fn, inputs)
        steps = len(inputs["pi"] if phase == "coverage" else inputs["x"])

        # --- the one host synchronisation of the training part
        *term_values, grad_total = torch.cat([sums / steps, grad_sum.reshape(1)]).tolist()
        t_train, c_train = time.perf_counter(), time.process_time()
        grad_norm = grad_total / steps
        terms = dict(zip(TERMS, term_values))
        for name, value in terms.items():
            if not math.isfinite(value):
                raise DivergedError(f"epoch {self.epoch}: loss term {name!r} is {value}")
        after = self._flat
        weight_norm, update_ratio, *module_norms = torch.stack(
            [after.norm(), (after - before).norm() / before.norm().clamp_min(1e-12)]
            + [self._flat_params[name].norm() for name in TernaryVAE.MODULES]).tolist()
        row: dict[str, Any] = {"epoch": self.epoch, "phase": phase}
        row.update(self._evaluate(phase))
        self.timings = {"train_s": t_train - t_start, "eval_s": time.perf_counter() - t_train,
                        "train_cpu_s": c_train - c_start, "eval_cpu_s": time.process_time() - c_train}
        row["loss"] = sum(term_values)
        row.update({f"loss_{k}": v for k, v in terms.items()})
        row["lr"] = lr
        row["grad_norm"] = grad_norm
        row["weight_norm"] = weight_norm
        row.update({f"weight_norm_{name}": value for name, value in zip(TernaryVAE.MODULES, module_norms)})
        row["update_ratio"] = update_ratio
        if phase != "coverage":
            events = self.homeostasis.update(self.epoch, row["train_coverage"], row["train_hierarchy_A"],
                                             row["train_hierarchy_B"], row["train_dist_corr"])
            self.events.extend(events)
        frozen = self._trainable(phase) if phase != "coverage" else trainable
        row["frozen_encoder_A"] = not frozen["encoder_A"]
        row["frozen_encoder_B"] = not frozen["encoder_B"]
        row["frozen_decoder"] = not frozen["decoder"]
        row["curvature"] = float(model.curvature().detach())
        return row

    def _step(self, loss: torch.Tensor) -> torch.Tensor:
        g = self._flat_grad
        if self.execution.hand_over_grads:     # GPU (see _flatten)
            for p, _ in self._grad_slots:
                p.grad = None
            loss.backward()
            got = [(p, slot) for p, slot in self._grad_slots if p.grad is not None]
            g.zero_()                      # frozen modules' segments stay 0; the others are overwritten
            torch._foreach_copy_([slot for _, slot in got], [p.grad for p, _ in got])
        else:                              # CPU: autograd adds into the flat buffer's views
            g.zero_()
            loss.backward()
        # global-norm clipping (torch.nn.utils.clip_grad_norm_'s formula) on the flat gradient buffer: the
        # frozen modules' segments are 0, so the norm is the norm over the trainable parameters
        norm = torch.linalg.vector_norm(g)
        g.mul_((self.cfg.optim.max_grad_norm / (norm + 1e-6)).clamp_(max=1.0))
        if not self.execution.direct_adam or not adam_step(self.optimizer):
            self.optimizer.step()
        return norm

    def _pairs(self, n_steps: int, batch: int, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ordered pairs (i, j), i != j (j shifted by one where equal), for every step of the epoch."""
        p = torch.randint(0, batch, (n_steps, 2, n_pairs), device=self.device)
        i, j = p[:, 0], p[:, 1]
        j = torch.where(i == j, (j + 1) % batch, j)
        return i, j

    # Each phase's epoch = inputs (everything random or epoch-dependent, drawn up front) + steps (a pure loop
    # over them: the part a CUDA graph records). Coverage: one row of pairs per step; structure: one of everything.
    def _coverage_inputs(self) -> dict[str, torch.Tensor]:
        cfg, dev = self.cfg, self.device
        cov, rad = cfg.coverage, cfg.loss.radial
        perm = self.train_ops[torch.randperm(len(self.train_ops), device=dev)]
        bsz = min(cov.batch_size, len(perm))
        n_steps = -(-len(perm) // bsz)
        pi, pj = self._pairs(n_steps, bsz, min(rad.n_pairs, bsz * (bsz - 1) // 2))
        e1 = cfg.phases.structure_start
        pull = cov.radial_weight * min(1.0, self.epoch / max(1, e1 // 2))   # ramp: 0 -> full at e1/2
        if self.execution.compile:
            pi, pj = aligned_steps(pi), aligned_steps(pj)
        return {"perm": perm, "pi": pi, "pj": pj, "pull": torch.tensor(pull, device=dev)}

    def _train_steps(self, steps: Iterable[dict[str, torch.Tensor]], loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """The loop of an epoch: for each step's inputs, its loss and a clipped Adam step. Returns the sums of
        the terms (TERMS order) and of the gradient norms, on the device."""
        sums = torch.zeros(len(TERMS), device=self.device)
        grad_sum = torch.zeros((), device=self.device)
        for step in steps:
            loss, terms = loss_fn(step)
            grad_sum += self._step(loss)
            sums += terms.detach()
        return sums, grad_sum

    def _coverage_steps(self, inp: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        bsz = min(self.cfg.coverage.batch_size, len(inp["perm"]))
        steps = ({"idx": idx, "pi": inp["pi"][s], "pj": inp["pj"][s], "pull": inp["pull"]}
                 for s, idx in enumerate(torch.split(inp["perm"], bsz)))
        return self._train_steps(steps, lambda step: self._coverage_loss(step, bsz))

    def _coverage_loss(self, step: dict[str, torch.Tensor], bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One coverage step's loss and its terms (in TERMS order) from the step's inputs."""
        cfg, model = self.cfg, self.model
        cov, rad = cfg.coverage, cfg.loss.radial
        idx = step["idx"]
        x, cls, v = self.trits[idx], self.classes[idx], self.v[idx]
        mu, logvar = model.encoder_A(x)
        c = model.curvature()
        z_A = model.proj_A(sample(mu, logvar))
        recon = cov.recon_weight * losses.reconstruction(model.decode(z_A, c), cls)
        kl = cov.beta * losses.kl_divergence(mu, logvar, cov.free_bits)
        pi, pj = step["pi"], step["pj"]
        if len(idx) != bsz:                                          # the last, shorter batch
            pi, pj = pi % len(idx), pj % len(idx)
        radial = step["pull"] * losses.radial(radius(z_A, c), v, self.targets, self.radial_weights,
                                              pi, pj, self.radius_weights["structure"].delta, rad.margin_weight)
        zero = torch.zeros((), device=self.device)
        return recon + kl + radial, torch.stack([recon, kl, zero, zero, zero, radial, zero, zero, zero])

    def _structure_inputs(self, phase: str) -> dict[str, torch.Tensor]:
        L = self.cfg.loss
        batches = self.sampler.epoch_batches()                       # (S, B)
        S, B = batches.shape
        flat = batches.reshape(-1)
        take = lambda t: t.index_select(0, flat).view(S, B, *t.shape[1:])  # noqa: E731  (t[batches], 5x faster)
        v_b = take(self.v)                                           # (S, B)
        onehot = torch.nn.functional.one_hot(v_b, 10).float()         # (S, B, 10)
        counts = onehot.sum(1)                                       # (S, 10)
        n0 = take(self.zero_count)
        inp = {
            "x": take(self.trits), "cls": take(self.classes), "v": v_b,    # whole-epoch gathers
            "onehot": onehot, "counts": counts, "present": (counts > 0).float(), "var_levels": (counts > 1).float(),
            "r_orig": take(self.r_orig),
            "n0_std": (n0 - n0.mean(1, keepdim=True)) / (n0.std(1, keepdim=True) + 1e-8),
            "zero_t": take(self.zero_target),
        }
        inp["rad_i"], inp["rad_j"] = self._pairs(S, B, min(L.radial.n_pairs, B * (B - 1) // 2))
        inp["rank_i"], inp["rank_j"] = self._pairs(S, B, min(L.rank.n_pairs, B * (B - 1)))
        inp.update(radius_terms.step_constants(v_b, onehot, counts, inp["present"], inp["var_levels"],
                                               inp["r_orig"], inp["rad_i"], inp["rad_j"], inp["rank_i"],
                                               inp["rank_j"], self.levels, self.radius_weights[phase]))
        if phase == "geometry":
            geo_i, geo_j = self._pairs(S, B, min(L.geodesic.n_pairs, B * (B - 1) // 2))
            pv = self.pair_valuation[(torch.gather(batches, 1, geo_i) - torch.gather(batches, 1, geo_j)).abs()]
            inp["geo_i"], inp["geo_j"] = geo_i, geo_j
            inp["geo_t"] = L.geodesic.max_target_distance * torch.exp(-pv.float() / L.geodesic.valuation_scale)
        for name in ("encoder_A", "encoder_B"):                      # a frozen encoder's outputs, gathered
            if self.homeostasis.frozen[name]:
                mu, lv = self._frozen_outputs(name)
                inp[f"mu_{name[-1]}"], inp[f"lv_{name[-1]}"] = take(mu), take(lv)
        if self.execution.compile:
            inp = {name: aligned_steps(value) for name, value in inp.items()}
        return inp

    def _structure_steps(self, inp: dict[str, torch.Tensor], phase: str) -> tuple[torch.Tensor, torch.Tensor]:
        steps = ({name: value[s] for name, value in inp.items()} for s in range(len(inp["x"])))
        return self._train_steps(steps, lambda step: self._structure_loss(step, phase))

    def _make_radius_weights(self, phase: str) -> radius_terms.Weights:
        L = self.cfg.loss
        rich, rad, zero = L.rich, L.radial, L.zero
        return radius_terms.Weights(
            hierarchy=rich.hierarchy_weight, richness=rich.richness_weight, separation=rich.separation_weight,
            radial=rad.weight * (0.5 if phase == "geometry" else 1.0), rank=L.rank.weight,
            min_richness_ratio=rich.min_richness_ratio, separation_margin=rich.separation_margin,
            margin_weight=rad.margin_weight, delta=(rad.outer_radius - rad.inner_radius) / 9,
            temperature=L.rank.temperature, zero_valuation=zero.valuation_weight,
            zero_sparsity=zero.sparsity_weight, zero_target_correlation=zero.target_correlation)

    def _structure_loss(self, step: dict[str, torch.Tensor], phase: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One structure/geometry step's loss and its terms (in TERMS order) from the step's inputs."""
        L = self.cfg.loss
        c = self.model.curvature()
        if self.side_stream is None:
            z_A, recon = self._path_A(step, c)
            z_B = self._path_B(step)
        else:
            (z_A, recon), z_B = self._on_two_streams(c, lambda: self._path_A(step, c), lambda: self._path_B(step))
        # the paths whose radius terms count, stacked: z_A and z_B (loss.a_path_weight != 0, upstream), or z_B
        z = torch.stack([z_A, z_B]) if len(self.path_weights) == 2 else z_B.unsqueeze(0)     # (P, B, d)
        r = radius(z, c)                                                                    # (P, B)
        zero = torch.zeros(1, device=self.device)
        # hierarchy, richness, separation, radial, rank, zero-structure: one vector (tvae/radius_terms.py)
        by_radius = radius_terms.terms(r, step, self.radius_weights[phase], self.path_weights, self.levels)
        if phase == "geometry":
            geo = L.geodesic.weight * (self.path_weights @ losses.geodesic(z, step["geo_t"], step["geo_i"],
                                                                            step["geo_j"], c)).reshape(1)
        else:
            geo = zero
        terms = torch.cat([recon.reshape(1), zero, by_radius, geo])
        return terms.sum(), terms

    def _path_A(self, step: dict[str, torch.Tensor], c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_A of the step (encoder A, or its cached outputs when frozen) and the reconstruction loss through it."""
        model = self.model
        mu, lv = (step["mu_A"], step["lv_A"]) if "mu_A" in step else model.encoder_A(step["x"])
        z_A = model.proj_A(sample(mu, lv))
        recon = self.cfg.loss.rich.coverage_weight * losses.reconstruction(model.decoder(log0(z_A, c)), step["cls"])
        return z_A, recon

    def _path_B(self, step: dict[str, torch.Tensor]) -> torch.Tensor:
        model = self.model
        mu, lv = (step["mu_B"], step["lv_B"]) if "mu_B" in step else model.encoder_B(step["x"])
        return model.proj_B(sample(mu, lv))

    def _on_two_streams(self, c: torch.Tensor, first, second):
        """GPU: ``first()`` on the side stream while ``second()`` runs on the current one. The two paths are
        independent chains of small kernels that each occupy a few of the GPU's multiprocessors; autograd runs
        each backward op on its forward op's stream, so the backward passes overlap too. Random numbers are
        drawn in the same order as without the side stream (first's, then second's)."""
        main = torch.cuda.current_stream(self.device)
        side = self.side_stream
        side.wait_stream(main)
        c.record_stream(side)                   # made on main, read on side: not reused before side is done
        with torch.cuda.stream(side):
            a = first()
        b = second()
        main.wait_stream(side)
        for t in a:
            t.record_stream(main)               # made on side, read and freed on main
        return a, b

    # ------------------------------------------------------------------ evaluation
    def _embed_all(self, phase: str, c: torch.Tensor, frozen_mu: Mapping[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, ...]:
        """mu_B, z_B, r_A, r_B and decoder-correctness of every operation (eval mode, no dropout, mu).
        ``frozen_mu``: the mu of every operation for each frozen encoder (``"A"``, ``"B"``)."""
        model = self.model
        if phase == "coverage":
            mu_A = mu_B = model.encoder_A(self.trits)[0]                # B is tied to A until e1
        else:
            mu_A = frozen_mu["A"] if "A" in frozen_mu else model.encoder_A(self.trits)[0]
            mu_B = frozen_mu["B"] if "B" in frozen_mu else model.encoder_B(self.trits)[0]
        z_A = model.proj_A(mu_A)
        z_B = z_A if phase == "coverage" else model.proj_B(mu_B)
        correct = (model.decoder(log0(z_A, c)).argmax(-1) == self.classes).all(-1)
        return mu_B, z_B, radius(z_A, c), radius(z_B, c), correct

    def _frozen_mu(self, phase: str) -> dict[str, torch.Tensor]:
        if phase == "coverage":
            return {}
        return {name[-1]: self._frozen_outputs(name)[0] for name in ("encoder_A", "encoder_B")
                if self.homeostasis.frozen[name]}

    def _evaluate(self, phase: str) -> dict[str, float]:
        self.model.eval()
        with torch.inference_mode():
            if self.execution.device_metrics:
                return self._evaluate_on_device(phase)
            return self._evaluate_on_host(phase)

    def _evaluate_on_device(self, phase: str) -> dict[str, float]:
        """GPU: every metric on the device, read back in one transfer; with graphs, the whole evaluation replays
        as one CUDA graph per (phase, frozen encoders), like the training steps."""
        def metrics_fn(frozen_mu: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
            c = self.model.curvature()
            embeddings = self._embed_all(phase, c, frozen_mu)
            return (self.device_metrics.values(*(t.unsqueeze(0) for t in embeddings), c),)

        frozen_mu = self._frozen_mu(phase)
        if self.graphs is None:
            packed, = metrics_fn(frozen_mu)
        else:
            key = ("evaluation", phase, tuple(sorted(frozen_mu)))
            packed, = self.graphs.run(key, metrics_fn, frozen_mu)
        return unpack_device_metrics(self.device_metrics.model_values(packed.cpu().numpy(), 0), self.evals)

    def _evaluate_on_host(self, phase: str) -> dict[str, float]:
        """CPU: the embeddings in torch, the metrics in numpy (`host_metrics`)."""
        c = self.model.curvature()
        mu_B, z_B, r_A, r_B, correct = self._embed_all(phase, c, self._frozen_mu(phase))
        return host_metrics(self.evals, self.train_ops, mu_B, z_B, r_A, r_B, correct, c)

    # ------------------------------------------------------------------ bests, summary, save
    def _update_bests(self, row: dict[str, Any]) -> None:
        update_bests(self.bests, self.best_epochs, row, self.evals)

    def summary(self) -> dict[str, Any]:
        return summary_of(self.last_row, self.bests, self.best_epochs, self.epoch, self.events)

    def state(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": config_mod.to_dict(self.cfg),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "homeostasis": self.homeostasis.state_dict(),
            "rng": self._rng,
            "r_orig": self.r_orig,
            "bests": dict(self.bests),
            "best_epochs": dict(self.best_epochs),
            "last_row": self.last_row,
            "events": list(self.events),
        }

    def save(self, directory: str | Path) -> None:
        checkpoint.save(Path(directory) / CHECKPOINT_FILE, self.state())

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for st in self.optimizer.state.values():   # torch restores geoopt's int step as a float tensor
            if self.cfg.optim.optimizer == "riemannian_adam" and torch.is_tensor(st.get("step")):
                st["step"] = int(st["step"].item())
        self.homeostasis.load_state_dict(state["homeostasis"])
        self._rng = state["rng"]
        self.r_orig = None if state["r_orig"] is None else state["r_orig"].to(self.device)
        self.bests = dict(state["bests"])
        self.best_epochs = dict(state["best_epochs"])
        self.last_row = state["last_row"]
        self.events = list(state["events"])
        self.epoch = int(state["epoch"])
        self._cache.clear()
        if self.graphs is not None:      # recorded steps point at the optimiser state this load replaced
            self.graphs.clear()
        for group in self.optimizer.param_groups:   # a checkpoint from the other device kind stores lr as the other type
            group["lr"] = lr_holder(self.cfg, self.device, float(group["lr"]))


# ---------------------------------------------------------------------------------------------- task API


def make_run(overrides: Mapping[str, Any] | None = None, *, epochs: int | None = None, seed: int = 0,
             device: str = "cpu", preset: str | None = None, **execution: bool | None) -> TernaryRun:
    """A fresh run. ``overrides`` are dotted config keys; the key ``preset`` selects the base preset;
    ``execution``: `tvae.execution.Execution` switches."""
    return TernaryRun(build_config(overrides, epochs=epochs, seed=seed, preset=preset), device, Execution(**execution))


def build_config(overrides: Mapping[str, Any] | None = None, *, epochs: int | None = None, seed: int = 0,
                 preset: str | None = None) -> Config:
    """The configuration of a run of the task ``ternary_vae``: the preset (the key ``preset``, else
    ``v5_12_4``) with the dotted ``overrides``, ``epochs`` and ``seed`` (a cohort member is built from the same)."""
    overrides = dict(overrides or {})
    base = preset or overrides.pop("preset", "v5_12_4")
    if not isinstance(base, str):
        raise config_mod.ConfigError(f"preset: expected a str, got {base!r}")
    return config_mod.build(base, overrides=overrides, epochs=epochs, seed=seed)


def run_from_config(cfg: Config, device: str = "cpu", **execution: bool | None) -> TernaryRun:
    config_mod.validate(cfg)
    return TernaryRun(cfg, device, Execution(**execution))


def load_run(directory: str | Path, *, device: str = "cpu", epochs: int | None = None,
             **execution: bool | None) -> TernaryRun:
    """Restore a run saved with ``save(directory)``; ``epochs`` may extend the total."""
    state = checkpoint.load(Path(directory) / CHECKPOINT_FILE)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint in {directory} has version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    cfg = config_mod.from_dict(Config, state["config"])
    if epochs is not None:
        config_mod.set_key(cfg, "epochs", epochs)
    run = TernaryRun(cfg, device, Execution(**execution))
    run.load_state(state)
    return run
