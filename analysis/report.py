"""`python -m analysis.report STUDY_DIR [--compare OTHER_DIR …] [--out DIR]`: a study's report.

Writes into DIR (default STUDY_DIR/report):
  report.html     self-contained page (PNG figures embedded as data URIs): summary per study, trial classes,
                  learning curves of the best and most interesting trials, event timeline, phase diagram of
                  classes over two parameters, parameter importance, a table of trials, the rules used
  summary.md      the same facts as text
  events.parquet  every event row (schema: analysis.detect.EVENT_SCHEMA)
  classes.parquet the grokking table of every pair (one row per trial and pair)

Works on a study that is still running (it reads whatever whole files exist) and on any dataset in the
epoch-row schema (without `trials.parquet` there are no parameters: the phase diagram and importance are
skipped, with a note). Outputs are written to temporary names and renamed, so a failed run leaves the previous
report intact.

Three stages, each with one job:
  compute(options) -> ReportData     reads the data and returns frames and notes (writes nothing, draws nothing)
  draw(data) -> Figures              the PNG figures of those frames (`analysis.figures`)
  render_html / render_summary       the page and the Markdown from frames and figures; `write` stores them
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from analysis import figures
from analysis import metrics as M
from analysis import trials as T
from analysis.detect import EVENT_SCHEMA, KEYS, auto_window, collect_all_events, resolve_grokking_rule
from analysis.rules import DETECTOR_VERSION, GrokkingRule, PlateauRule, TransitionRule
from analysis.scan import ScanError, scan

MAX_TABLE_ROWS = 500
MAX_TIMELINE_TRIALS = 30
MAX_POINTS_PER_CURVE = 1500
HEADLINE = ("train_coverage", "train_hierarchy_B", "train_Q", "train_dist_corr", "loss")


@dataclass(frozen=True)
class ReportOptions:
    studies: tuple[Path, ...]
    out: Path
    pairs: tuple[str, ...] = ()          # default: every pair in the data
    metric: str | None = None            # the metric that ranks trials; default: study.json's, else heldout_<pair>
    mode: str | None = None              # max|min; default: a --direction for the metric, study.json's, the table
    params: tuple[str, str] | None = None  # the phase diagram's axes (names with or without `param_`)
    top: int = 4                         # best trials and interesting trials per study in the curves
    window: int | None = None            # plateau/transition window; default auto_window
    title: str | None = None
    directions: tuple[tuple[str, str], ...] = ()  # (metric, "max"|"min") overrides of the metric table


@dataclass
class ReportData:
    options: ReportOptions
    names: list[str]
    dirs: list[Path]
    study_info: list[dict[str, Any]]
    metric: str | None
    mode: str | None
    pairs: list[str]
    window: int
    rules: dict[str, Any]
    table: pl.DataFrame                  # grokking rows, all pairs
    events: pl.DataFrame
    trial_summary: pl.DataFrame          # one row per trial: status, params, best metric, classes …
    selected: pl.DataFrame               # study, trial_id, label, why
    notes: list[str] = field(default_factory=list)
    # what the figures show, as frames
    curve_metrics: list[str] = field(default_factory=list)
    curves: pl.DataFrame | None = None   # label, epoch, curve metrics of the selected trials (thinned)
    curve_marks: pl.DataFrame | None = None   # memorized/generalized events of the selected trials
    timeline_labels: list[str] = field(default_factory=list)
    timeline_events: pl.DataFrame | None = None
    timeline_last: dict[str, int] = field(default_factory=dict)
    importance: pl.DataFrame | None = None    # param, target, score
    phase: pl.DataFrame | None = None         # the classified trials of the phase diagram
    phase_axes: tuple[str, str] | None = None


Figures = dict[str, bytes]   # figure name (curves, timeline, classes, importance, phase) -> PNG


# ------------------------------------------------------------------------------------------------ computing

def _ranking_metric(options: ReportOptions, infos: list[dict], schema: dict,
                    pairs: list[str]) -> tuple[str | None, str | None]:
    metric = options.metric or next((i.get("metric") for i in infos if i.get("metric") in schema), None)
    if metric is None:
        metric = next((M.HELDOUT + p for p in pairs), None) or next(iter(M.metric_columns(schema)), None)
    if metric is not None and metric not in schema:
        raise ValueError(f"--metric {metric!r} is not a column of the data")
    # an explicit --mode, then a --direction given for this metric, then the study's own, then the metric table
    mode = (options.mode or dict(options.directions).get(metric)
            or next((i.get("mode") for i in infos if i.get("metric") == metric and i.get("mode")), None))
    if metric is not None and mode is None:
        mode = M.direction(metric) or "max"
    return metric, mode


def _importance(summary: pl.DataFrame, params: list[str], targets: dict[str, str]) -> pl.DataFrame:
    """|Spearman ρ| of numeric parameters, correlation ratio η of the others, with each target column."""
    rows = []
    for target_name, target in targets.items():
        for p in params:
            df = summary.select(p, target).drop_nulls()
            if df.height < 3 or df[p].n_unique() < 2 or df[target].n_unique() < 2:
                continue
            if df[p].dtype.is_numeric():
                score = df.select(pl.corr(p, target, method="spearman")).item()
            else:
                grand = df[target].mean()
                between = df.group_by(p).agg(pl.len(), pl.col(target).mean().alias("m")).select(
                    (pl.col("len") * (pl.col("m") - grand) ** 2).sum()).item()
                total = ((df[target] - grand) ** 2).sum()
                score = (between / total) ** 0.5 if total > 0 else None
            if score is not None and score == score:
                rows.append({"param": p.removeprefix(T.PARAM_PREFIX), "target": target_name,
                             "score": abs(float(score))})
    return pl.DataFrame(rows, schema={"param": pl.String, "target": pl.String, "score": pl.Float64})


def compute(options: ReportOptions) -> ReportData:
    for d in options.studies:
        if not d.is_dir():
            raise ScanError(f"{d}: not a directory (expected a study directory)")
    # the study name of a directory is the `study` value of its rows (study.json's or the folder's name when
    # it has none yet); a directory holding several studies contributes each of them
    names, dirs, infos = [], [], []
    for d in options.studies:
        found = (scan(d, allow_empty=True).select(pl.col("study").unique().sort()).collect()["study"].to_list()
                 or [T.study_name(d)])
        for name in found:
            names.append(name)
            dirs.append(d)
            infos.append(T.study_json(d))
    lf = scan(list(options.studies), allow_empty=True)
    schema = dict(lf.collect_schema())
    pairs = list(options.pairs) or M.classifiable_pairs(schema, dict(options.directions) or None)
    for p in pairs:
        if M.TRAIN + p not in schema or M.HELDOUT + p not in schema:
            raise ValueError(f"--pair {p!r}: the data has no {M.TRAIN + p}/{M.HELDOUT + p}; pairs: "
                             f"{', '.join(M.pairs(schema)) or 'none'}")
    directions = dict(options.directions) or None
    grule = GrokkingRule()
    # resolved once per pair: fails early, before any work, on a pair without a direction
    resolved = {p: resolve_grokking_rule(p, grule, directions) for p in pairs}
    metric, mode = _ranking_metric(options, infos, schema, pairs)
    n_rows = lf.select(pl.len()).collect().item()
    window = options.window or (auto_window(lf) if n_rows else 20)
    prule = PlateauRule(window=window, min_span=max(window, round(1.5 * window)))
    trule = TransitionRule(window=window)
    notes = []
    if n_rows == 0:
        notes.append("No epoch rows yet: the study has not written any epoch file.")

    # one collect for everything detected, at the edge
    per_trial = [pl.len().alias("n_epochs"), pl.col("epoch").max().alias("last_epoch")]
    if metric is not None:
        best = pl.col(metric).max() if mode == "max" else pl.col(metric).min()
        per_trial += [best.alias(f"best_{metric}"), pl.col(metric).drop_nulls().last().alias(f"last_{metric}")]
    table, events, summary = collect_all_events(lf, pairs=pairs, plateau=prule, transition=trule,
                                                grokking_rule=grule, directions=directions,
                                                extra=[lf.group_by(KEYS).agg(per_trial)])
    if not pairs:
        notes.append("No train_<m>/heldout_<m> pair in the data: no grokking classification (runs without a "
                     "held-out split get plateaus and transitions only).")

    # trials.parquet: status and parameters
    # trials.parquet has no study column: it belongs to its directory's (first) study
    first_name = {d: n for n, d in reversed(list(zip(names, dirs)))}
    tables = [t for t in (T.trials(d, first_name[d]) for d in options.studies) if t is not None]
    if tables:
        tr = pl.concat(tables, how="diagonal_relaxed")
        keep = ["study", "trial_id", *[c for c in ("status", "attempts") if c in tr.columns], *T.param_columns(tr)]
        summary = summary.join(tr.select(keep), on=KEYS, how="full", coalesce=True)
    else:
        notes.append("No trials.parquet: parameters are unknown, so there is no phase diagram or importance.")
    if "status" not in summary.columns:
        summary = summary.with_columns(pl.lit(None, pl.String).alias("status"))
    if table.height:
        main = pairs[0]
        classes = table.filter(pl.col("pair") == main).select(
            *KEYS, "class", "t_mem", "t_gen", "delay", "ungrokked")
        summary = summary.join(classes, on=KEYS, how="left")
        for p in pairs[1:]:
            summary = summary.join(table.filter(pl.col("pair") == p).select(
                *KEYS, pl.col("class").alias(f"class_{p}")), on=KEYS, how="left")
    summary = summary.sort(KEYS)
    if "status" in summary.columns and summary["status"].is_in(["RUNNING", "PENDING"]).any():
        notes.append("Some trials are still running: their classes are provisional (a memorising trial may "
                     "still generalise).")

    selected = _select_trials(summary, events, metric, mode, options.top, multi=len(names) > 1)
    data = ReportData(options=options, names=names, dirs=dirs, study_info=infos, metric=metric, mode=mode, pairs=pairs,
                      window=window, rules={"plateau": json.loads(prule.to_json()),
                                            "transition": json.loads(trule.to_json()),
                                            **{f"grokking[{p}]": json.loads(filled.to_json(direction=direction))
                                               for p, (direction, filled) in resolved.items()}},
                      table=table, events=events, trial_summary=summary, selected=selected, notes=notes)
    _figure_frames(data, lf)
    return data


def _label(study: pl.Expr, trial: pl.Expr, multi: bool) -> pl.Expr:
    return pl.concat_str(study, pl.lit("/"), trial) if multi else trial


def _select_trials(summary: pl.DataFrame, events: pl.DataFrame, metric: str | None, mode: str | None,
                   top: int, *, multi: bool) -> pl.DataFrame:
    """The best `top` trials of each study by `metric`, then the most interesting: grokking trials with the
    longest delay, ungrokked trials, and the largest plateau jumps."""
    picks: list[pl.DataFrame] = []
    if metric is not None and f"best_{metric}" in summary.columns:
        picks.append(summary.filter(pl.col(f"best_{metric}").is_not_null())
                     .sort(f"best_{metric}", descending=mode == "max", nulls_last=True)
                     .group_by("study", maintain_order=True).head(top)
                     .select(*KEYS, pl.lit(f"best {metric}").alias("why")))
    if "class" in summary.columns:
        picks.append(summary.filter(pl.col("class") == "grokking").sort("delay", descending=True)
                     .group_by("study", maintain_order=True).head(top)
                     .select(*KEYS, pl.lit("grokking, longest delay").alias("why")))
        picks.append(summary.filter(pl.col("ungrokked").fill_null(False))
                     .group_by("study", maintain_order=True).head(max(1, top // 2))
                     .select(*KEYS, pl.lit("ungrokked").alias("why")))
        for cls in ("memorization", "comprehension", "confusion"):  # one example of each other class
            picks.append(summary.filter(pl.col("class") == cls).group_by("study", maintain_order=True).head(1)
                         .select(*KEYS, pl.lit(f"example of {cls}").alias("why")))
    jumps = events.filter(pl.col("rule") == "transition.plateau_jump")
    if jumps.height:
        picks.append(jumps.with_columns(pl.col("magnitude").abs().alias("size")).sort("size", descending=True)
                     .unique(subset=KEYS, keep="first", maintain_order=True)
                     .group_by("study", maintain_order=True).head(max(1, top // 2))
                     .select(*KEYS, pl.lit("largest plateau jump").alias("why")))
    if not picks:
        return pl.DataFrame(schema={**{k: pl.String for k in KEYS}, "why": pl.String, "label": pl.String})
    chosen = (pl.concat(picks).group_by(KEYS, maintain_order=True).agg(pl.col("why").str.join("; "))
              .head(3 * top * max(1, summary["study"].n_unique())))
    return chosen.with_columns(_label(pl.col("study"), pl.col("trial_id"), multi).alias("label"))


def _figure_frames(data: ReportData, lf: pl.LazyFrame) -> None:
    """The frames the figures show (curves, timeline, importance, phase diagram), and their notes."""
    sel, summary, multi = data.selected, data.trial_summary, len(data.names) > 1
    curve_metrics = []
    for p in data.pairs[:2]:
        curve_metrics += [M.TRAIN + p, M.HELDOUT + p]
    if data.metric and data.metric not in curve_metrics:
        curve_metrics.append(data.metric)
    if len(curve_metrics) < 2:  # no pair: the TernaryVAE headline metrics that exist, else any metrics
        schema = dict(lf.collect_schema())
        extra = [m for m in HEADLINE if m in schema] or M.metric_columns(schema)
        curve_metrics += [m for m in extra if m not in curve_metrics][:4 - len(curve_metrics)]
    if sel.height:
        curves = (lf.join(sel.lazy().select(*KEYS, "label"), on=KEYS, how="semi")
                  .select(*KEYS, "epoch", *curve_metrics)
                  .join(sel.lazy().select(*KEYS, "label"), on=KEYS)
                  .unique(subset=[*KEYS, "epoch"], keep="any").sort(["label", "epoch"])
                  .collect(engine="in-memory"))
        longest = curves.group_by("label").len()["len"].max() or 0
        if longest > MAX_POINTS_PER_CURVE:
            step = -(-longest // MAX_POINTS_PER_CURVE)
            curves = curves.filter(pl.col("epoch") % step == 0)
        marks = (data.events.filter(pl.col("event").is_in(["memorized", "generalized"]))
                 .join(sel.select(*KEYS, "label"), on=KEYS))
        if curve_metrics:
            data.curve_metrics, data.curves, data.curve_marks = curve_metrics, curves, marks
    # timeline: the selected trials first, then the others, up to MAX_TIMELINE_TRIALS
    order_df = pl.concat([sel.select(*KEYS), summary.select(*KEYS)]).unique(keep="first", maintain_order=True)
    order_df = order_df.head(MAX_TIMELINE_TRIALS).with_columns(
        _label(pl.col("study"), pl.col("trial_id"), multi).alias("label"))
    if order_df.height:
        # the metrics of the curves, plus the grokking events of every pair
        ev = data.events.join(order_df, on=KEYS).filter(
            pl.col("metric").is_in(curve_metrics) | pl.col("metric").str.contains("/", literal=True))
        last = dict(summary.join(order_df, on=KEYS).select("label", "last_epoch").iter_rows())
        data.timeline_events, data.timeline_labels = ev, order_df["label"].to_list()
        data.timeline_last = {k: v or 0 for k, v in last.items()}
        if summary.height > MAX_TIMELINE_TRIALS:
            data.notes.append(f"The event timeline shows {MAX_TIMELINE_TRIALS} of {summary.height} trials "
                              f"(selected first); events.parquet has all.")
    params = [c for c in T.param_columns(summary) if summary[c].drop_nulls().n_unique() >= 2]
    if params:
        targets = {}
        if data.metric and f"best_{data.metric}" in summary.columns:
            targets[f"best {data.metric}"] = f"best_{data.metric}"
        if "t_gen" in summary.columns:
            summary = summary.with_columns(pl.col("t_gen").is_not_null().cast(pl.Float64).alias("_generalised"))
            targets["generalised (0/1)"] = "_generalised"
        scores = _importance(summary, params, targets)
        if scores.height:
            data.importance = scores
        axes = _phase_axes(data.options.params, params, scores, summary)
        if axes and "class" in summary.columns:
            data.phase, data.phase_axes = summary.filter(pl.col("class").is_not_null()), axes
            data.notes.append(f"Phase diagram axes: {axes[0].removeprefix('param_')} × "
                              f"{axes[1].removeprefix('param_')} (classes of pair {data.pairs[0]}).")
    elif T.param_columns(summary):
        data.notes.append("Fewer than two distinct values of every parameter: no phase diagram or importance.")


def draw(data: ReportData) -> Figures:
    """Every figure of the report, from the frames `compute` made (figures without data are left out)."""
    out: Figures = {}
    if data.curves is not None:
        out["curves"] = figures.learning_curves(data.curves, data.curve_metrics, data.curve_marks)
    if data.timeline_events is not None:
        out["timeline"] = figures.event_timeline(data.timeline_events, data.timeline_labels, data.timeline_last)
    if data.table.height:
        out["classes"] = figures.class_counts(data.table)
    if data.importance is not None:
        out["importance"] = figures.importance(data.importance)
    if data.phase is not None and data.phase_axes is not None:
        out["phase"] = figures.phase_diagram(data.phase, *data.phase_axes, hue_study=len(data.names) > 1)
    return out


def _phase_axes(requested: tuple[str, str] | None, params: list[str], scores: pl.DataFrame,
                summary: pl.DataFrame) -> tuple[str, str] | None:
    if requested:
        names = tuple(p if p.startswith(T.PARAM_PREFIX) else T.PARAM_PREFIX + p for p in requested)
        for n in names:
            if n not in summary.columns:
                known = ", ".join(c.removeprefix(T.PARAM_PREFIX) for c in T.param_columns(summary))
                raise ValueError(f"--params: no parameter {n.removeprefix(T.PARAM_PREFIX)!r}; parameters: {known}")
        return names  # type: ignore[return-value]
    ranked = (scores.group_by("param").agg(pl.col("score").max()).sort("score", descending=True)["param"]
              .to_list() if scores.height else [])
    ordered = [T.PARAM_PREFIX + p for p in ranked] + [p for p in params if p.removeprefix(T.PARAM_PREFIX)
                                                      not in ranked]
    return (ordered[0], ordered[1]) if len(ordered) >= 2 else None


# ------------------------------------------------------------------------------------------------ rendering

def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _per_study(data: ReportData) -> list[dict[str, Any]]:
    out = []
    s = data.trial_summary
    for name, d, info in zip(data.names, data.dirs, data.study_info):
        part = s.filter(pl.col("study") == name)
        row: dict[str, Any] = {"study": name, "directory": str(d), "space": info.get("arguments", {}).get("space")
                               if isinstance(info.get("arguments"), dict) else None,
                               "trials": part.height, "epoch rows": int(part["n_epochs"].sum() or 0)}
        if part["status"].drop_nulls().len():
            row["status"] = ", ".join(f"{k} {v}" for k, v in part.group_by("status").len().sort("status").iter_rows())
        for p in data.pairs:
            classes = data.table.filter((pl.col("study") == name) & (pl.col("pair") == p))
            row[f"classes ({p})"] = ", ".join(f"{k} {v}" for k, v in classes.group_by("class").len()
                                              .sort("class").iter_rows()) or "—"
            grok = classes.filter(pl.col("class") == "grokking")
            if grok.height:
                row[f"median delay ({p})"] = grok["delay"].median()
            row[f"ungrokked ({p})"] = int(classes["ungrokked"].sum() or 0)
        if data.metric and f"best_{data.metric}" in part.columns and part.height:
            best = part[f"best_{data.metric}"]
            value = best.max() if data.mode == "max" else best.min()
            row[f"best {data.metric}"] = value
        out.append(row)
    return out


def _trial_table(data: ReportData) -> pl.DataFrame:
    s = data.trial_summary
    cols = [c for c in ("study", "trial_id", "status", "class", *[f"class_{p}" for p in data.pairs[1:]], "t_mem",
                        "t_gen", "delay", "ungrokked", "n_epochs", f"best_{data.metric}") if c in s.columns]
    cols += T.param_columns(s)
    df = s.select(cols)
    if len(data.names) == 1:
        df = df.drop("study")
    if f"best_{data.metric}" in df.columns:
        df = df.sort(f"best_{data.metric}", descending=data.mode == "max", nulls_last=True)
    return df.rename({c: c.removeprefix(T.PARAM_PREFIX) for c in T.param_columns(s)})


def _html_table(df: pl.DataFrame, limit: int = MAX_TABLE_ROWS) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = []
    for row in df.head(limit).iter_rows():
        cells = []
        for c, v in zip(df.columns, row):
            cls = f' class="c-{html.escape(str(v))}"' if c.startswith("class") and v else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class=note>{df.height - limit} more rows not shown.</p>" if df.height > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _img(figs: Figures, key: str, alt: str) -> str:
    png = figs.get(key)
    if png is None:
        return f"<p class=note>No {html.escape(alt.lower())}: not enough data.</p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
     padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:.9em} .note{color:#555;font-size:.9em;background:#f6f6f6;padding:6px 10px;
     border-left:3px solid #bbb}
table{border-collapse:collapse;font-size:.85em;margin:8px 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;white-space:nowrap} th{background:#f2f2f2;position:sticky;top:0}
tbody tr:nth-child(even){background:#fafafa}
img{max-width:100%;height:auto;display:block;margin:8px 0}
td.c-grokking{background:#fbe3d0} td.c-comprehension{background:#dde6f4} td.c-memorization{background:#f3d6d7}
td.c-confusion{background:#e8e8e8}
pre{background:#f6f6f6;padding:8px;font-size:.8em;overflow-x:auto}
"""


