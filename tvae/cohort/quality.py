"""``python -m tvae.cohort.quality DIR``: check every member of a ``tvae.train --seeds`` cohort against the
quality bar (final train coverage 1.0, hierarchy_B <= -0.81, Q >= 1.90). Prints a line per member; exit 1 if
any member misses it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BAR = {"train_coverage": (">=", 1.0), "train_hierarchy_B": ("<=", -0.81), "train_Q": (">=", 1.90)}


def meets(final: dict) -> list[str]:
    """The names of the bar's metrics that ``final`` misses (empty when it meets the bar)."""
    misses = []
    for key, (op, bound) in BAR.items():
        value = final.get(key)
        ok = value is not None and (value >= bound if op == ">=" else value <= bound)
        if not ok:
            misses.append(f"{key}={value} (needs {op} {bound})")
    return misses


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tvae.cohort.quality DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    try:
        members = json.loads((out / "members.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {out / 'members.json'}: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for m in members:
        final = json.loads((out / m["directory"] / "final.json").read_text())
        misses = meets(final)
        failed += bool(misses)
        print(f"{m['directory']} seed={m['seed']} epochs={final.get('epochs_completed')} "
              f"coverage={final.get('train_coverage')} hierarchy_B={final.get('train_hierarchy_B'):.4f} "
              f"Q={final.get('train_Q'):.4f} " + ("meets the bar" if not misses else "MISSES " + ", ".join(misses)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
