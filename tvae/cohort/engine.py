"""The cohort trainer: K TernaryVAE runs (members) trained together in one process, every step of all of them
computed by the same stacked operations (`tvae.cohort.stacked`).

Per member, never shared: its configuration's searched values, its seed and random numbers
(`tvae.cohort.randomness`), data order, batch sizes and batches, held-out split, Adam state and step counts,
clipping norm, homeostasis decisions, divergence and checkpoint slice. Members that take the same kind of step
(coverage, or structure: the structure and geometry phases) with the same batch size and the same encoders
frozen train as one *group* (`Member.signature`): the group's steps run over the stacked parameters of its
members; members of another step kind, batch size or frozen state form another group in the same epoch. A
group's batch size is read from its members (their signature), never from the shared configuration. A member
whose epoch has fewer steps (a smaller training split) sits out the group's remaining steps (no update).
Evaluation runs for all members together, whatever their groups.

An epoch reads: groups -> for each group: inputs (`tvae.cohort.inputs`) -> steps -> (scatter back) -> checks ->
evaluation (`tvae.cohort.evaluation`) -> rows -> homeostasis. The optimiser is `tvae.cohort.adam`, the losses
`tvae.cohort.losses`. A group's steps run eagerly (the CPU's way) or in graph form (the GPU's way: one function
of tensors, replayed as a CUDA graph; `_train_group_in_graph_form`); both go through the same loop, `_steps`.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from tvae import checkpoint, config as config_mod, data, radius_terms
from tvae.cohort import losses
from tvae.cohort.adam import CohortAdam
from tvae.cohort.evaluation import Evaluation
from tvae.cohort.inputs import GroupInputs
from tvae.cohort.members import check_compatible
from tvae.cohort.randomness import Site, StepRandom
from tvae.cohort.stacked import MODULES, Layout, StackedTernaryVAE
from tvae.config import Config
from tvae.cuda_graphs import EpochGraphs
from tvae.geometry import radius
from tvae.homeostasis import Homeostasis
from tvae.losses import level_targets
from tvae.schedules import cosine, lr_factor
from tvae.trainer import TERMS, _SplitEval, phase_of, summary_of, update_bests

COHORT_VERSION = 1
CHECKPOINT_FILE = "cohort.pt"
MAX_GRAPHS = 16          # captured group shapes kept at once (each graph holds its own memory pool)


class Status:
    """A member's state in its cohort (the words `tvae.train` and the study write)."""
    RUNNING = "running"
    FINISHED = "finished"
    DIVERGED = "diverged"
    STOPPED = "stopped"          # stopped from outside (early stopping)


def module_rates(cfg: Config, epoch: int, phase: str) -> tuple[float, dict[str, float], float]:
    """(base learning rate, each module's learning rate, weight decay) of ``epoch`` (the single run's rule:
    the coverage phase has its own cosine decay over [0, e1); the main schedule counts from e1)."""
    o, e1 = cfg.optim, cfg.phases.structure_start
    if phase == "coverage":
        base = cfg.coverage.lr * cosine(epoch, e1, cfg.coverage.min_lr_scale)
        scales = {"encoder_A": 1.0, "proj_A": 1.0, "decoder": o.lr_scale_decoder}
        weight_decay = cfg.coverage.weight_decay
    else:
        base = o.lr * lr_factor(cfg.schedule, epoch - e1, cfg.epochs - e1)
        scales = {"encoder_A": o.lr_scale_encoder_A, "encoder_B": o.lr_scale_encoder_B,
                  "proj_A": o.lr_scale_projections, "proj_B": o.lr_scale_projections}
        weight_decay = o.weight_decay
    return base, {m: base * scales.get(m, 0.0) for m in MODULES}, weight_decay


def trainable_modules(phase: str, frozen: dict[str, bool]) -> list[str]:
    if phase == "coverage":
        return ["encoder_A", "proj_A", "decoder"]
    return [m for m in ("encoder_A", "encoder_B") if not frozen[m]] + ["proj_A", "proj_B"]