def render_html(data: ReportData, figs: Figures) -> str:
    title = data.options.title or ("Study report: " + ", ".join(data.names))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    studies = pl.DataFrame(_per_study(data)) if data.names else pl.DataFrame()
    sel = data.selected.select("label", "why") if data.selected.height else None
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in data.notes)
    ev_counts = (data.events.group_by("event", "rule").len().sort("event", "rule")
                 if data.events.height else pl.DataFrame({"event": [], "rule": [], "len": []}))
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=meta>Generated {when} · detector {DETECTOR_VERSION} · window {data.window} epochs · ranking "
        f"metric {html.escape(str(data.metric))} ({html.escape(str(data.mode))}) · pairs "
        f"{html.escape(', '.join(data.pairs) or 'none')}</p>",
        notes,
        "<h2>Studies</h2>", _html_table(studies) if studies.height else "<p>None.</p>",
        "<h2>Trial classes</h2>",
        "<p>Liu et al. 2022's phases for each train/held-out pair: <b>comprehension</b> (both reached, small "
        "delay), <b>grokking</b> (held-out reached much later than train), <b>memorization</b> (train only), "
        "<b>confusion</b> (train never reached).</p>",
        _img(figs, "classes", "Class counts"),
        "<h2>Learning curves of the best and most interesting trials</h2>",
        "<p>Dotted lines: memorisation and generalisation epochs (t_mem, t_gen).</p>",
        _img(figs, "curves", "Learning curves"),
        _html_table(sel) if sel is not None else "",
        "<h2>Event timeline</h2>",
        "<p>Shaded bars: plateaus; markers: transitions and grokking events, for the metrics of the curves above "
        "(every event of every metric is in events.parquet).</p>",
        _img(figs, "timeline", "Event timeline"),
        "<h2>Phase diagram</h2>", _img(figs, "phase", "Phase diagram"),
        "<h2>Parameter importance</h2>",
        "<p>How strongly each parameter goes with the best value of the ranking metric and with generalising at "
        "all, across trials (|Spearman ρ|; correlation ratio η for categorical parameters). Correlation, not "
        "causation; few trials make it noisy.</p>",
        _img(figs, "importance", "Parameter importance"),
        "<h2>Trials</h2>", _html_table(_trial_table(data)),
        "<h2>Events by rule</h2>", _html_table(ev_counts),
        "<h2>Rules and parameters</h2>",
        f"<pre>{html.escape(json.dumps(data.rules, indent=2, sort_keys=True))}</pre>",
        "<p class=meta>Every event row in events.parquet carries its rule and parameters; see "
        "analysis/README.md for the definitions.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _md_table(df: pl.DataFrame, limit: int = 50) -> str:
    if not df.height:
        return "_none_\n"
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.head(limit).iter_rows():
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    if df.height > limit:
        lines.append(f"\n… {df.height - limit} more rows")
    return "\n".join(lines) + "\n"


