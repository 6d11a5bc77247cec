"""analysis: read epoch rows (`scan`), detect plateaus, transitions and grokking (`analysis.detect`), report.

    import analysis
    lf = analysis.scan("results/my-study")                 # polars.LazyFrame, nothing read yet
    table = analysis.detect.grokking(lf, "acc").collect()  # one row per trial: class, t_mem, t_gen, delay, …
    events = analysis.detect.events(lf).collect()          # plateaus, transitions, grokking events

Never imports ray, torch or study; reads files only.
"""
from __future__ import annotations

import importlib

from analysis.scan import ScanError, scan

__all__ = ["scan", "ScanError", "detect", "metrics", "rules"]


def __getattr__(name: str):
    # Submodules load on first use: `import analysis` stays cheap.
    if name in ("detect", "frames", "metrics", "rules", "report", "synthetic", "trials"):
        return importlib.import_module(f"analysis.{name}")
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
