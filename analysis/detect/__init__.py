"""Detectors over epoch rows, for all trials at once (polars window expressions; no Python loop over trials).

  plateaus(lf, metric, **PlateauRule)        → event rows (event = "plateau")
  transitions(lf, metric, **TransitionRule)  → event rows (event = "transition"; rule level_shift,
                                               plateau_jump or slope_change)
  grokking(lf, pair="acc", **GrokkingRule)   → one row per trial: class, t_mem, t_gen, delay, ungrokked, …
  grokking_events(table, pair)               → event rows from a grokking table (memorized, generalized,
                                               class, ungrokked)
  events(lf, …)                              → all of the above as one frame of event rows

Every function takes and returns a `pl.LazyFrame`; nothing is collected. Event rows have the columns of
`EVENT_SCHEMA`. Parameters and their defaults are documented in `analysis.rules`.

  collect_all_events(lf, …)                  → (grokking table, events) collected in one pass (an edge)

The sorted frame and the window helpers are in `analysis.frames`.
CLI (`analysis.detect.cli`): python -m analysis.detect PATH [PATH …] [--pair NAME] [--json] [--window N] …
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import polars as pl

from analysis import metrics as M
from analysis.frames import G, KEYS, I, ahead, back, local_noise, prepare, require, rmean, value_range
from analysis.rules import DETECTOR_VERSION, GrokkingRule, PlateauRule, TransitionRule


EVENT_SCHEMA: dict[str, pl.DataType] = {
    "study": pl.String, "trial_id": pl.String, "event": pl.String, "metric": pl.String,
    "epoch": pl.Int64, "epoch_end": pl.Int64, "magnitude": pl.Float64, "rule": pl.String,
    "params": pl.String, "detector_version": pl.String,
}

CLASSES = ("comprehension", "grokking", "memorization", "confusion", "no_heldout")


# ---------------------------------------------------------------------------------------------------------
# shared pieces

def _rule(cls, given, params: Mapping[str, Any]):
    if given is not None and params:
        raise ValueError(f"pass either a {cls.__name__} or keyword parameters, not both")
    if isinstance(given, cls):
        return given
    if given is not None:
        return cls.from_dict(given)
    return cls.from_dict(params)


def _flat(m: pl.Expr, rule: PlateauRule, sigma: pl.Expr, rng: pl.Expr) -> pl.Expr:
    half = rule.window // 2
    second = rmean(m, half)
    first = back(second, half)
    tol = pl.max_horizontal(pl.lit(rule.atol), rule.rtol * rng) + rule.z * sigma * 2.0 / math.sqrt(rule.window)
    return ((second - first).abs() <= tol).fill_null(False)


def _event_rows(lf: pl.LazyFrame, *, event: pl.Expr | str, metric: str, rule: pl.Expr | str,
                params: str) -> pl.LazyFrame:
    lit = lambda v: pl.lit(v) if isinstance(v, str) else v  # noqa: E731
    return lf.select(
        pl.col("study"), pl.col("trial_id"), lit(event).alias("event"), pl.lit(metric).alias("metric"),
        pl.col("epoch").cast(pl.Int64), pl.col("epoch_end").cast(pl.Int64),
        pl.col("magnitude").cast(pl.Float64), lit(rule).alias("rule"), pl.lit(params).alias("params"),
        pl.lit(DETECTOR_VERSION).alias("detector_version"),
    )


def empty_events() -> pl.LazyFrame:
    return pl.LazyFrame(schema=EVENT_SCHEMA)


# ---------------------------------------------------------------------------------------------------------
# plateaus

def _col(name: str, metric: str) -> str:
    return f"_{name}:{metric}"


# Both detectors build their columns in the same six stages (each one `with_columns`). Intermediate columns
# are named after what they hold (`_rmean20:train_acc`), so when `events` runs both detectors on many metrics
# a column they share is computed once.
DEPTH = 6


def _sigma_name(metric: str, window: int) -> str:
    return _col(f"sigma{4 * window}", metric)


def _flat_name(metric: str, r: PlateauRule) -> str:
    return _col(f"flat{r.window}-{r.rtol}-{r.atol}-{r.z}", metric)


def _common_stages(metric: str, window: int) -> list[list[pl.Expr]]:
    m = pl.col(metric)
    return [[local_noise(m, 4 * window).alias(_sigma_name(metric, window)),
             value_range(m).alias(_col("range", metric)),
             (pl.col("epoch").max() - pl.col("epoch").min() + 1).over(G).cast(pl.Float64).alias("_len")]]


def _flat_expr(metric: str, r: PlateauRule) -> pl.Expr:
    return _flat(pl.col(metric), r, pl.col(_sigma_name(metric, r.window)), pl.col(_col("range", metric)))


def _plateau_stages(metric: str, r: PlateauRule) -> list[list[pl.Expr]]:
    """Columns `plateaus` needs, in dependency order (each list is one `with_columns`)."""
    flat = pl.col(_flat_name(metric, r))
    stages = _common_stages(metric, r.window) + [
        [],
        [_flat_expr(metric, r).alias(_flat_name(metric, r)),
         back(pl.col("epoch"), 2 * (r.window // 2) - 1).alias(f"_start{r.window}")],
        [((flat != flat.shift(1)) | (I == 0)).fill_null(True).cum_sum().alias(_col("seg", metric))],
    ]
    return stages + [[]] * (DEPTH - len(stages))


def _plateau_rows(marked: pl.LazyFrame, metric: str, r: PlateauRule) -> pl.LazyFrame:
    m, c = pl.col(metric), (lambda n: _col(n, metric))  # noqa: E731
    runs = (marked.filter(_flat_name(metric, r))
            .group_by(c("seg"))
            .agg(pl.col(G).first(), *[pl.col(k).first() for k in KEYS],
                 pl.col(f"_start{r.window}").first().alias("epoch"),
                 pl.col("epoch").last().alias("epoch_end"), m.sum().alias("_sum"), m.count().alias("_count"))
            .sort([G, "epoch"]))
    # runs whose windows overlap (a brief break in flatness) are one plateau
    merged = (runs.with_columns(
                  (pl.col("epoch") > pl.col("epoch_end").cum_max().shift(1) + 1).fill_null(True)
                  .cum_sum().over(G).alias("_plateau"))
              .group_by([G, "_plateau"])
              .agg(*[pl.col(k).first() for k in KEYS], pl.col("epoch").min(), pl.col("epoch_end").max(),
                   (pl.col("_sum").sum() / pl.col("_count").sum()).alias("magnitude")))
    segments = merged.filter(pl.col("epoch_end") - pl.col("epoch") + 1 >= r.min_span)
    return _event_rows(segments, event="plateau", metric=metric, rule="plateau.half_window_means",
                       params=r.to_json(metric=metric))


def plateaus(lf: pl.LazyFrame, metric: str, *, rule: PlateauRule | Mapping | None = None,
             **params: Any) -> pl.LazyFrame:
    """Plateaus of `metric` in every trial: event rows with epoch..epoch_end and magnitude = mean level."""
    r = _rule(PlateauRule, rule, params)
    marked = prepare(lf, [metric])
    for stage in _plateau_stages(metric, r):
        marked = marked.with_columns(stage)
    return _plateau_rows(marked, metric, r).sort([*KEYS, "epoch"])


# ---------------------------------------------------------------------------------------------------------
# transitions

def _transition_stages(metric: str, r: TransitionRule, p: PlateauRule) -> list[list[pl.Expr]]:
    w = r.window
    m, x = pl.col(metric), pl.col("epoch").cast(pl.Float64)
    c = lambda n: _col(n, metric)  # noqa: E731
    sigma, rng, length = pl.col(_sigma_name(metric, w)), pl.col(c("range")), pl.col("_len")
    level_mean, slope = pl.col(c(f"rmean{w}")), pl.col(c(f"slope{w}"))
    span = 2 * w + 1
    mx = rmean(x, w)
    slope_ending_here = (rmean(x * m, w) - mx * rmean(m, w)) / (rmean(x * x, w) - mx * mx)
    level_thr = pl.max_horizontal(pl.lit(r.atol), r.rtol * rng, r.z * sigma * math.sqrt(2.0 / w))
    slope_thr = pl.max_horizontal(r.slope_rtol * rng, r.z * sigma * math.sqrt(24.0 / w ** 3) * length)
    a_level, a_slope = pl.col(c(f"dlevel{w}")).abs(), pl.col(c(f"dslope{w}")).abs() * length
    level = pl.col(c("level"))
    flat_stages = [[]] if p.window == w else _common_stages(metric, p.window)
    return [
        _common_stages(metric, w)[0] + flat_stages[0],
        [rmean(m, w).alias(c(f"rmean{w}")), slope_ending_here.alias(c(f"slope{w}"))],
        [(ahead(level_mean, w - 1) - back(level_mean, 1)).alias(c(f"dlevel{w}")),
         (ahead(slope, w - 1) - back(slope, 1)).alias(c(f"dslope{w}")),
         _flat_expr(metric, p).alias(_flat_name(metric, p))],
        [pl.when(pl.col(_flat_name(metric, p))).then(pl.col("_row")).otherwise(None).forward_fill()
         .alias(c(f"last_flat{w}"))],
        # a plateau window of this trial ended within the `window` rows before t
        [(back(pl.col(c(f"last_flat{w}")), 1) >= pl.max_horizontal(pl.col("_row") - w, pl.col("_row") - I))
         .fill_null(False).alias(c("after_plateau")),
         # values are null within `window` rows of a trial's ends, so a centred span of ±window rows never
         # compares with a value of another trial
         ((a_level >= level_thr) & (a_level > 0)
          & (a_level == a_level.rolling_max(span, center=True, min_samples=1))).fill_null(False)
         .alias(c("level"))],
        [((a_slope >= slope_thr) & (a_slope > 0)
          & (a_slope == a_slope.rolling_max(span, center=True, min_samples=1))
          & ~level.rolling_max(span, center=True, min_samples=1).fill_null(False))
         .fill_null(False).alias(c("slope"))],
    ]


def _transition_rows(marked: pl.LazyFrame, metric: str, r: TransitionRule, p: PlateauRule) -> pl.LazyFrame:
    c = lambda n: pl.col(_col(n, metric))  # noqa: E731
    level = c("level")
    w = r.window
    rows = (marked.filter(level | c("slope"))
            .with_columns(
                pl.when(level).then(c(f"dlevel{w}")).otherwise(c(f"dslope{w}")).alias("magnitude"),
                pl.when(level & c("after_plateau")).then(pl.lit("transition.plateau_jump"))
                .when(level).then(pl.lit("transition.level_shift"))
                .otherwise(pl.lit("transition.slope_change")).alias("_rule"),
                pl.col("epoch").alias("epoch_end"),
                level.alias("_is_level"))
            # ties of a flat-topped peak: keep the first candidate of each kind within ±window epochs
            .filter(((pl.col("epoch") - pl.col("epoch").shift(1).over([G, "_is_level"])) > r.window)
                    .fill_null(True)))
    return _event_rows(rows, event="transition", metric=metric, rule=pl.col("_rule"),
                       params=r.to_json(metric=metric, plateau=json.loads(p.to_json())))


def _default_flat_rule(r: TransitionRule) -> PlateauRule:
    return PlateauRule(window=r.window, min_span=r.window)


def transitions(lf: pl.LazyFrame, metric: str, *, rule: TransitionRule | Mapping | None = None,
                plateau: PlateauRule | Mapping | None = None, **params: Any) -> pl.LazyFrame:
    """Abrupt changes of level or slope of `metric` in every trial (event rows, rule level_shift,
    plateau_jump or slope_change; magnitude = signed level or slope change). `plateau` is the flatness rule
    that tells a plateau_jump (default: PlateauRule with the transition window)."""
    r = _rule(TransitionRule, rule, params)
    p = _rule(PlateauRule, plateau, {}) if plateau is not None else _default_flat_rule(r)
    marked = prepare(lf, [metric])
    for stage in _transition_stages(metric, r, p):
        marked = marked.with_columns(stage)
    return _transition_rows(marked, metric, r, p).sort([*KEYS, "epoch"])


# ---------------------------------------------------------------------------------------------------------
# grokking

def resolve_grokking_rule(pair: str, rule: GrokkingRule,
                          directions: Mapping[str, str] | None = None) -> tuple[str, GrokkingRule]:
    """The pair's direction and a rule whose thresholds are all filled in (table defaults for None)."""
    column = M.TRAIN + pair
    spec = M.spec_for(column, directions)
    if spec is None:
        raise ValueError(f"no known direction for metric {pair!r}; pass directions={{{pair!r}: 'max' or 'min'}}"
                         f" and the thresholds")
    filled = {
        "train_threshold": rule.train_threshold if rule.train_threshold is not None else spec.train_threshold,
        "heldout_threshold": rule.heldout_threshold if rule.heldout_threshold is not None else spec.heldout_threshold,
        "ungrok_threshold": rule.ungrok_threshold if rule.ungrok_threshold is not None else spec.ungrok_threshold,
    }
    missing = [k for k, v in filled.items() if v is None]
    if missing:
        raise ValueError(f"metric {pair!r} has no default for {', '.join(missing)}; pass them explicitly")
    return spec.direction, GrokkingRule(**{**rule.__dict__, **filled})


