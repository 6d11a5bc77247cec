"""``python -m study.status STUDY_DIR [--json]``: a study's progress from its stored results (also while it runs).

STUDY_DIR is ``RESULTS/STUDY`` (a path or a pyarrow URI)."""
from __future__ import annotations

import argparse
import json
import sys

from study.layout import StudyLocation
from study.progress import best_trial, read
from study.statuses import TERMINAL, UNRECORDED, TrialStatus

_ORDER = [s.value for s in TrialStatus] + [UNRECORDED]


def _short(params: dict, limit: int = 60) -> str:
    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", help="the study directory RESULTS/STUDY (path or URI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        location = StudyLocation.from_study_dir(args.study_dir)
        progress = read(location)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metric = progress.study.get("metric")
    best = best_trial(progress)
    rows_total = sum(t.epochs_on_disk for t in progress.trials)
    if args.json:
        print(json.dumps({
            "study": location.name, "requested": progress.requested, "epochs": progress.epochs,
            "counts": dict(progress.counts()), "rows": rows_total, "metric": metric,
            "best": None if best is None else {"trial_id": best.trial_id, "value": best.best,
                                               "params": best.params},
            "trials": [t.__dict__ for t in progress.trials]}, default=str))
        return 0
    arguments = progress.arguments
    print(f"study {location.name}  space {arguments['space']}  at {location.display}")
    tally = progress.counts()
    counts = ", ".join(f"{tally[s]} {s.lower()}" for s in _ORDER if tally.get(s)) or "no trials yet"
    ended = sum(n for s, n in tally.items() if s in TERMINAL)
    print(f"{len(progress.trials)}/{progress.requested} trials, {ended} ended ({counts}); {rows_total} epoch rows of "
          f"{progress.requested * progress.epochs} at most; optimising {metric} ({progress.study.get('mode')})")
    if best is not None:
        print(f"best so far: {best.trial_id}  {metric} = {best.best:.4g}  {_short(best.params, 200)}")
    print(f"\n{'trial':<14} {'status':<12} {'epochs':>9} {'tries':>5} {'best ' + str(metric):>16}  params")
    for t in sorted(progress.trials, key=lambda t: t.trial_id):
        best_text = f"{t.best:.4g}" if t.best is not None else "-"
        print(f"{t.trial_id:<14} {t.status:<12} {t.epochs_on_disk:>4}/{progress.epochs:<4} {t.attempts:>5} "
              f"{best_text:>16}  {_short(t.params)}" + (f"  [{t.reason}]" if t.reason else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
