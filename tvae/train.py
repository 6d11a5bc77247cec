"""``python -m tvae.train``: train the TernaryVAE and write epochs.parquet, final.json, config.yaml, checkpoints/.

    python -m tvae.train --preset v5_12_4 --epochs 100 --seed 0 --out runs/s0
    python -m tvae.train --out runs/s0 --resume --epochs 150      # continue (and extend) a run
    python -m tvae.train --preset v5_12_4 --epochs 100 --seed 0 --out runs/s0 --resume   # the same command, resumed

With --resume the configuration comes from the checkpoint. --preset, --config, --set and --seed may be given
again: each must match the checkpoint, and one that differs is refused naming the key and both values.
--epochs sets the new total (it may grow); --device, --threads, --compile and --checkpoint-every are free.

Exit codes: 0 done, 2 bad input (unknown key, wrong type, missing/corrupt file), 3 training diverged.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tvae.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="v5_12_4 (default), v5_12_4_extended or tiny")
    p.add_argument("--config", default=None, help="YAML file with (some) config keys, applied on the preset")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one dotted config key, e.g. --set loss.rank.weight=0.3 (repeatable)")
    p.add_argument("--epochs", type=int, default=None, help="total epochs (with --resume: the new total)")
    p.add_argument("--seed", type=int, default=None, help="trial seed (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, the fastest here)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each step's loss (GPU: 0.043 instead of 0.069 s/epoch on an H200 after "
                        "10-18 s of compiling per phase; no gain on a CPU)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints (and the last)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch line")
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="train a cohort (tvae.cohort), one member per seed (and per --vary combination)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="cohort members take each of these values (repeatable; members are the combinations)")
    p.add_argument("--cohort-steps", choices=["eager", "graph"], default=None,
                   help="a cohort's steps eagerly or in graph form (default: the device's; docs/cohorts.md)")
    return p


def check_resume_matches(stored: Any, args: argparse.Namespace, out: Path) -> None:
    """Refuse ``--resume`` when --preset/--config/--set/--seed give a value the checkpoint's config does not have
    (``epochs`` excepted: it may grow). Names every differing key with both values."""
    import copy

    from tvae import config as config_mod
    from tvae.configlib import flatten

    probe = copy.deepcopy(stored)
    if args.preset is not None:
        config_mod.set_key(probe, "preset", args.preset)
    if args.config is not None:
        probe = config_mod.load_yaml(args.config, base=probe)
    for key, value in config_mod.parse_assignments(args.sets).items():
        config_mod.set_key(probe, key, value)
    if args.seed is not None:
        config_mod.set_key(probe, "seed", args.seed)
    have, given = flatten(stored), flatten(probe)
    differing = [f"{key}: the checkpoint has {have[key]!r}, the command gives {given[key]!r}"
                 for key in have if key != "epochs" and have[key] != given[key]]
    if differing:
        raise config_mod.ConfigError(f"--resume: the command differs from the run in {out}: " + "; ".join(differing)
                                     + ". Resume without these options, or start a new run with another --out.")


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tvae.checkpoint import atomic_write_bytes

    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({"tvae_study.schema_version": str(SCHEMA_VERSION)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _read_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if not path.exists():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _line(row: dict[str, Any]) -> str:
    keys = [("train_coverage", "cov"), ("train_hierarchy_B", "hB"), ("train_Q", "Q"), ("heldout_Q", "hQ"),
            ("train_richness_B", "rich"), ("loss", "loss")]
    parts = [f"{short}={row[k]:.4f}" for k, short in keys if k in row]
    return f"epoch {row['epoch']:4d} {row['phase']:<9s} " + " ".join(parts) + f" ({row['epoch_seconds']:.2f}s)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.seeds or args.vary or (args.resume and (Path(args.out) / "members.json").exists()):
        from tvae.cohort import cli

        return cli.main(args)
    if args.cohort_steps is not None:
        print("error: --cohort-steps is for a cohort (--seeds or --vary)", file=sys.stderr)
        return 2
    from tvae import checkpoint, config as config_mod, trainer
    from tvae.tasks import DivergedError

    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    try:
        if args.resume:
            run = trainer.load_run(ckpt_dir, device=args.device, epochs=args.epochs, compile=args.compile)
            check_resume_matches(run.cfg, args, out)
            rows = [r for r in _read_rows(out / "epochs.parquet") if r["epoch"] < run.epoch]
        else:
            if (ckpt_dir / trainer.CHECKPOINT_FILE).exists() or (out / "epochs.parquet").exists():
                raise config_mod.ConfigError(f"{out} already holds a run; use --resume or another --out")
            overrides = config_mod.parse_assignments(args.sets)
            cfg = config_mod.build(args.preset or "v5_12_4", config_file=args.config, overrides=overrides,
                                   epochs=args.epochs, seed=args.seed)
            run = trainer.run_from_config(cfg, args.device, compile=args.compile)
            rows = []
    except (config_mod.ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_text(out / "config.yaml", config_mod.dump_yaml(run.cfg))
    status = 0
    try:
        while run.epoch < run.epochs:
            row = run.train_epoch()
            rows.append(row)
            _write_parquet(out / "epochs.parquet", rows)
            if not args.quiet:
                print(_line(row), flush=True)
            if run.epoch % max(1, args.checkpoint_every) == 0 or run.epoch == run.epochs:
                run.save(ckpt_dir)
    except DivergedError as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        status = 3
    except KeyboardInterrupt:   # the interrupted epoch is incomplete: the last checkpoint stands
        print(f"interrupted during epoch {run.epoch}; continue from the last checkpoint with: "
              f"python -m tvae.train --out {out} --resume", file=sys.stderr)
        return 130
    summary = run.summary()
    summary["status"] = "diverged" if status == 3 else "completed"
    checkpoint.atomic_write_text(out / "final.json", json.dumps(_json_safe(summary), indent=2, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