def _check_pair(schema: Mapping[str, Any], pair: str) -> None:
    tr, ho = M.TRAIN + pair, M.HELDOUT + pair
    if tr not in schema or ho not in schema:
        raise ValueError(f"pair {pair!r} needs columns {tr} and {ho}; pairs in the data: "
                         f"{', '.join(M.pairs(schema)) or 'none'}")


def grokking(lf: pl.LazyFrame, pair: str = "acc", *, rule: GrokkingRule | Mapping | None = None,
             directions: Mapping[str, str] | None = None, **params: Any) -> pl.LazyFrame:
    """One row per trial for the pair `train_<pair>`/`heldout_<pair>`: study, trial_id, pair, class, t_mem,
    t_gen, delay, ungrokked, t_ungrok, n_epochs, last_epoch, train_final, heldout_final, heldout_best,
    heldout_at_mem, train_at_mem, heldout_at_gen, rule, params."""
    tr, ho = M.TRAIN + pair, M.HELDOUT + pair
    _check_pair(dict(lf.collect_schema()), pair)
    direction, r = resolve_grokking_rule(pair, _rule(GrokkingRule, rule, params), directions)
    up = direction == "max"

    def at_least(col: str, thr: float) -> pl.Expr:
        return (pl.col(col) >= thr) if up else (pl.col(col) <= thr)

    def held(ok: pl.Expr, k: int) -> pl.Expr:
        return (ahead(ok.fill_null(False).cast(pl.Int32).rolling_sum(k), k - 1) == k).fill_null(False)

    lost = (pl.col(ho) < r.ungrok_threshold) if up else (pl.col(ho) > r.ungrok_threshold)
    epoch = pl.col("epoch")
    t_gen = epoch.filter("_gen").first()
    best = pl.col(ho).max() if up else pl.col(ho).min()
    table = (prepare(lf, [tr, ho])
             .with_columns(held(at_least(tr, r.train_threshold), r.hold).alias("_mem"),
                           held(at_least(ho, r.heldout_threshold), r.hold).alias("_gen"),
                           held(lost, r.ungrok_hold).alias("_lost"))
             .group_by(G)
             .agg(*[pl.col(k).first() for k in KEYS],
                  epoch.filter("_mem").first().alias("t_mem"),
                  t_gen.alias("t_gen"),
                  epoch.filter(pl.col("_lost") & (epoch > t_gen)).first().alias("t_ungrok"),
                  pl.len().alias("n_epochs"), epoch.max().alias("last_epoch"),
                  pl.col(tr).drop_nulls().last().alias("train_final"),
                  pl.col(ho).drop_nulls().last().alias("heldout_final"),
                  best.alias("heldout_best"),
                  pl.col(tr).filter("_mem").first().alias("train_at_mem"),
                  pl.col(ho).filter("_mem").first().alias("heldout_at_mem"),
                  pl.col(ho).filter("_gen").first().alias("heldout_at_gen"),
                  pl.col(ho).is_not_null().any().alias("_has_heldout")))
    delay = pl.col("t_gen") - pl.col("t_mem")
    needed = pl.max_horizontal(pl.lit(r.min_delay, pl.Float64), r.delay_ratio * pl.col("t_mem").cast(pl.Float64))
    cls = (pl.when(~pl.col("_has_heldout")).then(pl.lit("no_heldout"))
           .when(pl.col("t_mem").is_null()).then(pl.lit("confusion"))
           .when(pl.col("t_gen").is_null()).then(pl.lit("memorization"))
           .when(delay.cast(pl.Float64) >= needed).then(pl.lit("grokking"))
           .otherwise(pl.lit("comprehension")))
    params_json = r.to_json(pair=pair, direction=direction)
    return (table.with_columns(pl.lit(pair).alias("pair"), cls.alias("class"), delay.alias("delay"),
                               pl.col("t_ungrok").is_not_null().alias("ungrokked"))
            .with_columns(pl.concat_str(pl.lit("class."), pl.col("class")).alias("rule"),
                          pl.lit(params_json).alias("params"))
            .select(*KEYS, "pair", "class", "t_mem", "t_gen", "delay", "ungrokked", "t_ungrok", "n_epochs",
                    "last_epoch", "train_final", "heldout_final", "heldout_best", "train_at_mem",
                    "heldout_at_mem", "heldout_at_gen", "rule", "params")
            .sort(KEYS))


