"""The cohort engine (tvae.cohort): members train as they would alone, diverge alone, resume exactly."""
import math

import numpy as np

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tvae import config as config_mod
from tvae.cohort import Cohort, Status, check_compatible, group
from tvae.cohort.randomness import Site, StepRandom, keep_multipliers

# the tiny preset through all three phases: coverage [0, 4), structure [4, 8), geometry [8, 12)
PHASES = {"phases.structure_start": 4, "phases.geometry_start": 8}


def cfg(seed=0, epochs=12, **overrides):
    return config_mod.build("tiny", overrides=PHASES | overrides, epochs=epochs, seed=seed)


def numbers(row):
    return {k: v for k, v in row.items() if k not in ("epoch_seconds", "wall_time")}


# Rank correlations (dist_corr, padic_dist_corr, Q built on dist_corr, and hierarchy_A/B, the Spearman
# correlation of radius and valuation) are step functions of the embedding: a rounding-level difference (a
# batched kernel splits its vector lanes differently) can reorder a nearly tied pair, so they are compared to
# 1e-4 absolute (a hierarchy near 0 differs by ~6e-7 at rounding level); every other number to 1e-4 relative.
RANKED = ("dist_corr", "_Q", "hierarchy_A", "hierarchy_B")


def assert_rows_close(a, b, rel=1e-4):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and not (math.isnan(x) and math.isnan(y)):
            tol = dict(abs=1e-4, rel=0) if key.endswith(RANKED) else dict(rel=rel, abs=1e-9)
            assert x == pytest.approx(y, **tol), f"{key}: {x} vs {y}"
        elif not isinstance(x, float):
            assert x == y, f"{key}: {x} vs {y}"


# half the tiny preset's batch sizes (2048 both): a member with these trains in groups of its own
HALF_BATCHES = {"data.batch_size": 1024, "coverage.batch_size": 1024}

# members that differ in everything a study searches that changes the steps: seed, learning rates, training
# fraction (so a different number of steps per epoch), loss weights, weight decay, phase epochs, batch sizes
MEMBERS = [
    dict(seed=0),
    dict(seed=1, **{"optim.lr": 2e-3, "data.train_fraction": 0.6, "loss.rich.hierarchy_weight": 2.0,
                    "phases.structure_start": 3, "phases.geometry_start": 7, "optim.weight_decay": 1e-2,
                    "schedule.kind": "cosine"}),
    dict(seed=2, **{"loss.rank.weight": 1.0, "optim.max_grad_norm": 0.5}),
    dict(seed=3, **HALF_BATCHES, **{"data.train_fraction": 0.5}),     # phases as members 0 and 2, other batches
]


@pytest.fixture(scope="module")
def cohort_rows():
    """Twelve epochs of the members trained as one cohort: {member: [rows]}."""
    cohort = Cohort([cfg(**m) for m in MEMBERS])
    out = {k: [] for k in range(len(MEMBERS))}
    while cohort.active:
        for k, row in cohort.train_epoch().items():
            out[k].append(numbers(row))
    return out


