"""``python -m search_spaces [NAME] [--json]``: list the search spaces with their defaults and parameters."""
from __future__ import annotations

import argparse
import json
import sys

import search_spaces
from search_spaces.describe import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search_spaces", description=__doc__)
    parser.add_argument("name", nargs="?", help="describe only this space")
    parser.add_argument("--json", action="store_true", help="print one JSON object per space")
    args = parser.parse_args(argv)
    try:
        chosen = [search_spaces.get(args.name)] if args.name else [search_spaces.get(n) for n in search_spaces.names()]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for space in chosen:
        info = describe(space)
        if args.json:
            print(json.dumps(info))
            continue
        print(f"{info['name']}  (task {info['task']}) — {info['description']}")
        print(f"  optimises {info['metric']} ({info['mode']}); default {info['trials']} trials × "
              f"{info['epochs']} epochs; scheduler {info['scheduler']}"
              + (f", grace {info['grace_period']} epochs" if info["grace_period"] else "")
              + (f", never stops once {info['memorised_when'][0]} ≥ {info['memorised_when'][1]}"
                 if info["memorised_when"] else ""))
        if info["fixed"]:
            print("  fixed: " + ", ".join(f"{k}={v}" for k, v in info["fixed"].items()))
        for name, text in info["parameters"].items():
            print(f"    {name:<22} {text}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