def grokking_events(table: pl.LazyFrame) -> pl.LazyFrame:
    """Event rows from a `grokking(...)` table: memorized (t_mem), generalized (t_gen), class (at t_gen,
    else t_mem, else the last epoch; magnitude = delay) and ungrokked (t_ungrok)."""
    metric = pl.concat_str(pl.lit(M.TRAIN), pl.col("pair"), pl.lit("/" + M.HELDOUT), pl.col("pair"))
    parts = []
    specs = [
        ("memorized", "t_mem", "t_mem", "train_at_mem", "grokking.first_held_train"),
        ("generalized", "t_gen", "t_gen", "heldout_at_gen", "grokking.first_held_heldout"),
        ("ungrokked", "t_ungrok", "last_epoch", "heldout_final", "grokking.ungrok_held"),
    ]
    for event, start, end, mag, rule in specs:
        parts.append(table.filter(pl.col(start).is_not_null()).select(
            *KEYS, pl.lit(event).alias("event"), metric.alias("metric"), pl.col(start).alias("epoch"),
            pl.col(end).alias("epoch_end"), pl.col(mag).alias("magnitude"), pl.lit(rule).alias("rule"),
            "params"))
    parts.append(table.select(
        *KEYS, pl.lit("class").alias("event"), metric.alias("metric"),
        pl.coalesce("t_gen", "t_mem", "last_epoch").alias("epoch"), pl.col("last_epoch").alias("epoch_end"),
        pl.col("delay").alias("magnitude"), "rule", "params"))
    typed = [p.select(*[pl.col(c).cast(t) for c, t in EVENT_SCHEMA.items() if c != "detector_version"])
             for p in parts]
    return pl.concat(typed).with_columns(pl.lit(DETECTOR_VERSION).alias("detector_version"))