@dataclass
class Member:
    """One run inside a cohort: its configuration and everything of it that is not a stacked tensor."""
    cfg: Config
    split: data.Split
    sampler: data.StratifiedSampler
    train_ops: torch.Tensor
    evals: dict[str, _SplitEval]
    sep: torch.Tensor                 # (9, 10) rows e_hi - e_lo of consecutive present levels, zero-padded
    sep_valid: torch.Tensor           # (9,)
    gen: torch.Generator
    homeostasis: Homeostasis
    epoch: int = 0
    status: str = Status.RUNNING
    error: str | None = None
    r_orig: torch.Tensor | None = None
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    bests: dict[str, float] = field(default_factory=dict)
    best_epochs: dict[str, int] = field(default_factory=dict)
    last_row: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status == Status.RUNNING and self.epoch < self.cfg.epochs

    def phase(self) -> str:
        return phase_of(self.cfg, self.epoch)

    def batch_size(self) -> int:
        """The batch size of the member's steps in its current phase (coverage: shuffled full passes; structure
        and geometry: the stratified sampler's batches)."""
        return self.cfg.coverage.batch_size if self.phase() == "coverage" else self.sampler.batch_size

    def signature(self) -> tuple:
        """What decides the shape and computation of the member's steps: (step kind, batch size) and, after the
        coverage phase, which encoders are frozen. Members with equal signatures share a group. The step kind is
        ``"coverage"`` or ``"structure"``: the structure and geometry phases take the same steps (geometry adds
        the geodesic term and halves the radial weight, both per member), so their members share groups."""
        phase = self.phase()
        if phase == "coverage":
            return (phase, self.batch_size())
        return ("structure", self.batch_size(), self.homeostasis.frozen["encoder_A"],
                self.homeostasis.frozen["encoder_B"])


@dataclass
class _GroupPlan:
    """What one group's epoch of steps is made of, decided before its first step."""
    kind: str                                  # "coverage" or "structure"
    modules: list[str]                         # the modules that train
    sites: tuple[list[Site], int]              # the random draws of a step and their rows (`Cohort._sites`)
    steps: int                                 # S: the most steps a member of the group takes
    n_steps: list[int]                         # each member's steps
    weights: dict[str, torch.Tensor]           # each member's loss scalars, (K,) each
    inputs: dict[str, Any]                     # "steps": name -> (K, S, ...) tensors; "pull" in the coverage phase
    max_norm: torch.Tensor                     # (K,) clipping norms
    keys: torch.Tensor | None = None           # graph form: (K,) the members' random keys of this epoch