def same(a, b):
    """Rows equal bit for bit (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("k", [
    1,      # its own seed, learning rate, schedule, weight decay, training fraction (fewer steps), phase epochs
            # (epoch 7: geometry in one group with members 0 and 2 in structure)
    3,      # its own batch sizes: every epoch in a group apart from members 0 and 2 (same phase, other batches)
])
def test_a_member_gives_the_same_rows_alone_and_in_a_cohort(cohort_rows, k):
    alone = Cohort([cfg(**MEMBERS[k])])
    rows = [numbers(alone.train_epoch()[0]) for _ in range(12)]
    assert [r["phase"] for r in rows] == [r["phase"] for r in cohort_rows[k]]
    assert {"coverage", "structure", "geometry"} <= {r["phase"] for r in rows}
    for a, b in zip(rows, cohort_rows[k]):
        assert_rows_close(a, b)


@pytest.fixture(scope="module")
def graph_form_rows():
    """The same cohort with its steps in graph form (the CUDA-graph path, run as plain calls on the CPU)."""
    cohort = Cohort([cfg(**m) for m in MEMBERS], graph_steps=True)
    out = {k: [] for k in range(len(MEMBERS))}
    while cohort.active:
        for k, row in cohort.train_epoch().items():
            out[k].append(numbers(row))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])
def test_a_member_gives_the_same_rows_alone_and_in_a_cohort_in_graph_form(graph_form_rows, cohort_rows, k):
    alone = Cohort([cfg(**MEMBERS[k])], graph_steps=True)
    rows = [numbers(alone.train_epoch()[0]) for _ in range(12)]
    assert {"coverage", "structure", "geometry"} <= {r["phase"] for r in rows}
    for a, b in zip(rows, graph_form_rows[k]):
        assert_rows_close(a, b)
    # its own random numbers (a counter of its key), not the eager steps' draws: a different run of the recipe
    assert rows[-1]["loss"] != cohort_rows[k][-1]["loss"]


class NoHostSync(TorchDispatchMode):
    """Refuses what a CUDA-graph capture cannot record: reading a tensor's value on the host (``item``, ``float``,
    ``bool``: ``_local_scalar_dense``), shapes that depend on values, tensors built from host data, and draws from
    a ``torch.Generator`` (graph form takes counter-based numbers)."""
    REFUSED = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "lift_fresh", "random_", "normal_",
               "randint", "randperm", "bernoulli", "multinomial", "uniform_")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.REFUSED or func._schema.name.split("::")[-1] in self.REFUSED:
            raise AssertionError(f"graph form calls {func} (needs the host)")
        return func(*args, **(kwargs or {}))


class NoSyncRunner:
    """Stands where `tvae.cuda_graphs.EpochGraphs` stands on CUDA (``run(key, fn, inputs)``): runs each epoch's
    steps in graph form under `NoHostSync`."""
    def __init__(self):
        self.keys = []

    def __len__(self):
        return 0

    def run(self, key, fn, inputs):
        self.keys.append(key)
        with NoHostSync():
            return fn(inputs)


def test_steps_in_graph_form_never_wait_for_the_host():
    """What a CUDA graph captures must not read tensors on the host; on the CPU, a dispatch mode refuses every
    such operation while the steps run (the mode itself is checked to catch ``item``)."""
    with pytest.raises(AssertionError, match="_local_scalar_dense"), NoHostSync():
        torch.ones(2)[0].item()
    # coverage, structure, then (homeostasis freezes encoder A after the first structure epoch: coverage is low
    # and its warm-up 0) structure and geometry with its cached outputs; the second member has fewer steps per
    # epoch (its own training fraction)
    frozen_now = {"homeostasis.warmup_epochs": 0}
    configs = [cfg(seed=0, epochs=4, **{"phases.structure_start": 1, "phases.geometry_start": 3}, **frozen_now),
               cfg(seed=1, epochs=4, **{"phases.structure_start": 1, "phases.geometry_start": 2,
                                        "data.train_fraction": 0.6}, **frozen_now)]
    cohort = Cohort(configs, graph_steps=True)
    cohort.graphs = runner = NoSyncRunner()
    rows = [cohort.train_epoch() for _ in range(4)]
    assert [rows[e][1]["phase"] for e in range(4)] == ["coverage", "structure", "geometry", "geometry"]
    assert any(key[0] == "structure" and "encoder_A" not in key[1] for key in runner.keys)
    assert len(runner.keys) >= 4 and all(math.isfinite(r[k]["loss"]) for r in rows for k in r)


def test_counter_random_numbers_are_uniform_and_the_members_own():
    sites = [Site("mask", 256, 0.1), Site("normal", 16)]
    keys = torch.tensor([12345, 2 ** 61 + 7, 99])
    both, alone = StepRandom(sites, 512, 3, torch.device("cpu")), StepRandom(sites, 512, 1, torch.device("cpu"))
    both.draw_counter(keys, 5)
    alone.draw_counter(keys[1:2], 5)
    mask, noise = both.take(256), both.take(16)
    assert torch.equal(alone.take(256)[0], mask[1]) and torch.equal(alone.take(16)[0], noise[1])
    assert abs((mask > 0).float().mean().item() - 0.9) < 0.005
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1.0) < 0.02
    assert not torch.equal(mask[0], mask[2]) and not torch.equal(noise[0], noise[1])
    alone.draw_counter(keys[1:2], 6)          # another step: other numbers
    assert not torch.equal(alone.take(256)[0], mask[1])


def test_members_really_differ(cohort_rows):
    """The comparison above could not pass by all members computing the same thing."""
    a, b = cohort_rows[0][5], cohort_rows[1][5]
    assert a["loss"] != b["loss"] and a["lr"] != b["lr"]
    assert "heldout_Q" in b and "heldout_Q" not in a
    assert cohort_rows[1][3]["phase"] == "structure" and cohort_rows[0][3]["phase"] == "coverage"
    # epoch 7: one group, member 1 in geometry (its geodesic term), members 0 and 2 in structure (none)
    assert cohort_rows[1][7]["phase"] == "geometry" and cohort_rows[1][7]["loss_geodesic"] > 0
    assert cohort_rows[0][7]["phase"] == "structure" and cohort_rows[0][7]["loss_geodesic"] == 0


@pytest.mark.parametrize("graph_steps", [False, True])
def test_a_diverging_member_stops_and_the_others_go_on(graph_steps):
    """The others train bit for bit as beside a member that does not diverge (no operation mixes members); their
    rows differ from those only by the evaluation's rounding (it evaluates two members instead of three)."""
    configs = [cfg(seed=0, epochs=2), cfg(seed=1, epochs=2, **{"coverage.lr": 1e30}), cfg(seed=2, epochs=2)]
    cohort = Cohort(configs, graph_steps=graph_steps)
    first = cohort.train_epoch()
    assert cohort.members[1].status == Status.DIVERGED and 1 not in first
    assert cohort.members[1].error.startswith("epoch 0: loss term")
    rest = [cohort.train_epoch()]
    assert sorted(rest[0]) == [0, 2]
    healthy = Cohort([configs[0], cfg(seed=1, epochs=2), configs[2]], graph_steps=graph_steps)
    healthy_rows = [healthy.train_epoch() for _ in range(2)]
    for k in (0, 2):
        assert torch.equal(cohort.flat[k], healthy.flat[k])
        for a, b in zip([first[k], rest[0][k]], healthy_rows):
            assert_rows_close(numbers(a), numbers(b[k]))
    assert not cohort.active and cohort.members[0].status == Status.FINISHED