# ---------------------------------------------------------------------------------------------------------
# everything

def events(lf: pl.LazyFrame, *, metrics: Sequence[str] | None = None, pairs: Sequence[str] | None = None,
           plateau: PlateauRule | Mapping | None = None, transition: TransitionRule | Mapping | None = None,
           grokking_rule: GrokkingRule | Mapping | None = None,
           directions: Mapping[str, str] | None = None) -> pl.LazyFrame:
    """All event rows: plateaus and transitions of `metrics` (default: every column with a known direction,
    `analysis.metrics.metric_columns`) and the grokking events of `pairs` (default: every pair present whose
    metric has default thresholds, `analysis.metrics.classifiable_pairs`)."""
    schema = dict(lf.collect_schema())
    metrics = list(metrics) if metrics is not None else M.metric_columns(schema, directions)
    pairs = list(pairs) if pairs is not None else M.classifiable_pairs(schema, directions)
    require(lf, metrics)
    p = _rule(PlateauRule, plateau, {})
    t = _rule(TransitionRule, transition, {})
    g = _rule(GrokkingRule, grokking_rule, {})
    flat = PlateauRule(**{**p.__dict__, "window": t.window, "min_span": t.window})
    parts = [empty_events()]
    if metrics:
        # one sorted frame with every metric's window columns; each detector's rows are drawn from it
        marked = prepare(lf, metrics)
        for depth in range(DEPTH):
            exprs = [e for metric in metrics
                     for e in _plateau_stages(metric, p)[depth] + _transition_stages(metric, t, flat)[depth]]
            marked = marked.with_columns(_unique_by_name(exprs))
        for metric in metrics:
            parts.append(_plateau_rows(marked, metric, p))
            parts.append(_transition_rows(marked, metric, t, flat))
    for pair in pairs:
        parts.append(grokking_events(grokking(lf, pair, rule=g, directions=directions)))
    return pl.concat(parts).sort([*KEYS, "epoch", "event", "metric"])