def render_summary(data: ReportData) -> str:
    out = [f"# Study report: {', '.join(data.names)}\n",
           f"Detector `{DETECTOR_VERSION}`, window {data.window} epochs, ranking metric `{data.metric}` "
           f"({data.mode}), pairs: {', '.join(data.pairs) or 'none'}.\n"]
    out += [f"> {n}\n" for n in data.notes]
    out += ["## Studies\n", _md_table(pl.DataFrame(_per_study(data)))]
    grok = data.table.filter(pl.col("class") == "grokking") if data.table.height else data.table
    out += ["\n## Grokking trials (longest delay first)\n",
            _md_table(grok.sort("delay", descending=True).select("study", "trial_id", "pair", "t_mem", "t_gen",
                                                                 "delay", "ungrokked")) if grok.height else
            "_none_\n"]
    out += ["\n## Trials\n", _md_table(_trial_table(data), limit=100)]
    if data.events.height:
        out += ["\n## Events by rule\n", _md_table(data.events.group_by("event", "rule").len().sort("event", "rule"))]
    out += ["\n## Rules\n", "```json\n" + json.dumps(data.rules, indent=2, sort_keys=True) + "\n```\n"]
    return "\n".join(out)


def write(data: ReportData, figs: Figures, out: Path) -> list[Path]:
    """Render and write all outputs to temporary names, then rename each into place."""
    out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []

    def stage(name: str, writer) -> None:
        tmp = out / f".{name}.tmp-{os.getpid()}"
        writer(tmp)
        staged.append((tmp, out / name))

    try:
        stage("report.html", lambda p: p.write_text(render_html(data, figs), encoding="utf-8"))
        stage("summary.md", lambda p: p.write_text(render_summary(data), encoding="utf-8"))
        stage("events.parquet", lambda p: data.events.select(list(EVENT_SCHEMA)).write_parquet(p))
        stage("classes.parquet", lambda p: data.table.write_parquet(p))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]