@pytest.mark.parametrize("graph_steps", [False, True])
def test_a_cohort_resumes_exactly_and_a_member_resumes_alone(tmp_path, graph_steps):
    configs = [cfg(seed=s, epochs=4, **({"data.train_fraction": 0.7, "phases.structure_start": 2} if s else {}))
               for s in (0, 1)]
    straight = Cohort(configs, graph_steps=graph_steps)
    expected = [{k: numbers(r) for k, r in straight.train_epoch().items()} for _ in range(4)]
    first = Cohort(configs, graph_steps=graph_steps)
    for _ in range(2):
        first.train_epoch()
    first.save(tmp_path / "cohort.pt")
    member1 = first.member_state(1)
    resumed = Cohort.load(tmp_path / "cohort.pt", graph_steps=graph_steps)
    got = [{k: numbers(r) for k, r in resumed.train_epoch().items()} for _ in range(2)]
    assert all(same(g[k], e[k]) for g, e in zip(got, expected[2:]) for k in (0, 1))      # bit for bit
    alone = Cohort.from_member_states([member1], graph_steps=graph_steps)
    for e in range(2, 4):
        assert_rows_close(numbers(alone.train_epoch()[0]), expected[e][1])


def test_members_that_differ_in_shape_cannot_share_a_cohort():
    with pytest.raises(ValueError, match="model.encoder"):
        check_compatible([cfg(), cfg(**{"model.encoder": "improved"})])
    assert group([cfg(), cfg(**{"model.encoder": "improved"}), cfg(seed=3)]) == [[0, 2], [1]]
    # batch sizes may differ; a model shape still may not, whatever else differs
    check_compatible([cfg(), cfg(**HALF_BATCHES)])
    assert group([cfg(), cfg(seed=1, **HALF_BATCHES), cfg(**{"model.latent_dim": 8})]) == [[0, 1], [2]]
    with pytest.raises(ValueError, match=r"model\.latent_dim is 16 and 8"):
        check_compatible([cfg(**HALF_BATCHES), cfg(**{"model.latent_dim": 8})])