def _unique_by_name(exprs: Sequence[pl.Expr]) -> list[pl.Expr]:
    seen, out = set(), []
    for e in exprs:
        name = e.meta.output_name()
        if name not in seen:
            seen.add(name)
            out.append(e)
    return out


def collect_all_events(lf: pl.LazyFrame, *, pairs: Sequence[str] | None = None, engine: str = "in-memory",
                       extra: Sequence[pl.LazyFrame] = (), **options: Any) -> tuple[pl.DataFrame, ...]:
    """Collect, in one pass, the grokking table of every pair and every event row (plus `extra` queries):
    returns (table, events, *extra). The grokking tables are computed once and their events derived from them.
    `options` go to `events` (metrics, plateau, transition, grokking_rule, directions). This is an edge: it
    collects. The in-memory engine takes about half the CPU of the streaming one for these window queries."""
    schema = dict(lf.collect_schema())
    pairs = list(pairs) if pairs is not None else M.classifiable_pairs(schema, options.get("directions"))
    for pair in pairs:
        _check_pair(schema, pair)
    rule, directions = options.get("grokking_rule"), options.get("directions")
    metrics = options.get("metrics")
    metrics = list(metrics) if metrics is not None else M.metric_columns(schema, directions)
    options["metrics"] = metrics
    columns = list(dict.fromkeys([*metrics, *[M.TRAIN + p for p in pairs], *[M.HELDOUT + p for p in pairs]]))
    # collected once: collect_all does not share a common sub-plan between queries (measured: the sort ran
    # twice, 2.4 s instead of 1.9-2.0 s of CPU for 1M rows); the detectors take the prepared frame as it is
    lf = prepare(lf, columns).collect(engine=engine).lazy()
    tables = [grokking(lf, p, rule=rule, directions=directions) for p in pairs]
    table_q = pl.concat(tables) if tables else grokking_schema_frame()
    table, ev, *rest = pl.collect_all([table_q, events(lf, pairs=[], **options), *extra], engine=engine)
    ev = (pl.concat([ev, grokking_events(table.lazy()).collect()]) if table.height else ev)
    return (table, ev.sort([*KEYS, "epoch", "event", "metric"]), *rest)


