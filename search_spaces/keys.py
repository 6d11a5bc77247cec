"""The `ternary_vae` override keys the spaces use, in one place (names as in tvae/config.py)."""
LR = "optim.lr"
WEIGHT_DECAY = "optim.weight_decay"
TRAIN_FRACTION = "data.train_fraction"
SPLIT = "data.split"
SPLIT_LEVEL_MIN = "data.split_level_min"
SPLIT_POSITION = "data.split_position"
SPLIT_VALUE = "data.split_value"
SPLIT_POSITION_B = "data.split_position_b"
SPLIT_PAIRS = "data.split_pairs"
BATCH = "data.batch_size"
COVERAGE_BATCH = "coverage.batch_size"
E1 = "phases.structure_start"     # end of the coverage phase
E2 = "phases.geometry_start"      # end of the structure phase
W_HIERARCHY = "loss.rich.hierarchy_weight"
W_RICHNESS = "loss.rich.richness_weight"
W_SEPARATION = "loss.rich.separation_weight"
W_RADIAL = "loss.radial.weight"
W_RANK = "loss.rank.weight"
W_GEODESIC = "loss.geodesic.weight"
LR_SCHEDULE = "schedule.kind"
LR_T0 = "schedule.T0"
LR_TMULT = "schedule.Tmult"
LR_WARMUP = "schedule.warmup_epochs"
LR_PHASES = "schedule.phases"

# what makes a smoke trial small and quick: the trainer's `tiny` preset (big batches, small metric samples,
# phases at epochs 2 and 4)
SMOKE_FIXED: dict = {"preset": "tiny"}


def multi_phase(epochs: int, *, search_scale: float = 0.3, final_scale: float = 0.1) -> list[dict]:
    """The seed's exploration → grokking_search → fine_tuning schedule, stretched to ``epochs``
    (30% / 40% / 30% of the budget, as 150/200/150 of the original 500)."""
    a, b = max(1, round(0.3 * epochs)), max(2, round(0.7 * epochs))
    b = max(b, a + 1)
    end = max(epochs, b + 1)
    return [
        {"name": "exploration", "start": 0, "end": a, "scale": 1.0, "annealing": "cosine_restarts",
         "T0": max(1, min(25, a)), "Tmult": 2},
        {"name": "grokking_search", "start": a, "end": b, "scale": search_scale, "annealing": "constant"},
        {"name": "fine_tuning", "start": b, "end": end, "scale": final_scale, "annealing": "linear",
         "final_scale": 0.0},
    ]
