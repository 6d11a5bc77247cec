"""A group's inputs to one epoch of steps: what each member draws (its data order or batches, and loss pairs) and
what follows from the draws (the batches' operations, valuations, targets and the radius terms' constants), as
(K, S, ...) tensors with a leading member axis, and the members' loss weights as (K,) tensors.

Draws come from each member's own generator (the eager form: `GroupInputs.draw_structure`, `GroupInputs.coverage`)
or, in graph form, from counter-based numbers of each member's key for the whole group at once
(`GroupInputs.draw_structure_by_counter`, `GroupInputs.coverage` with keys), at positions that depend on the
member's own sizes only; either way a member draws the same numbers alone and in any group. What follows from the
draws is computed for the group at once (`GroupInputs.structure`, `GroupInputs.coverage`), so its number of
operations does not grow with the members. A member with fewer steps than the group sits the other steps out;
their inputs repeat its last step, except a structure epoch's graph-form draws, which go on drawing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tvae import radius_terms
from tvae.data import pad_rows
from tvae.cohort.randomness import counter_bits, counter_bits_at, uniform_below
from tvae.config import Config

if TYPE_CHECKING:
    from tvae.cohort.engine import Member

DATA_STREAMS = 0xFFFF0000    # graph form: the counter streams of an epoch's batches and pairs (steps use 0, 1, ...)


class GroupInputs:
    """Builds groups' inputs from the cohort's tables of every operation (``v``, ``trits``, ``classes``,
    ``zero_count``, ``zero_target``, ``pair_valuation``) and its radius levels; ``shared`` is the members' shared
    configuration (numbers of loss pairs, radius targets)."""

    def __init__(self, shared: Config, device: torch.device, *, trits: torch.Tensor, classes: torch.Tensor,
                 v: torch.Tensor, zero_count: torch.Tensor, zero_target: torch.Tensor, pair_valuation: torch.Tensor,
                 levels: radius_terms.Levels):
        self.shared, self.loss, self.device = shared, shared.loss, device
        self.trits, self.classes, self.v = trits, classes, v
        self.zero_count, self.zero_target, self.pair_valuation = zero_count, zero_target, pair_valuation
        self.levels = levels
        # graph form, built once per group of members: their samplers' tables and training operations, padded
        self._samplers: dict[tuple[int, ...], dict[str, Any]] = {}
        self._train_ops_of: dict[tuple[int, ...], torch.Tensor] = {}

    def _pairs(self, gen: torch.Generator, n_steps: int, batch: int, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ordered pairs (i, j), i != j (j shifted by one where equal), for every step of the epoch."""
        p = torch.randint(0, batch, (n_steps, 2, n_pairs), device=self.device, generator=gen)
        i, j = p[:, 0], p[:, 1]
        return i, torch.where(i == j, (j + 1) % batch, j)

    def coverage(self, members: list[Member], bsz: int, group: tuple[int, ...] | None = None,
                 keys: torch.Tensor | None = None) -> tuple[dict[str, Any], list[int]]:
        """Every coverage step of ``members`` (whose coverage batch size is ``bsz``, their group's): each member's
        training operations in a random order, cut into batches, and radial pairs. The order and pairs come from
        each member's generator or, in graph form (``keys``: the members' keys, ``group``: their indices in the
        cohort), from counter-based numbers of its key for the group at once."""
        n_pairs = min(self.loss.radial.n_pairs, bsz * (bsz - 1) // 2)
        K, dev = len(members), self.device
        n = torch.tensor([len(m.train_ops) for m in members], device=dev)
        n_steps = [-(-len(m.train_ops) // bsz) for m in members]
        S = max(n_steps)
        if keys is None:
            orders, draws = [], []
            for m, S_k in zip(members, n_steps):
                orders.append(m.train_ops[torch.randperm(len(m.train_ops), device=dev, generator=m.gen)])
                pi, pj = self._pairs(m.gen, S_k, bsz, n_pairs)
                draws.append({"pi": pi, "pj": pj})
            order = pad_rows(orders, dev)
            pairs = _stack_steps(draws, n_steps)
        else:
            ops = self._train_ops(group, members)
            slot = torch.arange(ops.shape[1], device=dev).unsqueeze(0)
            rank = torch.where(slot < n.unsqueeze(1), counter_bits_at(keys, DATA_STREAMS + 5, slot), 2 ** 33)
            order = ops.gather(1, torch.sort(rank, dim=1, stable=True).indices)
            pi, pj = self._counter_pairs(keys, DATA_STREAMS + 6, S, bsz, n_pairs)
            pairs = {"pi": pi, "pj": pj}
        # a member with fewer steps repeats its last one (it sits them out)
        step = torch.minimum(torch.arange(S, device=dev).unsqueeze(0),
                             torch.tensor(n_steps, device=dev).unsqueeze(1) - 1)                     # (K, S)
        pos = step.unsqueeze(2) * bsz + torch.arange(bsz, device=dev)                                   # (K, S, B)
        idx = order.gather(1, (pos % n.view(K, 1, 1)).view(K, S * bsz)).view(K, S, bsz)
        length = (n.unsqueeze(1) - step * bsz).clamp(max=bsz).unsqueeze(2)           # valid rows per step
        valid = (torch.arange(bsz, device=dev) < length).float()
        e1 = torch.tensor([m.cfg.phases.structure_start for m in members])
        pull = [m.cfg.coverage.radial_weight * min(1.0, m.epoch / max(1, int(e) // 2)) for m, e in zip(members, e1)]
        steps = {"idx": idx, "pi": pairs["pi"] % length, "pj": pairs["pj"] % length, "row_w": valid / length}
        return {"steps": steps, "pull": torch.tensor(pull, device=dev)}, n_steps

    def draw_structure(self, members: list[Member], phases: list[str]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The eager form's random inputs of a structure (or geometry) epoch, member by member from its generator:
        its batches (S, B) from its sampler, radial and rank pairs, and geodesic pairs for a geometry-phase member
        (a structure-phase member in a group with geometry-phase members takes fixed pairs and draws none, so its
        random numbers stay its own). Stacked (K, S, ...); a member with fewer steps repeats its last one."""
        L = self.loss
        geometry = "geometry" in phases
        draws, n_steps = [], []
        for i, m in enumerate(members):
            batches = m.sampler.epoch_batches(m.gen)                               # (S, B)
            S, B = batches.shape
            d = {"batches": batches}
            d["rad_i"], d["rad_j"] = self._pairs(m.gen, S, B, min(L.radial.n_pairs, B * (B - 1) // 2))
            d["rank_i"], d["rank_j"] = self._pairs(m.gen, S, B, min(L.rank.n_pairs, B * (B - 1)))
            n_geo = min(L.geodesic.n_pairs, B * (B - 1) // 2)
            if phases[i] == "geometry":
                d["geo_i"], d["geo_j"] = self._pairs(m.gen, S, B, n_geo)
            elif geometry:
                pos = torch.arange(n_geo, device=self.device) % B
                d["geo_i"], d["geo_j"] = pos.expand(S, n_geo), ((pos + 1) % B).expand(S, n_geo)
            draws.append(d)
            n_steps.append(S)
        return _stack_steps(draws, n_steps), n_steps

    def draw_structure_by_counter(self, group: tuple[int, ...], members: list[Member], phases: list[str],
                                  keys: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[int]]:
        """`draw_structure` in graph form: the same draws (stratified batches, pairs) for all members at once, from
        counter-based numbers of each member's key (`counter_bits_at`), at positions that depend on the member's own
        sizes only, so that a member draws the same alone and in any group. Steps past a member's own are drawn
        too (it sits them out)."""
        L = self.loss
        t = self._sampler_tables(group, members)
        K, T, B, S = len(members), t["slot_size"].shape[1], t["batch_size"], max(t["n_steps"])
        slot = torch.arange(T, device=self.device).view(1, 1, T)
        position = torch.arange(S, device=self.device).view(1, S, 1) * t["slots"].view(K, 1, 1) + slot
        pick = uniform_below(counter_bits_at(keys, DATA_STREAMS, position), t["slot_size"].unsqueeze(1))
        batches = t["sorted_train"].gather(1, (t["slot_offset"].unsqueeze(1) + pick).view(K, S * T)).view(K, S, T)
        if T > B:    # a member with more slots than B keeps B of them at random (the others all theirs, in order)
            order = torch.where(t["trim"].view(K, 1, 1), counter_bits_at(keys, DATA_STREAMS + 1, position),
                                slot.expand(K, S, T))
            order = torch.where(slot < t["slots"].view(K, 1, 1), order, 2 ** 33)
            batches = batches.gather(2, torch.sort(order, dim=2, stable=True).indices[:, :, :B])
        drawn = {"batches": batches}
        pairs = lambda stream, n: self._counter_pairs(keys, stream, S, B, n)  # noqa: E731
        drawn["rad_i"], drawn["rad_j"] = pairs(DATA_STREAMS + 2, min(L.radial.n_pairs, B * (B - 1) // 2))
        drawn["rank_i"], drawn["rank_j"] = pairs(DATA_STREAMS + 3, min(L.rank.n_pairs, B * (B - 1)))
        if "geometry" in phases:
            n_geo = min(L.geodesic.n_pairs, B * (B - 1) // 2)
            gi, gj = pairs(DATA_STREAMS + 4, n_geo)
            pos = torch.arange(n_geo, device=self.device) % B
            geo = torch.tensor([phase == "geometry" for phase in phases], device=self.device).view(K, 1, 1)
            drawn["geo_i"], drawn["geo_j"] = torch.where(geo, gi, pos), torch.where(geo, gj, (pos + 1) % B)
        return drawn, t["n_steps"]

    @staticmethod
    def _counter_pairs(keys: torch.Tensor, stream: int, n_steps: int, batch: int,
                       n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`_pairs` for every member at once from its key: (K, n_steps, n_pairs) each."""
        p = uniform_below(counter_bits(keys, stream, n_steps * 2 * n_pairs), batch).view(len(keys), n_steps, 2,
                                                                                            n_pairs)
        i, j = p[:, :, 0], p[:, :, 1]
        return i, torch.where(i == j, (j + 1) % batch, j)

    def _train_ops(self, group: tuple[int, ...], members: list[Member]) -> torch.Tensor:
        """(K, most) training operations of ``members``, padded with 0, built once per ``group``."""
        if group not in self._train_ops_of:
            self._train_ops_of[group] = pad_rows([m.train_ops for m in members], self.device)
        return self._train_ops_of[group]

    def _sampler_tables(self, group: tuple[int, ...], members: list[Member]) -> dict[str, Any]:
        """The samplers of ``members`` (`data.StratifiedSampler`, one batch size) padded into (K, ...) tensors,
        built once per ``group`` (the members' indices in the cohort)."""
        if group not in self._samplers:
            samplers = [m.sampler for m in members]
            if len({s.batch_size for s in samplers}) != 1:
                raise ValueError("a group's members share one batch size")

            def padded(name: str, fill: int) -> torch.Tensor:
                return pad_rows([getattr(s, name) for s in samplers], self.device, fill)

            slots = torch.tensor([len(s.slot_offset) for s in samplers], device=self.device)
            self._samplers[group] = {
                "sorted_train": padded("sorted_train", 0), "slot_offset": padded("slot_offset", 0),
                "slot_size": padded("slot_size", 1), "slots": slots, "trim": slots > samplers[0].batch_size,
                "batch_size": samplers[0].batch_size, "n_steps": [s.n_batches for s in samplers]}
        return self._samplers[group]

    def structure(self, members: list[Member], phases: list[str],
                          cached: dict[str, tuple[torch.Tensor, torch.Tensor]], drawn: dict[str, torch.Tensor],
                          n_steps: list[int]) -> tuple[dict[str, Any], list[int]]:
        """Every structure (or geometry) step of ``members`` (their ``phases``) from their draws (`draw_structure`
        or `draw_structure_by_counter`: batches (K, S, B) and loss pairs; B, and so the numbers of loss pairs
        min(n_pairs, B(B-1)/2), is the group's batch size): what follows from the draws is computed for the
        group at once, so the number of operations does not grow with the members. A structure-phase member in a
        group with geometry-phase members has fixed geodesic pairs whose term its zero weight cancels."""
        geometry = "geometry" in phases
        drawn = dict(drawn)
        batches = drawn.pop("batches")
        K, S, B = batches.shape
        flat = batches.reshape(K, S * B)

        def take(t: torch.Tensor) -> torch.Tensor:     # a table of every operation -> (K, S, B, ...)
            return t.index_select(0, flat.reshape(-1)).view(K, S, B, *t.shape[1:])

        def take_own(t: torch.Tensor) -> torch.Tensor:    # (K, N, ...) per member -> (K, S, B, ...)
            index = flat.view(K, S * B, *([1] * (t.dim() - 2))).expand(K, S * B, *t.shape[2:])
            return t.gather(1, index).view(K, S, B, *t.shape[2:])

        v_b = take(self.v)
        onehot = F.one_hot(v_b, 10).float()
        counts = onehot.sum(2)
        n0 = take(self.zero_count)
        d = {"x": take(self.trits), "cls": take(self.classes), "v": v_b, "onehot": onehot,
             "present": (counts > 0).float(), "var_levels": (counts > 1).float(),
             "r_orig": take_own(torch.stack([m.r_orig for m in members])),
             "n0_std": (n0 - n0.mean(2, keepdim=True)) / (n0.std(2, keepdim=True) + 1e-8),
             "zero_t": take(self.zero_target)}
        d.update(drawn)
        steps = lambda t: t.reshape(K * S, *t.shape[2:])                     # noqa: E731  (K, S, ...) -> (KS, ...)
        consts = radius_terms.step_constants(*(steps(d[k]) for k in ("v", "onehot")), steps(counts),
                                             *(steps(d[k]) for k in ("present", "var_levels", "r_orig", "rad_i",
                                                                      "rad_j", "rank_i", "rank_j")),
                                             self.levels, _delta_temperature(self.shared))
        d.update({k: consts[k].view(K, S, *consts[k].shape[1:])
                  for k in ("t_v", "w_v", "rad_gap", "rad_w", "rank_w", "rank_s", "inv_counts", "inv_counts1",
                            "present_w", "var_w", "inv_var_orig")})
        d["sep"] = torch.stack([m.sep for m in members]).unsqueeze(1).expand(K, S, *members[0].sep.shape)
        d["sep_valid"] = torch.stack([m.sep_valid for m in members]).unsqueeze(1).expand(
            K, S, *members[0].sep_valid.shape)
        if geometry:
            pv = self.pair_valuation[(batches.gather(2, d["geo_i"]) - batches.gather(2, d["geo_j"])).abs()]
            col = lambda values: torch.tensor(values, device=self.device).view(K, 1, 1)  # noqa: E731
            geo = [m.cfg.loss.geodesic for m in members]
            t = col([g.max_target_distance for g in geo]) * torch.exp(-pv.float() / col([g.valuation_scale
                                                                                        for g in geo]))
            d["geo_t"] = torch.where(col([phase == "geometry" for phase in phases]), t, 0.0)
        for name, (mu, lv) in cached.items():
            d[f"mu_{name[-1]}"], d[f"lv_{name[-1]}"] = take_own(mu), take_own(lv)
        return {"steps": d}, n_steps

    def weights(self, members: list[Member], phases: list[str]) -> dict[str, torch.Tensor]:
        """Each member's loss scalars as (K,) tensors; in the geometry phase the radial weight is halved and the
        geodesic weight applies (zero before)."""
        def col(fn) -> torch.Tensor:
            return torch.tensor([float(fn(m.cfg)) for m in members], device=self.device)

        geometry = torch.tensor([phase == "geometry" for phase in phases], device=self.device)
        return {
            "recon": col(lambda c: c.coverage.recon_weight), "beta": col(lambda c: c.coverage.beta),
            "free_bits": col(lambda c: c.coverage.free_bits),
            "coverage": col(lambda c: c.loss.rich.coverage_weight),
            "hierarchy": col(lambda c: c.loss.rich.hierarchy_weight),
            "richness": col(lambda c: c.loss.rich.richness_weight),
            "separation": col(lambda c: c.loss.rich.separation_weight),
            "min_richness_ratio": col(lambda c: c.loss.rich.min_richness_ratio),
            "separation_margin": col(lambda c: c.loss.rich.separation_margin),
            "radial": col(lambda c: c.loss.radial.weight) * torch.where(geometry, 0.5, 1.0),
            "margin_weight": col(lambda c: c.loss.radial.margin_weight),
            "rank": col(lambda c: c.loss.rank.weight), "geodesic": col(lambda c: c.loss.geodesic.weight) * geometry,
            "zero_valuation": col(lambda c: c.loss.zero.valuation_weight),
            "zero_sparsity": col(lambda c: c.loss.zero.sparsity_weight),
            "zero_target_correlation": col(lambda c: c.loss.zero.target_correlation),
        }


def _pad_steps(t: torch.Tensor, S: int) -> torch.Tensor:
    """(n, ...) -> (S, ...) by repeating the last step (the inputs of steps a member sits out)."""
    if len(t) == S:
        return t
    return torch.cat([t, t[-1:].expand(S - len(t), *t.shape[1:])])


def _stack_steps(per_member: list[dict[str, torch.Tensor]], n_steps: list[int]) -> dict[str, torch.Tensor]:
    """Members' (S_k, ...) inputs stacked into (K, max S_k, ...)."""
    S = max(n_steps)
    return {name: torch.stack([_pad_steps(d[name], S) for d in per_member])
            for name in per_member[0]}


def _delta_temperature(cfg: Config) -> radius_terms.Weights:
    """The two scalars `radius_terms.step_constants` reads (delta, temperature); the rest are unused there."""
    rad = cfg.loss.radial
    return radius_terms.Weights(hierarchy=0.0, richness=0.0, separation=0.0, radial=0.0, rank=0.0,
                                min_richness_ratio=0.0, separation_margin=0.0, margin_weight=0.0,
                                delta=(rad.outer_radius - rad.inner_radius) / 9, temperature=cfg.loss.rank.temperature,
                                zero_valuation=0.0, zero_sparsity=0.0, zero_target_correlation=0.0)