def grokking_schema_frame() -> pl.LazyFrame:
    """An empty grokking table (no pair in the data)."""
    return pl.LazyFrame(schema={"study": pl.String, "trial_id": pl.String, "pair": pl.String, "class": pl.String,
                                "t_mem": pl.Int64, "t_gen": pl.Int64, "delay": pl.Int64, "ungrokked": pl.Boolean,
                                "t_ungrok": pl.Int64, "n_epochs": pl.UInt32, "last_epoch": pl.Int64,
                                "train_final": pl.Float64, "heldout_final": pl.Float64, "heldout_best": pl.Float64,
                                "train_at_mem": pl.Float64, "heldout_at_mem": pl.Float64,
                                "heldout_at_gen": pl.Float64, "rule": pl.String, "params": pl.String})


def auto_window(lf: pl.LazyFrame, *, fraction: float = 0.05, minimum: int = 5, maximum: int = 200) -> int:
    """A window of `fraction` of the median trial length, clamped to [minimum, maximum]. This collects a
    one-number aggregate, so CLIs use it; library callers who need to stay lazy pass a window."""
    n = lf.group_by(KEYS).agg(pl.len().alias("n")).select(pl.col("n").median()).collect().item()
    return int(min(maximum, max(minimum, round((n or 0) * fraction))))
