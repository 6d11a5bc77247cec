"""Seaborn figures for the report, each returned as PNG bytes (headless: the Agg backend).

Every function takes small, already-collected polars frames (the report selects what to draw) and never
reads files.
"""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
import seaborn as sns  # noqa: E402

CLASS_ORDER = ["comprehension", "grokking", "memorization", "confusion", "no_heldout"]
CLASS_COLORS = {"comprehension": "#4C72B0", "grokking": "#DD8452", "memorization": "#C44E52",
                "confusion": "#8C8C8C", "no_heldout": "#CCCCCC"}
EVENT_MARKERS = {"memorized": "o", "generalized": "*", "ungrokked": "X", "plateau_jump": "^",
                 "level_shift": "D", "slope_change": "v"}

sns.set_theme(style="whitegrid", context="notebook")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def learning_curves(curves: pl.DataFrame, metrics: list[str], marks: pl.DataFrame | None = None) -> bytes:
    """One panel per metric; one line per trial (`label` column). `marks` (label, metric, epoch, event):
    dotted vertical lines at t_mem / t_gen in the panels of the pair's metrics."""
    metrics = [m for m in metrics if m in curves.columns][:6]
    n = len(metrics)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.4 * rows), squeeze=False)
    labels = curves["label"].unique(maintain_order=True).to_list()
    palette = dict(zip(labels, sns.color_palette("tab10", len(labels))))
    long = curves.unpivot(index=["label", "epoch"], on=metrics, variable_name="metric").drop_nulls("value")
    for ax, metric in zip(axes.flat, metrics):
        part = long.filter(pl.col("metric") == metric).to_pandas()
        sns.lineplot(data=part, x="epoch", y="value", hue="label", palette=palette, ax=ax, linewidth=1.3,
                     legend=False, estimator=None, errorbar=None)
        if metric.endswith("loss") and (part["value"] > 0).all() and part["value"].max() / max(
                part["value"].min(), 1e-300) > 100:
            ax.set_yscale("log")
        ax.set_title(metric)
        ax.set_ylabel("")
        if marks is not None and marks.height:
            for row in marks.filter(pl.col("metric").str.contains(metric, literal=True)).iter_rows(named=True):
                if row["label"] in palette:
                    ax.axvline(row["epoch"], color=palette[row["label"]], linestyle=":", linewidth=1)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=palette[label], label=label) for label in labels]
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9,
               title="trial")
    return _png(fig)


def event_timeline(events: pl.DataFrame, order: list[str], last_epoch: dict[str, int]) -> bytes:
    """Rows = trials (`label`, in `order`), x = epoch. Shaded bars: plateaus; markers: transitions and grokking
    events; a thin line spans each trial's epochs. The caller chooses which metrics' events to pass."""
    height = max(2.5, 0.42 * len(order) + 1.2)
    fig, ax = plt.subplots(figsize=(12, height))
    y = {label: i for i, label in enumerate(order)}
    for label, i in y.items():
        ax.hlines(i, 0, last_epoch.get(label, 0), color="#bbbbbb", linewidth=0.8, zorder=1)
    pla = events.filter(pl.col("event") == "plateau")
    for row in pla.iter_rows(named=True):
        if row["label"] in y:
            ax.hlines(y[row["label"]], row["epoch"], row["epoch_end"], color="#8da0cb", linewidth=6, alpha=0.35,
                      zorder=2)
    points = (events.filter(pl.col("event").is_in(["transition", "memorized", "generalized", "ungrokked"]))
              .with_columns(pl.when(pl.col("event") == "transition")
                            .then(pl.col("rule").str.replace("transition.", "", literal=True))
                            .otherwise(pl.col("event")).alias("kind"))
              .filter(pl.col("label").is_in(list(y))))
    palette = dict(zip(EVENT_MARKERS, sns.color_palette("deep", len(EVENT_MARKERS))))
    for kind, marker in EVENT_MARKERS.items():
        part = points.filter(pl.col("kind") == kind)
        if part.height:
            ax.scatter(part["epoch"].to_list(), [y[label] for label in part["label"]], marker=marker,
                       s=160 if marker == "*" else 70,
                       color=palette[kind], label=kind, zorder=3, edgecolor="white", linewidth=0.5)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order, fontsize=8)
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_xlabel("epoch")
    ax.plot([], [], color="#8da0cb", linewidth=6, alpha=0.35, label="plateau")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def phase_diagram(table: pl.DataFrame, x: str, y: str, *, hue_study: bool = False) -> bytes:
    """Trial classes over two parameters (Liu et al. 2022's phase diagram): one point per trial."""
    df = table.filter(pl.col(x).is_not_null() & pl.col(y).is_not_null())
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    present = [c for c in CLASS_ORDER if c in set(df["class"].to_list())]
    style = "study" if hue_study and df["study"].n_unique() > 1 else None
    sns.scatterplot(data=df.to_pandas(), x=x, y=y, hue="class", hue_order=present, palette=CLASS_COLORS,
                    style=style, s=110, ax=ax, edgecolor="black", linewidth=0.4)
    for axis, col in (("x", x), ("y", y)):
        values = df[col]
        if values.dtype.is_numeric() and values.min() is not None and values.min() > 0 \
                and values.max() / values.min() >= 30:
            getattr(ax, f"set_{axis}scale")("log")
    ax.set_xlabel(x.removeprefix("param_"))
    ax.set_ylabel(y.removeprefix("param_"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.tight_layout()
    return _png(fig)


def importance(scores: pl.DataFrame) -> bytes:
    """Horizontal bars: `param` × `score` (|Spearman ρ| or η), one colour per `target`."""
    fig, ax = plt.subplots(figsize=(7.5, max(2.2, 0.45 * scores["param"].n_unique() * scores["target"].n_unique()
                                             + 1)))
    sns.barplot(data=scores.to_pandas(), y="param", x="score", hue="target", ax=ax, orient="h")
    ax.set_xlim(0, 1)
    ax.set_xlabel("|Spearman ρ| (numeric) or correlation ratio η (categorical)")
    ax.set_ylabel("")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def class_counts(table: pl.DataFrame) -> bytes:
    """Trials per class, per study and pair."""
    counts = table.group_by("study", "pair", "class").len().sort("study", "pair")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * counts["study"].n_unique() * counts["pair"].n_unique()), 3.4))
    counts = counts.with_columns(pl.concat_str("study", pl.lit(" · "), "pair").alias("study · pair"))
    present = [c for c in CLASS_ORDER if c in set(counts["class"].to_list())]
    sns.barplot(data=counts.to_pandas(), x="study · pair", y="len", hue="class", hue_order=present,
                palette=CLASS_COLORS, ax=ax)
    ax.set_ylabel("trials")
    ax.set_xlabel("")
    if counts["study · pair"].n_unique() > 2:
        ax.tick_params(axis="x", rotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.tight_layout()
    return _png(fig)