class Cohort:
    """K members trained together. ``train_epoch()`` trains every active member's next epoch and returns
    {member index: row}; a member that diverged this epoch has no row (its ``status`` and ``error`` say why)."""

    def __init__(self, configs: Sequence[Config], device: str = "cpu", device_metrics: bool | None = None,
                 graph_steps: bool | None = None, cuda_graphs: bool | None = None):
        configs = list(configs)
        check_compatible(configs)
        for cfg in configs:
            config_mod.validate(cfg)
            if cfg.optim.optimizer != "adam":
                raise ValueError(f"optim.optimizer={cfg.optim.optimizer!r}: the cohort engine trains with 'adam' only")
        self.device = dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        # the metrics on the embeddings' device (`tvae.device_metrics`, default on a GPU: the host
        # would spend tens of milliseconds per member sorting) or in numpy on the host (`host_metrics`)
        self.device_metrics = dev.type == "cuda" if device_metrics is None else bool(device_metrics)
        # each group's steps in graph form (`_train_group_in_graph_form`; default on a GPU, where per-member
        # generator calls and Adam kernels would cost a launch each) and, on CUDA, replayed as CUDA graphs
        self.graph_steps = dev.type == "cuda" if graph_steps is None else bool(graph_steps)
        self.cuda_graphs = self.graph_steps and dev.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not (self.graph_steps and dev.type == "cuda"):
            raise ValueError("cuda_graphs needs graph_steps on a CUDA device")
        self.graphs = EpochGraphs(dev) if self.cuda_graphs else None
        cfg = configs[0]
        self.shared = cfg       # the members' shared keys are read from here (batch sizes are per member: not here)
        self.layout = Layout(cfg.model)
        self.model = StackedTernaryVAE(cfg.model, self.layout)
        self.trits = data.all_trits().to(dev)
        self.c = self.model.c_tensor(self.trits)          # the single run's curvature(), fixed
        self.classes = (self.trits + 1).long()
        self.v = data.valuations().to(dev)
        self.v_np = self.v.cpu().numpy()
        self.pair_valuation = data.valuation_table().to(dev)
        rad = cfg.loss.radial
        self.targets = level_targets(rad.inner_radius, rad.outer_radius, device=dev)
        zv = data.zero_valuation(self.trits)
        self.zero_target = rad.outer_radius - zv.float() / 9 * (rad.outer_radius - rad.inner_radius)
        self.zero_count = data.zero_count(self.trits).float()
        self.radial_weights = 1.0 + torch.exp(rad.valuation_exponent * torch.arange(10, dtype=torch.float32, device=dev))
        self.levels = radius_terms.Levels(self.targets, self.radial_weights,
                                          torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        a = cfg.loss.a_path_weight
        self.path_weights = torch.tensor([a, 1.0] if a != 0.0 else [1.0], device=dev)
        self.use_zero = cfg.loss.zero.valuation_weight != 0.0 or cfg.loss.zero.sparsity_weight != 0.0
        self.inputs = GroupInputs(cfg, dev, trits=self.trits, classes=self.classes, v=self.v,
                                  zero_count=self.zero_count, zero_target=self.zero_target,
                                  pair_valuation=self.pair_valuation, levels=self.levels)
        self.members = [self._member(c) for c in configs]
        self.flat = torch.stack([self.layout.initial_row(c.model, c.seed) for c in configs]).to(dev)
        self.adam = CohortAdam(len(configs), self.layout.n, self.layout.segments, dev)
        self.timings: dict[str, float] = {}
        self.evaluation = Evaluation(self.model, self.layout, self.trits, self.classes, self.v, self.c, dev,
                                     self.device_metrics)

    def _member(self, cfg: Config) -> Member:
        dev = self.device
        split = data.make_split(cfg.data)
        sampler = data.StratifiedSampler(split.train, cfg.data.batch_size, cfg.data.high_v_budget_ratio,
                                         cfg.data.high_v_min_level).to(dev)
        evals = {"train": _SplitEval(split.train, self.v_np, cfg, 1, dev)}
        if len(split.heldout):
            evals["heldout"] = _SplitEval(split.heldout, self.v_np, cfg, 2, dev)
        present = (sampler.draws_per_level > 0).nonzero().flatten()
        lo, hi = present[:-1], present[1:]
        eye = torch.eye(data.N_LEVELS)
        sep = torch.zeros(data.N_LEVELS - 1, data.N_LEVELS)
        sep[:len(lo)] = eye[hi] - eye[lo]
        sep_valid = torch.zeros(data.N_LEVELS - 1)
        sep_valid[:len(lo)] = 1.0
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(cfg.seed))
        return Member(cfg=cfg, split=split, sampler=sampler, train_ops=split.train.to(dev), evals=evals,
                      sep=sep.to(dev), sep_valid=sep_valid.to(dev), gen=gen,
                      homeostasis=Homeostasis(cfg.homeostasis, start_epoch=cfg.phases.structure_start))

    def __len__(self) -> int:
        return len(self.members)

    @property
    def active(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if m.active]

    @property
    def epoch(self) -> int:
        """Epochs trained by the cohort's furthest member (running members are all at this epoch)."""
        return max(m.epoch for m in self.members)

    def stop(self, k: int, reason: str = "stopped") -> None:
        """Stop member ``k`` from outside (early stopping): it trains no further epochs."""
        self.members[k].status = Status.STOPPED
        self.members[k].error = reason

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self) -> dict[int, dict[str, Any]]:
        """Train the next epoch of every active member; returns {member index: row}. Runs with subnormal floats
        flushed to zero, as the single run does (tvae.trainer.TernaryRun.train_epoch)."""
        active = self.active
        if not active:
            raise RuntimeError("no member of the cohort has epochs left to train")
        t0, c0 = time.perf_counter(), time.process_time()
        flushing = torch.set_flush_denormal(True)
        try:
            for k in active:
                if self.members[k].phase() != "coverage" and self.members[k].r_orig is None:
                    self._begin_structure(k)
            before = self.flat[active].clone()
            groups: dict[tuple, list[int]] = {}
            for k in active:
                groups.setdefault(self.members[k].signature(), []).append(k)
            stats: dict[int, dict[str, Any]] = {}
            for signature, idx in groups.items():
                stats.update(self._train_group(idx, signature))
            t_train, c_train = time.perf_counter(), time.process_time()
            rows = self._finish(active, before, stats)
        finally:
            if flushing:
                torch.set_flush_denormal(False)
        seconds = time.perf_counter() - t0
        self.timings = {"train_s": t_train - t0, "eval_s": time.perf_counter() - t_train,
                        "train_cpu_s": c_train - c0, "eval_cpu_s": time.process_time() - c_train}
        now = time.time()
        for k, row in rows.items():
            row["epoch_seconds"] = seconds
            row["wall_time"] = now
            update_bests(self.members[k].bests, self.members[k].best_epochs, row, self.members[k].evals)
            self.members[k].last_row = row
            self.members[k].epoch += 1
            if self.members[k].epoch >= self.members[k].cfg.epochs:
                self.members[k].status = Status.FINISHED
        return rows

    def _begin_structure(self, k: int) -> None:
        """Member k leaves the coverage phase: encoder B and projection B start as copies of A; the reference
        radii of z_B (the Euclidean norm of proj_B(mu_B), as upstream) are recorded."""
        seg = self.layout.segments
        for a_name, b_name in (("encoder_A", "encoder_B"), ("proj_A", "proj_B")):
            (a0, a1), (b0, b1) = seg[a_name], seg[b_name]
            self.flat[k, b0:b1] = self.flat[k, a0:a1]
        params = self.layout.views(self.flat[k:k + 1])
        with torch.inference_mode():
            mu_B, _ = self.model.encoder("B", params, self.trits.unsqueeze(0), None)
            self.members[k].r_orig = self.model.projection("B", params, mu_B, None)[0].norm(dim=-1).clone()
        self.members[k].cache.clear()

    def _frozen_outputs(self, idx: list[int], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of every operation from the frozen encoder ``name`` of members ``idx`` (eval mode), each
        computed once while it stays frozen."""
        missing = [i for i, k in enumerate(idx) if name not in self.members[k].cache]
        if missing:
            params = self.layout.views(self.flat[idx])
            with torch.no_grad():
                mu, lv = self.model.encoder(name[-1], params, self.trits.unsqueeze(0).expand(len(idx), *self.trits.shape), None)
            for i in missing:
                self.members[idx[i]].cache[name] = (mu[i].clone(), lv[i].clone())
        return (torch.stack([self.members[k].cache[name][0] for k in idx]),
                torch.stack([self.members[k].cache[name][1] for k in idx]))

    def _train_group(self, idx: list[int], signature: tuple) -> dict[int, dict[str, Any]]:
        """Train one epoch of the members ``idx`` that share ``signature`` (`Member.signature`: step kind, batch
        size, frozen encoders); returns each member's sums."""
        kind, batch_size = signature[:2]
        members = [self.members[k] for k in idx]
        phases = [m.phase() for m in members]
        frozen = {"encoder_A": False, "encoder_B": True} if kind == "coverage" else members[0].homeostasis.frozen
        modules = trainable_modules(kind, frozen)
        for m in members:   # an encoder that trains this epoch forgets its cached outputs
            for name in ("encoder_A", "encoder_B"):
                if name in modules or kind == "coverage":
                    m.cache.pop(name, None)
        rates = [module_rates(m.cfg, m.epoch, kind) for m in members]
        # graph form: each member's one draw from its generator this epoch, the key of its counter-based numbers
        keys = (torch.stack([torch.randint(0, 2 ** 62, (), device=self.device, generator=m.gen) for m in members])
                if self.graph_steps else None)
        if kind == "coverage":
            inp, n_steps = self.inputs.coverage(members, batch_size, tuple(idx), keys)
        else:
            cached = {name: self._frozen_outputs(idx, name) for name in ("encoder_A", "encoder_B") if frozen[name]}
            draws = (self.inputs.draw_structure(members, phases) if keys is None
                     else self.inputs.draw_structure_by_counter(tuple(idx), members, phases, keys))
            inp, n_steps = self.inputs.structure(members, phases, cached, *draws)
        plan = _GroupPlan(kind=kind, modules=modules, sites=self._sites(kind, frozen, inp), steps=max(n_steps),
                          n_steps=n_steps, weights=self.inputs.weights(members, phases), inputs=inp,
                          max_norm=torch.tensor([m.cfg.optim.max_grad_norm for m in members], device=self.device),
                          keys=keys)
        if self.graph_steps:
            sums, grad_sum = self._train_group_in_graph_form(idx, plan, rates)
        else:
            sums, grad_sum = self._train_group_eagerly(idx, plan, rates)
        sums_l, grad_l = sums.tolist(), grad_sum.tolist()
        return {k: {"terms": [x / n_steps[i] for x in sums_l[i]], "grad_norm": grad_l[i] / n_steps[i],
                    "lr": rates[i][0], "phase": phases[i], "modules": modules}
                for i, k in enumerate(idx)}

    def _train_group_eagerly(self, idx: list[int], plan: "_GroupPlan", rates: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The CPU's way: each member's generator draws its step's numbers, each member's Adam is torch's fused
        kernel per module; the group's rows of the parameters and Adam state are updated in place."""
        whole = idx == list(range(len(self.members)))
        flat = self.flat if whole else self.flat[idx]
        adam = self.adam if whole else self.adam.rows(idx)
        gens = [self.members[k].gen for k in idx]
        n_steps = plan.n_steps

        def draw(rnd: StepRandom, s: int) -> None:
            rnd.draw([g if s < n else None for g, n in zip(gens, n_steps)])

        def update(grad: torch.Tensor, s: int) -> None:
            live = [i for i, n in enumerate(n_steps) if s < n]
            adam.step(flat, grad, live, [rates[i][1] for i in live], [rates[i][2] for i in live], plan.modules)

        sums, grad_sum = self._steps(plan, flat, plan.inputs, plan.weights, plan.max_norm, self._live(plan),
                                     draw, update)
        if not whole:
            self.flat[idx] = flat
            self.adam.put_rows(idx, adam)
        return sums, grad_sum

    def _train_group_in_graph_form(self, idx: list[int], plan: "_GroupPlan",
                                   rates: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps in graph form (the GPU's way): every value that changes between epochs is an input tensor
        (parameters and Adam state of the group's rows, batches, weights, learning rates, one random key per member
        drawn from its generator), and the epoch's steps are a function of those tensors alone, with no host
        synchronisation: counter-based random numbers (`StepRandom.draw_counter`), the masked Adam of all members
        (`CohortAdam.masked_step`). On CUDA the function is captured once per group shape and replayed as one CUDA
        graph (`tvae.cuda_graphs.EpochGraphs`); elsewhere it runs as a plain call (the tests' way)."""
        dev = self.device
        sel = torch.as_tensor(idx, device=dev)
        inputs = {"flat": self.flat[sel], "exp_avg": self.adam.exp_avg[sel], "exp_avg_sq": self.adam.exp_avg_sq[sel],
                  "adam_steps": self.adam.steps[sel], "live": self._live(plan), "max_norm": plan.max_norm,
                  "keys": plan.keys,
                  "lr": torch.tensor([[r[1][name] for name in self.adam.modules] for r in rates], device=dev),
                  "weight_decay": torch.tensor([r[2] for r in rates], device=dev)}
        inputs.update({f"w.{name}": value for name, value in plan.weights.items()})
        inputs.update({f"step.{name}": value for name, value in plan.inputs["steps"].items()})
        if "pull" in plan.inputs:
            inputs["pull"] = plan.inputs["pull"]

        def epoch_steps(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            adam = CohortAdam.over(self.adam.segments, t["exp_avg"], t["exp_avg_sq"], t["adam_steps"])
            given = {"steps": {name[5:]: v for name, v in t.items() if name.startswith("step.")}}
            if "pull" in t:
                given["pull"] = t["pull"]

            def draw(rnd: StepRandom, s: int) -> None:
                rnd.draw_counter(t["keys"], s)

            def update(grad: torch.Tensor, s: int) -> None:
                adam.masked_step(t["flat"], grad, t["live"][:, s], t["lr"], t["weight_decay"], plan.modules)

            weights = {name[2:]: v for name, v in t.items() if name.startswith("w.")}
            sums, grad_sum = self._steps(plan, t["flat"], given, weights, t["max_norm"], t["live"], draw, update)
            return t["flat"], adam.exp_avg, adam.exp_avg_sq, adam.steps, sums, grad_sum

        if self.graphs is not None:
            if len(self.graphs) >= MAX_GRAPHS:      # each graph keeps its own memory: forget the old shapes
                self.graphs.clear()
            key = (plan.kind, tuple(plan.modules), tuple(idx), plan.steps,
                   tuple((name, tuple(v.shape)) for name, v in inputs.items()))
            out = self.graphs.run(key, epoch_steps, inputs)
        else:
            out = epoch_steps(inputs)
        flat, exp_avg, exp_avg_sq, steps, sums, grad_sum = out
        self.flat[sel], self.adam.exp_avg[sel], self.adam.exp_avg_sq[sel], self.adam.steps[sel] = \
            flat, exp_avg, exp_avg_sq, steps
        return sums, grad_sum       # a replay's own outputs: read (`_train_group`) before the graph replays again

    def _live(self, plan: "_GroupPlan") -> torch.Tensor:
        """(K, S): 1 where member i takes step s (a member with a smaller training split sits out the rest)."""
        n = torch.tensor(plan.n_steps, device=self.device).unsqueeze(1)
        return (torch.arange(plan.steps, device=self.device).unsqueeze(0) < n).float()

    def _steps(self, plan: "_GroupPlan", flat: torch.Tensor, inp: dict[str, Any], w: dict[str, torch.Tensor],
               max_norm: torch.Tensor, live: torch.Tensor, draw, update) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's steps of one epoch over its parameter rows ``flat`` (K, n): per step draw the random
        numbers, forward all members, one backward, clip each member's gradient to its norm, update; returns each
        member's summed loss terms (K, len(TERMS)) and gradient norms (K,) over the steps it took."""
        K = flat.shape[0]
        grad = torch.zeros_like(flat)
        params = {}
        for name, view in self.layout.views(flat).items():
            slot = self.layout.slots[name]
            p = view.detach()
            if slot.module in plan.modules:
                p.requires_grad_(True)
                p.grad = grad[:, slot.offset:slot.offset + slot.numel].view_as(view)   # autograd adds into it
            params[name] = p
        sites, rows = plan.sites
        rnd = StepRandom(sites, rows, K, self.device)
        sums = torch.zeros(K, len(TERMS), device=self.device)
        grad_sum = torch.zeros(K, device=self.device)
        for s in range(plan.steps):
            draw(rnd, s)
            step = {name: value[:, s] for name, value in inp["steps"].items()}
            if plan.kind == "coverage":
                loss, terms = self._coverage_loss(params, step, inp, w, rnd)
            else:
                loss, terms = self._structure_loss(params, step, w, rnd)
            rnd.done()
            grad.zero_()
            with warnings.catch_warnings():   # the gradient views are strided across members, by design
                warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                loss.sum().backward()
            norm = torch.linalg.vector_norm(grad, dim=1)
            grad.mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0).unsqueeze(1))
            update(grad, s)
            sums += terms.detach() * live[:, s:s + 1]
            grad_sum += norm * live[:, s]
        return sums, grad_sum

    def _sites(self, kind: str, frozen: dict[str, bool], inp: dict[str, Any]) -> tuple[list[Site], int]:
        """The random draws of one step, in the order the step's forward pass takes them."""
        model, d = self.model, self.shared.model.latent_dim
        enc = [Site("mask", w, model.dropout["encoder"]) for w in model.mask_widths("encoder")]
        proj = [Site("mask", w, model.dropout["projection"]) for w in model.mask_widths("projection")]
        noise = [Site("normal", d)]
        if kind == "coverage":
            dec = [Site("mask", w, model.dropout["decoder"]) for w in model.mask_widths("decoder")]
            return enc + noise + proj + dec, inp["steps"]["idx"].shape[2]
        sites: list[Site] = []
        for name in ("encoder_A", "encoder_B"):
            sites += ([] if frozen[name] else enc) + noise + proj
        return sites, inp["steps"]["x"].shape[2]

    # ------------------------------------------------------------------ losses of one step (all members)
    def _masks(self, part: str, rnd: StepRandom):
        return rnd.take if self.model.dropout[part] > 0.0 else None

    def _coverage_loss(self, params, step, inp, w, rnd: StepRandom) -> tuple[torch.Tensor, torch.Tensor]:
        model, c = self.model, self.c
        idx, row_w = step["idx"], step["row_w"]
        x, cls, v = self.trits[idx], self.classes[idx], self.v[idx]
        mu, logvar = model.encoder("A", params, x, self._masks("encoder", rnd))
        z_A = model.projection("A", params, mu + rnd.take(mu.shape[-1]) * torch.exp(0.5 * logvar), self._masks("projection", rnd))
        recon = w["recon"] * losses.reconstruction(model.decoder(params, z_A, self._masks("decoder", rnd)), cls, row_w)
        kl = w["beta"] * losses.kl_divergence(mu, logvar, w["free_bits"], row_w)
        rad = self.shared.loss.radial
        delta = (rad.outer_radius - rad.inner_radius) / 9
        radial = inp["pull"] * losses.coverage_radial(radius(z_A, c), v, self.targets, self.radial_weights,
                                                      step["pi"], step["pj"], delta, w["margin_weight"], row_w)
        zero = torch.zeros_like(recon)
        terms = torch.stack([recon, kl, zero, zero, zero, radial, zero, zero, zero], 1)
        return recon + kl + radial, terms

    def _structure_loss(self, params, step, w, rnd: StepRandom) -> tuple[torch.Tensor, torch.Tensor]:
        model, c = self.model, self.c
        zs = []
        recon = None
        for which in ("A", "B"):
            if f"mu_{which}" in step:
                mu, lv = step[f"mu_{which}"], step[f"lv_{which}"]
            else:
                mu, lv = model.encoder(which, params, step["x"], self._masks("encoder", rnd))
            z = model.projection(which, params, mu + rnd.take(mu.shape[-1]) * torch.exp(0.5 * lv),
                                 self._masks("projection", rnd))
            if which == "A":
                recon = w["coverage"] * losses.reconstruction(model.decoder(params, z, None), step["cls"])
            zs.append(z)
        z = torch.stack(zs, 1) if len(self.path_weights) == 2 else zs[1].unsqueeze(1)      # (K, P, B, d)
        r = radius(z, c)
        by_radius = losses.radius_terms(r, step, w, self.targets, self.path_weights, self.use_zero)
        if "geo_i" in step:        # a member of the group is in the geometry phase (the others' weights are 0)
            geo = w["geodesic"] * (losses.geodesic(z, step["geo_t"], step["geo_i"], step["geo_j"], c) * self.path_weights).sum(-1)
        else:
            geo = torch.zeros_like(recon)
        zero = torch.zeros_like(recon)
        terms = torch.cat([recon.unsqueeze(1), zero.unsqueeze(1), by_radius, geo.unsqueeze(1)], 1)
        return terms.sum(1), terms

    # ------------------------------------------------------------------ checks, evaluation, rows
    def _finish(self, active: list[int], before: torch.Tensor, stats: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        ok = []
        for k in active:
            st = stats[k]
            bad = [(name, value) for name, value in zip(TERMS, st["terms"]) if not math.isfinite(value)]
            if bad:
                m = self.members[k]
                m.status = Status.DIVERGED
                m.error = f"epoch {m.epoch}: loss term {bad[0][0]!r} is {bad[0][1]}"
            else:
                ok.append(k)
        rows: dict[int, dict[str, Any]] = {}
        if not ok:
            return rows
        metrics_rows = self.evaluation(self.flat, self.members, ok)
        pos = {k: i for i, k in enumerate(active)}
        segs = self.layout.segments
        # every member's weight norms and update ratio at once, read back in one transfer
        rows_before = [pos[k] for k in ok]
        after = self.flat if ok == list(range(len(self))) else self.flat[ok]
        prev = before if rows_before == list(range(len(before))) else before[rows_before]
        all_norms = torch.stack([after.norm(dim=1), (after - prev).norm(dim=1) / prev.norm(dim=1).clamp_min(1e-12)]
                                + [after[:, a:b].norm(dim=1) for a, b in segs.values()], 1).tolist()
        for k, norms in zip(ok, all_norms):
            m, st = self.members[k], stats[k]
            row: dict[str, Any] = {"epoch": m.epoch, "phase": st["phase"]}
            row.update(metrics_rows[k])
            row["loss"] = sum(st["terms"])
            row.update({f"loss_{name}": value for name, value in zip(TERMS, st["terms"])})
            row["lr"] = st["lr"]
            row["grad_norm"] = st["grad_norm"]
            row["weight_norm"] = norms[0]
            row.update({f"weight_norm_{name}": value for name, value in zip(segs, norms[2:])})
            row["update_ratio"] = norms[1]
            if st["phase"] != "coverage":
                m.events.extend(m.homeostasis.update(m.epoch, row["train_coverage"], row["train_hierarchy_A"],
                                                     row["train_hierarchy_B"], row["train_dist_corr"]))
                frozen = m.homeostasis.frozen
                row["frozen_encoder_A"], row["frozen_encoder_B"], row["frozen_decoder"] = \
                    frozen["encoder_A"], frozen["encoder_B"], True
            else:
                row["frozen_encoder_A"], row["frozen_encoder_B"], row["frozen_decoder"] = False, True, False
            row["curvature"] = float(self.c)
            rows[k] = row
        return rows

    def summary(self, k: int) -> dict[str, Any]:
        """What ``final.json`` holds for member k: the single run's summary plus its ``status`` (and ``error``)."""
        m = self.members[k]
        out = summary_of(m.last_row, m.bests, m.best_epochs, m.epoch, m.events)
        out["status"] = m.status
        if m.error:
            out["error"] = m.error
        return out

    # ------------------------------------------------------------------ checkpoint slices
    def member_state(self, k: int) -> dict[str, Any]:
        """Everything needed to continue member k exactly, alone or in any cohort."""
        m = self.members[k]
        return {
            "version": COHORT_VERSION, "config": config_mod.to_dict(m.cfg), "epoch": m.epoch, "status": m.status,
            "error": m.error, "params": self.flat[k].detach().cpu().clone(),
            "adam": {name: t.cpu() for name, t in self.adam.member_state(k).items()},
            "generator": m.gen.get_state(), "r_orig": None if m.r_orig is None else m.r_orig.cpu(),
            "homeostasis": m.homeostasis.state_dict(), "bests": dict(m.bests), "best_epochs": dict(m.best_epochs),
            "last_row": m.last_row, "events": list(m.events),
        }

    def load_member_state(self, k: int, state: dict[str, Any]) -> None:
        if state.get("version") != COHORT_VERSION:
            raise ValueError(f"member checkpoint has version {state.get('version')}, expected {COHORT_VERSION}")
        m = self.members[k]
        self.flat[k] = state["params"].to(self.device)
        self.adam.load_member_state(k, {name: t.to(self.device) for name, t in state["adam"].items()})
        m.gen.set_state(state["generator"])
        m.r_orig = None if state["r_orig"] is None else state["r_orig"].to(self.device)
        m.homeostasis.load_state_dict(state["homeostasis"])
        m.epoch, m.status, m.error = int(state["epoch"]), state["status"], state["error"]
        m.bests, m.best_epochs = dict(state["bests"]), dict(state["best_epochs"])
        m.last_row, m.events = state["last_row"], list(state["events"])
        m.cache.clear()
        if m.status == Status.FINISHED and m.epoch < m.cfg.epochs:     # a grown budget continues it
            m.status = Status.RUNNING

    @classmethod
    def from_member_states(cls, states: Sequence[dict[str, Any]], device: str = "cpu",
                           epochs: Sequence[int | None] | None = None, **options: Any) -> "Cohort":
        """A cohort of saved members (from any cohorts); ``epochs[i]`` may extend member i's total; ``options``
        are `Cohort`'s keyword arguments."""
        configs = []
        for i, state in enumerate(states):
            cfg = config_mod.from_dict(Config, state["config"])
            if epochs is not None and epochs[i] is not None:
                config_mod.set_key(cfg, "epochs", epochs[i])
            configs.append(cfg)
        cohort = cls(configs, device, **options)
        for k, state in enumerate(states):
            cohort.load_member_state(k, state)
        return cohort

    def save(self, path: str | Path) -> None:
        checkpoint.save(Path(path), {"version": COHORT_VERSION,
                                     "members": [self.member_state(k) for k in range(len(self))]})

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", epochs: int | None = None, **options: Any) -> "Cohort":
        state = checkpoint.load(Path(path))
        if state.get("version") != COHORT_VERSION:
            raise ValueError(f"cohort checkpoint {path} has version {state.get('version')}, expected {COHORT_VERSION}")
        members = state["members"]
        return cls.from_member_states(members, device, None if epochs is None else [epochs] * len(members),
                                      **options)