# ------------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("study", metavar="STUDY_DIR", help="the study directory, a path or a study URI (or any "
                    "directory of epoch-row Parquet files)")
    ap.add_argument("--compare", nargs="+", default=[], metavar="OTHER_DIR",
                    help="more study directories to compare with")
    ap.add_argument("--out", type=Path, help="local output directory (default: STUDY_DIR/report; for a study URI, "
                    "the report is written to STUDY_URI/report/)")
    ap.add_argument("--pair", action="append", default=[], help="train_<m>/heldout_<m> pair to classify; "
                    "repeatable; default: every pair")
    ap.add_argument("--metric", help="metric that ranks trials (default: study.json's, else heldout_<pair>)")
    ap.add_argument("--mode", choices=["max", "min"], help="direction of --metric (default: study.json's or "
                    "the metric table's)")
    ap.add_argument("--params", nargs=2, metavar=("X", "Y"), help="phase diagram axes (parameter names); "
                    "default: the two most important")
    ap.add_argument("--top", type=int, default=4, help="best and interesting trials per study to draw (default 4)")
    ap.add_argument("--window", type=int, help="plateau/transition window (default: 5%% of the median trial "
                    "length)")
    ap.add_argument("--direction", action="append", default=[], metavar="METRIC=max|min",
                    help="override a metric's direction in the metric table; repeatable")
    ap.add_argument("--title")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        directions = tuple(M.parse_directions(args.direction).items())
        studies, upload_to = _local_studies((args.study, *args.compare), args.out is None)
    except (ValueError, OSError) as exc:
        print(f"analysis.report: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or (_remote_staging() if upload_to else studies[0] / "report")
    options = ReportOptions(studies=tuple(studies), out=out, pairs=tuple(args.pair),
                            metric=args.metric, mode=args.mode, params=tuple(args.params) if args.params else None,
                            top=args.top, window=args.window, title=args.title, directions=directions)
    try:
        data = compute(options)
        paths = write(data, draw(data), options.out)
    except (ScanError, T.StudyFileError, ValueError, pl.exceptions.PolarsError, OSError) as exc:
        print(f"analysis.report: error: {exc}", file=sys.stderr)
        return 2
    if upload_to is not None:
        try:
            paths = upload_to(out)
        except OSError as exc:
            print(f"analysis.report: error: writing the report to the study's store: {exc}", file=sys.stderr)
            return 2
    for p in paths:
        print(p)
    return 0


def _local_studies(given: Sequence[str], default_out: bool):
    """Local directories for the given studies (a study URI is copied to a private temporary directory) and,
    when the first one is a URI and no --out is given, the function that uploads the report next to it."""
    from study.layout import StudyLocation, is_uri
    from study.transfer import fetch_uri, upload_dir

    local, upload_to = [], None
    for i, text in enumerate(given):
        if not is_uri(text):
            local.append(Path(text))
            continue
        local.append(fetch_uri(text))
        if i == 0 and default_out:
            location = StudyLocation.from_study_dir(text)
            upload_to = lambda directory, location=location: upload_dir(directory, location, "report")
    return local, upload_to


def _remote_staging() -> Path:
    from study.transfer import cache_dir

    return cache_dir("tvae-report-") / "report"


if __name__ == "__main__":
    sys.exit(main())