def test_members_with_other_batch_sizes_train_in_groups_of_their_own():
    cohort = Cohort([cfg(seed=0), cfg(seed=1, **HALF_BATCHES), cfg(seed=2, **{"coverage.batch_size": 1024})])
    assert [m.signature() for m in cohort.members] == [("coverage", 2048), ("coverage", 1024), ("coverage", 1024)]
    for m in cohort.members:     # after coverage: the structure batch (data.batch_size), whatever the coverage one
        m.epoch = 4
    assert [m.signature()[:2] for m in cohort.members] == [("structure", 2048), ("structure", 1024),
                                                           ("structure", 2048)]
    cohort.members[2].epoch = 8      # geometry: the same steps as structure (the geodesic term weighted per member)
    assert cohort.members[2].phase() == "geometry"
    assert cohort.members[2].signature() == cohort.members[0].signature()


def test_dropout_multipliers_follow_their_definition():
    g = torch.Generator().manual_seed(0)
    bits = torch.empty(200_000, dtype=torch.int16).random_(-2 ** 15, 2 ** 15, generator=g)
    m = keep_multipliers(bits, 0.1)
    values = m.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(65536 / (65536 - 6554))
    assert (m == 0).float().mean().item() == pytest.approx(0.1, abs=0.005)


def test_train_cli_writes_a_directory_per_member_and_resumes(tmp_path):
    from tvae import train

    out = tmp_path / "co"
    argv = ["--preset", "tiny", "--epochs", "2", "--seeds", "0,1", "--vary", "loss.rank.weight=0.5,1.0",
            "--set", "phases.structure_start=1", "--set", "phases.geometry_start=2", "--out", str(out), "--quiet"]
    assert train.main(argv) == 0
    import json

    import pyarrow.parquet as pq

    members = json.loads((out / "members.json").read_text())
    assert [(m["seed"], m["overrides"]) for m in members] == [
        (0, {"loss.rank.weight": 0.5}), (0, {"loss.rank.weight": 1.0}), (1, {"loss.rank.weight": 0.5}),
        (1, {"loss.rank.weight": 1.0})]
    for m in members:
        d = out / m["directory"]
        assert {p.name for p in d.iterdir()} == {"epochs.parquet", "final.json", "config.yaml", "checkpoints"}
        assert pq.read_table(d / "epochs.parquet").column("epoch").to_pylist() == [0, 1]
    assert train.main(argv[:2] + ["--epochs", "3"] + argv[4:] + ["--resume"]) == 0       # the same command, resumed
    for m in members:
        assert pq.read_table(out / m["directory"] / "epochs.parquet").column("epoch").to_pylist() == [0, 1, 2]
        assert json.loads((out / m["directory"] / "final.json").read_text())["epochs_completed"] == 3
    assert train.main(argv + ["--resume"]) == 0                                      # nothing left to train
    assert train.main(["--out", str(out), "--resume", "--seeds", "0,2"]) == 2         # other members
    assert train.main(["--out", str(out), "--resume", "--set", "loss.rank.weight=2.0"]) == 2   # another value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cohort_trains_on_cuda_as_on_the_cpu():
    configs = [cfg(seed=s, epochs=2, **{"phases.structure_start": 1, "phases.geometry_start": 1}) for s in (0, 1)]
    gpu = Cohort(configs, "cuda")                      # default on CUDA: graph form, replayed as CUDA graphs
    cpu = Cohort(configs, "cpu", graph_steps=True)
    assert gpu.graph_steps and gpu.cuda_graphs
    for _ in range(2):
        g, c = gpu.train_epoch(), cpu.train_epoch()
        for k in (0, 1):
            assert g[k]["phase"] == c[k]["phase"] and math.isfinite(g[k]["loss"])
            # each device's generator draws its own batches and keys: the same scale, not the same numbers
            assert g[k]["loss"] == pytest.approx(c[k]["loss"], rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_train_as_the_graph_form_run_plainly():
    """Each group shape is captured on its first epoch (run eagerly) and replayed after: coverage epochs 0-1,
    structure 2-3; the replays give the rows of the same steps run as plain calls (up to the rounding of CUDA's
    atomic adds in the backward pass)."""
    configs = [cfg(seed=s, epochs=4, **{"phases.structure_start": 2, "phases.geometry_start": 4}) for s in (0, 1)]
    graphed, plain = Cohort(configs, "cuda"), Cohort(configs, "cuda", cuda_graphs=False)
    assert graphed.cuda_graphs and plain.graph_steps and not plain.cuda_graphs
    for _ in range(4):
        g, p = graphed.train_epoch(), plain.train_epoch()
        for k in (0, 1):
            assert g[k]["phase"] == p[k]["phase"]
            assert g[k]["loss"] == pytest.approx(p[k]["loss"], rel=1e-3)
            assert g[k]["train_coverage"] == pytest.approx(p[k]["train_coverage"], rel=1e-3, abs=1e-4)
    assert graphed.graphs.captures == 2 and len(graphed.graphs) == 2


def test_members_with_structured_splits_share_a_cohort():
    """Held-out valuation levels leave a member's training split without whole levels (its own separation
    pairs); a trit-pattern member beside it trains on another split."""
    configs = [cfg(seed=0, epochs=2, **{"phases.structure_start": 1, "phases.geometry_start": 1,
                                        "data.split": "valuation", "data.split_level_min": 3}),
               cfg(seed=1, epochs=2, **{"phases.structure_start": 1, "phases.geometry_start": 1, "data.split": "trit"})]
    cohort = Cohort(configs)
    rows = [cohort.train_epoch() for _ in range(2)]
    assert cohort.members[0].sep_valid.sum() < cohort.members[1].sep_valid.sum()
    for k in (0, 1):
        assert math.isfinite(rows[1][k]["loss"]) and rows[1][k]["loss_separation"] >= 0
        assert 0.0 <= rows[1][k]["heldout_coverage"] <= 1.0
    # held-out levels 3-9 span several valuations; trit 0 = +1 holds out only v = 0 (no hierarchy to rank)
    assert math.isfinite(rows[1][0]["heldout_hierarchy_B"]) and math.isnan(rows[1][1]["heldout_hierarchy_B"])


def test_hand_written_gradients_match_autograd():
    from tvae.cohort import losses

    ov = {"phases.structure_start": 1, "phases.geometry_start": 1}
    cohort = Cohort([cfg(seed=s, epochs=2, **ov, **({"data.train_fraction": 0.6} if s else {})) for s in (0, 1)])
    cohort.train_epoch()
    members = cohort.members
    for k in range(2):
        cohort._begin_structure(k)
    inp, _ = cohort.inputs.structure(members, ["geometry"] * 2, {},
                                     *cohort.inputs.draw_structure(members, ["geometry"] * 2))
    step = {k: v[:, 0] for k, v in inp["steps"].items()}
    w = cohort.inputs.weights(members, ["geometry"] * 2)
    z = (torch.randn(2, 2, step["x"].shape[1], 16, generator=torch.Generator().manual_seed(0)) * 0.3).requires_grad_()
    r, pw = z.norm(dim=-1) * 2, torch.tensor([0.5, 1.0])
    for use_zero in (False, True):
        a = losses.radius_terms(r, step, w, cohort.targets, pw, use_zero)
        b = losses.radius_terms_reference(r, step, w, cohort.targets, pw, use_zero)
        weights = torch.arange(1.0, 7.0)
        ga = torch.autograd.grad((a * weights).sum(), z, retain_graph=True)[0]
        gb = torch.autograd.grad((b * weights).sum(), z, retain_graph=True)[0]
        assert torch.equal(a, b) and torch.allclose(ga, gb, atol=1e-6) and gb.abs().max() > 0.1
    a = losses.geodesic(z, step["geo_t"], step["geo_i"], step["geo_j"], cohort.c)
    b = losses.geodesic_reference(z, step["geo_t"], step["geo_i"], step["geo_j"], cohort.c)
    ga = torch.autograd.grad((a * pw).sum(), z)[0]
    gb = torch.autograd.grad((b * pw).sum(), z)[0]
    assert torch.allclose(a, b, rtol=1e-5) and torch.allclose(ga, gb, rtol=1e-4, atol=1e-5)


def test_metrics_on_the_device_give_the_host_metrics():
    """The evaluation's GPU path (every member's metrics on the device, read back in one transfer), run on the CPU:
    the same rows as the numpy metrics, for members with and without a held-out split."""
    members = [cfg(seed=0, epochs=6), cfg(seed=1, epochs=6, **{"data.train_fraction": 0.6})]
    on_host, on_device = Cohort(members), Cohort(members, device_metrics=True)
    assert not on_host.device_metrics and on_device.device_metrics
    for _ in range(6):
        a, b = on_host.train_epoch(), on_device.train_epoch()
        assert a.keys() == b.keys() == {0, 1}
        for k in a:
            assert "heldout_dist_corr" in a[1] and math.isfinite(a[k]["train_dist_corr"])
            assert_rows_close(numbers(a[k]), numbers(b[k]))


class CountOps(TorchDispatchMode):
    """Counts the operations dispatched (on a GPU each is a kernel launch, or a view)."""
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _pass_inputs(configs, epochs=2):
    """A trained cohort of ``configs`` and its members' embeddings of every operation, as one GPU-sized pass."""
    from tvae.cohort.evaluation import MEMBER_ROWS_PER_BLOCK, embed_all

    cohort = Cohort(configs)
    for _ in range(epochs):
        cohort.train_epoch()
    k = list(range(len(configs)))
    with torch.inference_mode():
        return cohort, lambda idx: embed_all(cohort.model, cohort.layout.views(cohort.flat[idx]), cohort.trits,
                                             cohort.classes, [False] * len(idx), cohort.c, {},
                                             rows_per_block=MEMBER_ROWS_PER_BLOCK["cuda"]), k


def test_an_evaluation_pass_computes_each_members_device_metrics_as_alone():
    """`tvae.device_metrics.DeviceMetrics` pads members' samples into one batch: members with different split
    kinds and sizes (one without a held-out split) get the numbers each gets in a pass of its own."""
    from tvae.device_metrics import DeviceMetrics

    ov = {"phases.structure_start": 1, "phases.geometry_start": 2}
    configs = [cfg(seed=0, epochs=2, **ov, **{"data.train_fraction": 0.5}),
               cfg(seed=1, epochs=2, **ov, **{"data.split": "valuation", "data.split_level_min": 3}),
               cfg(seed=2, epochs=2, **ov, **{"data.train_fraction": 1.0}),
               cfg(seed=3, epochs=2, **ov, **{"data.split": "trit", "eval.dist_corr_samples": 40})]
    cohort, embed, idx = _pass_inputs(configs)
    assert "heldout" not in cohort.members[2].evals
    with torch.inference_mode():
        emb = embed(idx)
        together = DeviceMetrics([m.evals for m in cohort.members], [m.train_ops for m in cohort.members],
                                 cohort.v, cohort.device).values(*emb, cohort.c).numpy()
        for k, m in enumerate(cohort.members):
            alone = DeviceMetrics([m.evals], [m.train_ops], cohort.v, cohort.device)
            mine = alone.values(*(t[k:k + 1] for t in emb), cohort.c).numpy()
            assert np.array_equal(np.isnan(together[k]), np.isnan(mine[0]))
            # the metrics (float64 from the same float32 embeddings) to rounding; the Gram matrix of the training
            # means is a float32 product whose sums run over the pass's padded length (rounding of its largest term)
            assert np.allclose(together[k, :18], mine[0, :18], rtol=1e-12, atol=1e-12, equal_nan=True), k
            gram = together[k, 18:]
            assert np.allclose(gram, mine[0, 18:], rtol=0, atol=1e-6 * np.abs(gram).max()), k
    assert np.isnan(together[2, 9:18]).all() and np.isfinite(together[0, :17]).all()     # r_v9: one operation


def test_an_evaluation_pass_launches_as_many_kernels_for_any_number_of_members():
    """On a GPU every operation is a kernel launch: a pass of 2 or of 6 members (the GPU's one block per pass)
    dispatches the same operations; the metrics read no value back to the host."""
    from tvae.device_metrics import DeviceMetrics

    ov = {"phases.structure_start": 1, "phases.geometry_start": 2}
    configs = [cfg(seed=s, epochs=2, **ov, **{"data.train_fraction": 0.3 + 0.1 * s}) for s in range(6)]
    cohort, embed, _ = _pass_inputs(configs)
    counts = []
    for idx in ([0, 1], list(range(6))):
        metrics = DeviceMetrics([cohort.members[k].evals for k in idx], [cohort.members[k].train_ops for k in idx],
                                cohort.v, cohort.device)
        count = CountOps()
        with torch.inference_mode(), count:
            embeddings = embed(idx)
            with NoHostSync():
                metrics.values(*embeddings, cohort.c)
        counts.append(count.n)
    assert counts[0] == counts[1] > 100


def test_graph_form_draws_each_members_batches_from_its_key_alone_as_in_a_group():
    """Steps in graph form draw an epoch's batches and loss pairs for the whole group from counter-based numbers
    of each member's key: the same draws alone and beside members with other training splits (other pools, slot
    layouts, numbers of steps), each structure batch laid out by the member's stratified sampler, each coverage
    epoch a permutation of its training operations."""
    ov = {"phases.structure_start": 1, "phases.geometry_start": 1, "data.batch_size": 16}
    configs = [cfg(seed=0, epochs=2, **ov, **{"data.train_fraction": 0.1}),              # 18 slots: keeps 16
               cfg(seed=1, epochs=2, **ov, **{"data.split": "valuation", "data.split_level_min": 3}),  # 15 + 1
               cfg(seed=2, epochs=2, **ov, **{"data.split": "trit"})]                     # 18 slots: keeps 16
    cohort = Cohort(configs, graph_steps=True)
    samplers = [m.sampler for m in cohort.members]
    assert [len(s.slot_offset) > 16 for s in samplers] == [True, False, True]
    phases = ["geometry", "structure", "geometry"]
    keys = torch.tensor([11, 2 ** 40 + 3, 7])
    draw = cohort.inputs.draw_structure_by_counter
    together, n_steps = draw((0, 1, 2), cohort.members, phases, keys)
    assert n_steps == [s.n_batches for s in samplers] and len(set(n_steps)) == 3
    for k, (m, s) in enumerate(zip(cohort.members, samplers)):
        alone, (S,) = draw((k,), [m], phases[k:k + 1], keys[k:k + 1])
        assert S == n_steps[k] and alone.keys() <= together.keys()
        for name, value in alone.items():
            assert torch.equal(value[0, :S], together[name][k, :S]), (k, name)
        batches = alone["batches"][0]
        assert torch.isin(batches, m.train_ops).all()
        levels = cohort.v[batches]                                                  # (S, 16)
        layout = cohort.v[s.sorted_train[s.slot_offset[:s.n_slots]]]              # each real slot's level
        if len(s.slot_offset) > 16:     # a random 16 of its slots per batch: no level above its share
            per_level = torch.nn.functional.one_hot(levels, 10).sum(1)
            assert (per_level <= torch.nn.functional.one_hot(layout, 10).sum(0)).all()
        else:                           # every slot in order, the padding slot from anywhere
            assert torch.equal(levels[:, :s.n_slots], layout.expand(S, -1))
        for a, b in (("rad_i", "rad_j"), ("rank_i", "rank_j")) + ((("geo_i", "geo_j"),) if k != 1 else ()):
            i, j = alone[a][0], alone[b][0]
            assert (i != j).all() and i.min() >= 0 and max(i.max(), j.max()) < 16
    other, _ = draw((0,), cohort.members[:1], phases[:1], keys[:1] + 1)
    assert not torch.equal(other["batches"], together["batches"][:1])
    # the coverage phase: each member's training operations in an order of its key, every one once an epoch
    cover, n_steps = cohort.inputs.coverage(cohort.members, 128, (0, 1, 2), keys)
    for k, m in enumerate(cohort.members):
        alone, (S,) = cohort.inputs.coverage([m], 128, (k,), keys[k:k + 1])
        for name, value in alone["steps"].items():
            assert torch.equal(value[0, :S], cover["steps"][name][k, :S]), (k, name)
        seen = alone["steps"]["idx"][0][alone["steps"]["row_w"][0] > 0]
        assert S == n_steps[k] and torch.equal(seen.sort().values, m.train_ops.sort().values)
