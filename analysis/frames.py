"""The frame every detector works on, and window helpers that stay inside a trial.

`prepare(lf, columns)` sorts the epoch rows by (study, trial_id, epoch), keeps one row per epoch (the highest
`attempt`), casts the metrics to Float64 (NaN → null) and adds the bookkeeping columns `_g` (integer trial id),
`_row` (global row), `_i` (row within the trial) and `_n` (rows of the trial). The helpers below compute a
rolling window or a shift over the whole sorted column and mask the rows whose window would leave the trial:
exact, and an order of magnitude faster than `.over(trial)` per expression.
"""
from __future__ import annotations

import math
from typing import Sequence

import polars as pl

from analysis import metrics as M

KEYS = ["study", "trial_id"]
G = "_g"            # integer trial id
PREPARED = "_row"   # present only in a prepared frame


def require(lf: pl.LazyFrame, columns: Sequence[str]) -> dict[str, pl.DataType]:
    schema = dict(lf.collect_schema())
    missing = [c for c in columns if c not in schema]
    if missing:
        numeric = [c for c, t in schema.items() if M.is_numeric_metric(c, t)]
        raise ValueError(f"column(s) {', '.join(missing)} not in the data; numeric metric columns: "
                         f"{', '.join(numeric) or 'none'}")
    return schema


def prepare(lf: pl.LazyFrame, columns: Sequence[str]) -> pl.LazyFrame:
    """Keys, epoch and the metrics as Float64 (NaN → null), sorted, one row per (study, trial_id, epoch) (of
    duplicates, the row of the highest `attempt` is kept), plus the trial bookkeeping the window helpers use:
    `_g` (integer trial id), `_row` (global row), `_i` (row within the trial), `_n` (rows of the trial)."""
    schema = require(lf, [*KEYS, "epoch", *columns])
    wrong = [f"{c} ({schema[c]})" for c in columns if not (schema[c].is_numeric() or schema[c] == pl.Boolean)]
    if wrong:
        raise ValueError(f"metric column(s) {', '.join(wrong)} are not numeric")
    if PREPARED in schema:  # already a `prepare`d frame: several detectors share its sort
        return lf
    order = [*KEYS, "epoch"]
    descending = [False, False, False]
    if "attempt" in schema:
        order.append("attempt")
        descending.append(True)
    same = pl.lit(True)
    for key in (*KEYS, "epoch"):
        same = same & (pl.col(key) == pl.col(key).shift(1))
    row = pl.col("_row")
    first_row = pl.when((pl.col(G) != pl.col(G).shift(1)).fill_null(True)).then(row).otherwise(None)
    return (lf.select(*order, *[pl.col(c).cast(pl.Float64).fill_nan(None) for c in columns if c not in order])
              .sort(order, descending=descending)
              .filter(~same.fill_null(False))
              .with_columns(pl.struct(KEYS).rle_id().alias(G), pl.int_range(pl.len()).alias("_row"))
              .with_columns((row - first_row.forward_fill()).alias("_i"),
                            pl.len().over(G).alias("_n")))


# Window helpers. The frame is sorted by trial, so a rolling window or shift over the whole column is exact for
# every row whose window lies inside its trial; the others are masked to null. This is an order of magnitude
# faster than `.over(trial)` per expression and gives the same values.
I, N = pl.col("_i"), pl.col("_n")


def back(e: pl.Expr, k: int) -> pl.Expr:
    """e at k rows earlier in the same trial."""
    return pl.when(I >= k).then(e.shift(k))


def ahead(e: pl.Expr, k: int) -> pl.Expr:
    """e at k rows later in the same trial."""
    return pl.when(I + k < N).then(e.shift(-k))


def rmean(e: pl.Expr, w: int) -> pl.Expr:
    """Mean of the w rows ending here (all in this trial)."""
    return pl.when(I >= w - 1).then(e.rolling_mean(w))


def diff(e: pl.Expr) -> pl.Expr:
    return pl.when(I >= 1).then(e.diff())


def noise(m: pl.Expr) -> pl.Expr:
    """Per-trial noise σ: median |first difference| / 0.6745 / √2 (robust to steps)."""
    return (diff(m).abs().median() / (0.6745 * math.sqrt(2))).fill_null(0.0).over(G)


def local_noise(m: pl.Expr, span: int) -> pl.Expr:
    """Noise σ near each epoch: the larger of the trial's σ and the one from the mean |first difference| over
    the `span` rows centred here (E|Δ| = 2σ/√π for Gaussian noise), so a noisy stretch of an otherwise clean
    curve is not mistaken for a change. Near a trial's ends only the trial's σ is used."""
    local = ahead(rmean(diff(m).abs(), span), span // 2) * (math.sqrt(math.pi) / 2)
    return pl.max_horizontal(local, noise(m))


def value_range(m: pl.Expr) -> pl.Expr:
    """Per-trial robust range R: 98th − 2nd percentile."""
    return (m.quantile(0.98) - m.quantile(0.02)).fill_null(0.0).over(G)
