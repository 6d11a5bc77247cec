"""Typed, strict configuration of the TernaryVAE trainer.

Nested dataclasses; every key is reachable as a dotted path (``loss.rank.weight``). Unknown keys and values
of the wrong type raise `ConfigError` naming the key (the shared layer, ``tvae.configlib``). Presets are
functions returning a fresh `Config`; `validate` holds the range checks types cannot express.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from tvae.configlib import (ConfigError, flatten_mapping, from_dict, parse_assignment, parse_assignments,
                            parse_value, set_key)

__all__ = ["Config", "ConfigError", "PRESETS", "build", "dump_yaml", "from_dict", "load_yaml", "parse_assignment",
           "parse_assignments", "parse_value", "preset", "set_key", "to_dict", "validate"]


# --------------------------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    encoder: Literal["relu", "improved"] = "relu"
    decoder: Literal["relu", "improved"] = "relu"
    latent_dim: int = 16
    hidden_dim: int = 64              # width of the projection's direction MLP
    max_radius: float = 0.95          # Euclidean cap of a ball point (sigmoid scale)
    curvature: float = 1.0
    learnable_curvature: bool = False
    projection_layers: int = 2
    projection_dropout: float = 0.1
    encoder_dropout: float = 0.1      # improved encoder only
    decoder_dropout: float = 0.1      # improved decoder only
    logvar_min: float = -10.0         # improved encoder only
    logvar_max: float = 2.0


@dataclass
class DataConfig:
    train_fraction: float = 1.0       # (0, 1]; < 1 holds out a stratified, seeded share of every level
    split_seed: int = 0               # independent of the trial seed
    # the held-out split kind and its parameters (tvae/data.py SPLIT_KINDS, tvae/README.md "Held-out splits")
    split: Literal["stratified", "valuation", "trit", "compositional"] = "stratified"
    split_level_min: int = 4          # valuation: hold out split_level_min <= v <= split_level_max
    split_level_max: int = 9
    split_position: int = 0           # trit: hold out trit split_position = split_value; compositional: 1st position
    split_value: int = 1
    split_position_b: int = 1         # compositional: 2nd position
    split_pairs: int = 1              # compositional: value pairs (1-3) never seen together in training
    batch_size: int = 512
    high_v_budget_ratio: float = 0.25
    high_v_min_level: int = 4         # levels >= this share the high-valuation budget equally


@dataclass
class PhasesConfig:
    structure_start: int = 25         # e1: end of the coverage phase
    geometry_start: int = 75          # e2: the geodesic loss joins, the radial weight halves


@dataclass
class CoverageConfig:
    """The coverage (foundation) phase: beta-VAE training of encoder A, projection A and the decoder."""
    lr: float = 3e-3                  # cosine decay over [0, e1) down to lr * min_lr_scale
    min_lr_scale: float = 0.0
    batch_size: int = 256
    recon_weight: float = 9.0         # weight of the mean CE (9 = summed over the 9 positions, as v5.5 did)
    beta: float = 0.0
    free_bits: float = 0.0            # nats per latent dimension (clamp from below on batch-mean KL)
    radial_weight: float = 0.0        # optional radial pull of z_A towards the level targets, ramped 0 -> full by e1/2
    weight_decay: float = 1e-4        # coupled L2 of the coverage phase only (optim.weight_decay is the later phases')


@dataclass
class OptimConfig:
    # riemannian_adam: geoopt.optim.RiemannianAdam. adam: torch.optim.Adam(fused=True) with coupled L2 -- the
    # same update for Euclidean parameters (all of this model's), about 4x cheaper per step on a CPU.
    optimizer: Literal["adam", "riemannian_adam"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4        # coupled L2, as RiemannianAdam applies it
    max_grad_norm: float = 1.0
    lr_scale_encoder_A: float = 0.05
    lr_scale_encoder_B: float = 0.1
    lr_scale_projections: float = 1.0
    lr_scale_decoder: float = 1.0     # only used in the coverage phase (the decoder is frozen afterwards)


@dataclass
class SchedulePhase:
    name: str = "phase"
    start: int = 0
    end: int = 0
    scale: float = 1.0
    annealing: Literal["constant", "cosine", "linear", "cosine_restarts"] = "constant"
    final_scale: float = 0.0          # end value (as a fraction of `scale`) for cosine / linear
    T0: int = 25                      # cosine_restarts only
    Tmult: int = 2


@dataclass
class ScheduleConfig:
    kind: Literal["constant", "cosine", "cosine_restarts", "multi_phase"] = "cosine_restarts"
    warmup_epochs: int = 0
    min_scale: float = 0.0            # floor of cosine / cosine_restarts, as a fraction of the base lr
    T0: int = 25
    Tmult: int = 2
    phases: list[SchedulePhase] = field(default_factory=list)


@dataclass
class RichConfig:
    hierarchy_weight: float = 5.0
    coverage_weight: float = 1.0
    richness_weight: float = 2.0
    separation_weight: float = 3.0
    min_richness_ratio: float = 0.5
    separation_margin: float = 0.01


@dataclass
class RadialConfig:
    weight: float = 1.0
    inner_radius: float = 0.08
    outer_radius: float = 0.90
    margin_weight: float = 0.5
    n_pairs: int = 1000
    valuation_exponent: float = 0.4


@dataclass
class RankConfig:
    weight: float = 0.5
    temperature: float = 0.1
    n_pairs: int = 2000


@dataclass
class ZeroConfig:
    # Off by default (see tvae/README.md): upstream's term counts leading 0 trits instead of the valuation's
    # leading -1 trits and fights the hierarchy. Upstream's effective weights were 0.25 and 0.15.
    valuation_weight: float = 0.0
    sparsity_weight: float = 0.0
    target_correlation: float = -0.3


@dataclass
class GeodesicConfig:
    weight: float = 0.3
    max_target_distance: float = 3.0
    valuation_scale: float = 3.0
    n_pairs: int = 2000


@dataclass
class LossConfig:
    a_path_weight: float = 0.0        # multiplies the radial, rank, zero and geodesic terms on z_A (upstream: 1)
    rich: RichConfig = field(default_factory=RichConfig)
    radial: RadialConfig = field(default_factory=RadialConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    geodesic: GeodesicConfig = field(default_factory=GeodesicConfig)


@dataclass
class HomeostasisConfig:
    enabled: bool = True
    coverage_freeze_threshold: float = 0.995
    coverage_unfreeze_threshold: float = 1.0
    coverage_floor: float = 0.95
    warmup_epochs: int = 5            # counted from the start of the structure phase
    hysteresis_epochs: int = 2
    annealing: bool = True
    annealing_step: float = 0.003
    plateau_threshold: float = 0.001
    plateau_patience: int = 5
    patience_ceiling: int = 15
    window: int = 5


@dataclass
class EvalConfig:
    dist_corr_samples: int = 1000
    padic_pairs: int = 20000
    seed: int = 0                     # seed of the fixed metric samples (independent of the trial seed)


@dataclass
class Config:
    preset: str = "v5_12_4"
    epochs: int = 100
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phases: PhasesConfig = field(default_factory=PhasesConfig)
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    homeostasis: HomeostasisConfig = field(default_factory=HomeostasisConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------- presets


def preset_v5_12_4() -> Config:
    """The published v5.12.4 recipe (archived config, P1 semantics), trained from scratch."""
    return Config()


def preset_v5_12_4_extended() -> Config:
    """The seed's 500-epoch grokking configuration with the exploration -> grokking_search -> fine_tuning
    multi-phase schedule (``v5_12_4_extended_grokking.yaml``)."""
    cfg = Config(preset="v5_12_4_extended", epochs=525)   # 25 coverage epochs + the 500-epoch recipe
    cfg.model.encoder = "improved"
    cfg.model.decoder = "improved"
    # the decoder only trains in the coverage phase; with dropout it left 2 of 19,683 operations undecoded
    # after 25 epochs (seed 0), without it coverage is 1.0 from epoch 11
    cfg.model.decoder_dropout = 0.0
    cfg.optim.lr = 8e-4
    cfg.loss.rich.richness_weight = 2.5
    cfg.loss.rich.min_richness_ratio = 0.4
    cfg.loss.geodesic.weight = 0.4
    cfg.phases.geometry_start = 75          # upstream: geodesic from v5.12 epoch 50 (= 25 + 50 here)
    cfg.homeostasis.warmup_epochs = 10
    cfg.homeostasis.hysteresis_epochs = 5
    cfg.homeostasis.annealing_step = 0.002
    cfg.schedule = ScheduleConfig(kind="multi_phase", phases=multi_phase_grokking_phases())
    return cfg


def multi_phase_grokking_phases() -> list[SchedulePhase]:
    return [
        SchedulePhase("exploration", 0, 150, 1.0, "cosine_restarts", 0.0, 25, 2),
        SchedulePhase("grokking_search", 150, 350, 0.3, "constant"),
        SchedulePhase("fine_tuning", 350, 500, 0.1, "linear", 0.0),
    ]


def preset_tiny() -> Config:
    """A small, fast configuration for tests: few epochs, small batches, small metric samples."""
    cfg = Config(preset="tiny", epochs=6)
    cfg.phases.structure_start = 2
    cfg.phases.geometry_start = 4
    cfg.coverage.batch_size = 2048
    cfg.data.batch_size = 2048
    cfg.eval.dist_corr_samples = 200
    cfg.eval.padic_pairs = 2000
    cfg.homeostasis.warmup_epochs = 1
    cfg.homeostasis.hysteresis_epochs = 1
    return cfg


PRESETS = {
    "v5_12_4": preset_v5_12_4,
    "v5_12_4_extended": preset_v5_12_4_extended,
    "tiny": preset_tiny,
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------- checking

def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def validate(cfg: Config) -> None:
    """Range checks that types cannot express."""
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    need(cfg.epochs >= 1, "epochs", "must be >= 1")
    need(0.0 < cfg.data.train_fraction <= 1.0, "data.train_fraction", "must be in (0, 1]")
    need(cfg.data.batch_size >= 16, "data.batch_size", "must be >= 16")
    need(0.0 <= cfg.data.high_v_budget_ratio < 1.0, "data.high_v_budget_ratio", "must be in [0, 1)")
    need(0 <= cfg.data.high_v_min_level <= 9, "data.high_v_min_level", "must be in [0, 9]")
    need(1 <= cfg.data.split_level_min <= cfg.data.split_level_max <= 9, "data.split_level_min",
         "need 1 <= data.split_level_min <= data.split_level_max <= 9")
    need(0 <= cfg.data.split_position <= 8, "data.split_position", "must be in [0, 8]")
    need(cfg.data.split_value in (-1, 0, 1), "data.split_value", "must be -1, 0 or 1")
    need(0 <= cfg.data.split_position_b <= 8, "data.split_position_b", "must be in [0, 8]")
    need(cfg.data.split != "compositional" or cfg.data.split_position_b != cfg.data.split_position,
         "data.split_position_b", "must differ from data.split_position (compositional split)")
    need(1 <= cfg.data.split_pairs <= 3, "data.split_pairs", "must be in [1, 3]")
    need(cfg.coverage.batch_size >= 16, "coverage.batch_size", "must be >= 16")
    need(cfg.phases.structure_start >= 1, "phases.structure_start", "must be >= 1 (the coverage phase trains encoder A)")
    need(cfg.phases.geometry_start >= cfg.phases.structure_start, "phases.geometry_start",
         "must be >= phases.structure_start")
    need(0.0 < cfg.model.max_radius < 1.0 / cfg.model.curvature ** 0.5, "model.max_radius",
         "must be in (0, 1/sqrt(curvature))")
    need(cfg.model.curvature > 0, "model.curvature", "must be > 0")
    need(cfg.model.latent_dim >= 2, "model.latent_dim", "must be >= 2")
    need(cfg.model.projection_layers >= 1, "model.projection_layers", "must be >= 1")
    need(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    need(cfg.coverage.lr > 0, "coverage.lr", "must be > 0")
    need(cfg.loss.rank.temperature > 0, "loss.rank.temperature", "must be > 0")
    need(cfg.schedule.T0 >= 1 and cfg.schedule.Tmult >= 1, "schedule.T0", "T0 and Tmult must be >= 1")
    need(cfg.eval.dist_corr_samples >= 10, "eval.dist_corr_samples", "must be >= 10")
    if cfg.schedule.kind == "multi_phase":
        need(len(cfg.schedule.phases) > 0, "schedule.phases", "multi_phase needs at least one phase")
    for i, ph in enumerate(cfg.schedule.phases):
        need(ph.end > ph.start, f"schedule.phases[{i}].end", "must be > start")
        need(ph.T0 >= 1 and ph.Tmult >= 1, f"schedule.phases[{i}].T0", "T0 and Tmult must be >= 1")


def build(preset_name: str = "v5_12_4", *, config_file: str | Path | None = None,
          overrides: Mapping[str, Any] | None = None, epochs: int | None = None,
          seed: int | None = None) -> Config:
    """Preset, then the YAML file, then dotted overrides, then explicit epochs/seed."""
    cfg = preset(preset_name)
    if config_file is not None:
        cfg = load_yaml(config_file, base=cfg)
    if overrides:
        for key, value in overrides.items():
            set_key(cfg, key, value)
    if epochs is not None:
        set_key(cfg, "epochs", epochs)
    if seed is not None:
        set_key(cfg, "seed", seed)
    validate(cfg)
    return cfg


def load_yaml(path: str | Path, *, base: Config | None = None) -> Config:
    """Read a (possibly partial) YAML config on top of ``base`` (default: its own ``preset`` or v5_12_4)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    if base is None:
        base = preset(str(data.get("preset", "v5_12_4")))
    for key, value in flatten_mapping(data).items():
        set_key(base, key, value)
    validate(base)
    return base


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
