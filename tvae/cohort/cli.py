"""``python -m tvae.train --seeds 0,1,2,3 [--vary KEY=V1,V2,...] --out DIR``: one cohort, a directory per member.

The members are every combination of the seeds and the ``--vary`` values (the last ``--vary`` changes fastest).
Each member's directory ``DIR/mNNN`` holds what a single run writes (``epochs.parquet``, ``final.json``,
``config.yaml``, ``checkpoints/``); ``DIR/members.json`` lists index, directory, seed and overrides. ``--resume``
continues every member from its own last checkpoint; ``--epochs`` may grow.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

MEMBER_CHECKPOINT = "cohort_member.pt"


def member_specs(seeds: list[int], varies: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of seed and varied values, in order: [{"seed": s, "overrides": {...}}, ...]."""
    keys = [k for k, _ in varies]
    out = []
    for seed in seeds:
        for values in itertools.product(*[vals for _, vals in varies]):
            out.append({"seed": seed, "overrides": dict(zip(keys, values))})
    return out


def parse_vary(text: str) -> tuple[str, list[Any]]:
    from tvae import config as config_mod

    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise config_mod.ConfigError(f"--vary {text!r}: expected KEY=V1,V2,...")
    return key.strip(), [config_mod.parse_value(v.strip()) for v in values.split(",")]


def check_resume_matches(args, members: list[dict[str, Any]], configs: list, out: Path) -> None:
    """``--resume`` with the options that started the cohort: each member's configuration must match what they
    give it (the rule of a single run's resume, `tvae.train.check_resume_matches`, member by member); the
    members themselves (``--seeds``, ``--vary``) must be the same."""
    import argparse

    from tvae import config as config_mod
    from tvae.train import check_resume_matches as check_member

    if args.seeds or args.vary:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed or 0]
        specs = member_specs(seeds, [parse_vary(v) for v in args.vary])
        listed = [{"seed": m["seed"], "overrides": m["overrides"]} for m in members]
        if specs != listed:
            raise config_mod.ConfigError(f"--resume: --seeds/--vary give other members than the cohort in {out} "
                                         f"({len(specs)} against {len(listed)}; see {out / 'members.json'})")
    for m, cfg in zip(members, configs):
        member_args = argparse.Namespace(**vars(args))
        member_args.seed = m["seed"] if (args.seeds or args.seed is not None) else None
        member_args.sets = list(args.sets) + ([f"{k}={json.dumps(v)}" for k, v in m["overrides"].items()]
                                              if args.vary else [])
        check_member(cfg, member_args, out / m["directory"])


def main(args) -> int:
    from tvae import checkpoint, config as config_mod
    from tvae.cohort import Cohort, Status
    from tvae.train import _json_safe, _line, _read_rows, _write_parquet

    out = Path(args.out)
    listing = out / "members.json"
    steps = {} if args.cohort_steps is None else {"graph_steps": args.cohort_steps == "graph"}
    try:
        if args.resume:
            members = json.loads(listing.read_text())
            states = [checkpoint.load(out / m["directory"] / "checkpoints" / MEMBER_CHECKPOINT) for m in members]
            cohort = Cohort.from_member_states(states, args.device, [args.epochs] * len(states), **steps)
            check_resume_matches(args, members, [m.cfg for m in cohort.members], out)
            rows = [[r for r in _read_rows(out / m["directory"] / "epochs.parquet") if r["epoch"] < cohort.members[i].epoch]
                    for i, m in enumerate(members)]
        else:
            if listing.exists():
                raise config_mod.ConfigError(f"{out} already holds a cohort; use --resume or another --out")
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed or 0]
            specs = member_specs(seeds, [parse_vary(v) for v in args.vary])
            base = dict(config_mod.parse_assignment(s) for s in args.sets)
            configs = [config_mod.build(args.preset or "v5_12_4", config_file=args.config,
                                        overrides=base | spec["overrides"], epochs=args.epochs, seed=spec["seed"])
                       for spec in specs]
            cohort = Cohort(configs, args.device, **steps)
            members = [{"index": i, "directory": f"m{i:03d}", "seed": spec["seed"], "overrides": spec["overrides"]}
                       for i, spec in enumerate(specs)]
            out.mkdir(parents=True, exist_ok=True)
            checkpoint.atomic_write_text(listing, json.dumps(members, indent=2))
            rows = [[] for _ in members]
    except (config_mod.ConfigError, FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    dirs = [out / m["directory"] for m in members]
    for d, m in zip(dirs, cohort.members):
        d.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(d / "config.yaml", config_mod.dump_yaml(m.cfg))

    def finish(k: int) -> None:
        summary = cohort.summary(k)
        summary["status"] = {Status.DIVERGED: "diverged"}.get(cohort.members[k].status, "completed")
        checkpoint.atomic_write_text(dirs[k] / "final.json", json.dumps(_json_safe(summary), indent=2, sort_keys=True))

    try:
        while cohort.active:
            was_active = cohort.active
            epoch_rows = cohort.train_epoch()
            for k in was_active:
                m = cohort.members[k]
                if k in epoch_rows:
                    rows[k].append(epoch_rows[k])
                    _write_parquet(dirs[k] / "epochs.parquet", rows[k])
                    if not args.quiet:
                        print(f"{members[k]['directory']} " + _line(epoch_rows[k]), flush=True)
                    if m.epoch % max(1, args.checkpoint_every) == 0 or not m.active:
                        checkpoint.save(dirs[k] / "checkpoints" / MEMBER_CHECKPOINT, cohort.member_state(k))
                else:
                    print(f"{members[k]['directory']} diverged: {m.error}", file=sys.stderr)
                if not m.active:
                    finish(k)
    except KeyboardInterrupt:
        print(f"interrupted; continue from the last checkpoints with: python -m tvae.train --out {out} --resume",
              file=sys.stderr)
        return 130
    return 3 if any(m.status == Status.DIVERGED for m in cohort.members) else 0
