"""`scan(...)`: one lazy frame over epoch rows from studies, Parquet files, directories or globs.

Accepted sources (one, or a list mixing them):
  - a study directory (it has an `epochs/` folder): its `epochs/**/*.parquet`;
  - any directory: every `*.parquet` below it;
  - one Parquet file;
  - a glob (`results/*/epochs/**/*.parquet`);
  - a pyarrow filesystem URI of a study, a directory or a file (`s3://bucket/prefix/STUDY?endpoint_override=…`):
    its Parquet files are copied whole into a private temporary directory (removed at exit) and scanned there.

The file list is fixed when `scan` is called. A study that is still running only ever shows whole files
(writers rename finished files into place), so files that appear later are simply not part of this scan;
hidden or temporary names (starting with `.` or `_`, or ending in `.tmp`) are skipped. The schema is the union
of the files' schemas (a column missing from a file reads as null), so trials with different metrics and
different studies can be scanned together. Nothing is collected: only Parquet footers are read here.
"""
from __future__ import annotations

import glob as globlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import polars as pl

from analysis.metrics import REQUIRED

PathLike = str | os.PathLike


class ScanError(ValueError):
    """A source is missing, corrupt or lacks a required column. The message names it."""


def _is_data_file(path: Path) -> bool:
    name = path.name
    return name.endswith(".parquet") and not name.startswith((".", "_")) and not name.endswith(".tmp")


def _files_under(directory: Path) -> list[Path]:
    root = directory / "epochs" if (directory / "epochs").is_dir() else directory
    return sorted(p for p in root.rglob("*.parquet") if _is_data_file(p) and p.is_file()
                  and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts[:-1]))


def resolve_files(source: PathLike | Sequence[PathLike]) -> list[Path]:
    """The Parquet files a source names, in a stable order, without duplicates."""
    sources: Iterable[PathLike] = [source] if isinstance(source, (str, os.PathLike)) else source
    files: list[Path] = []
    for src in sources:
        text = os.fspath(src)
        if "://" in text:   # an object store (s3://…, gs://…): scanned from a local copy of its Parquet files
            from study.transfer import fetch_uri

            try:
                text = str(fetch_uri(text))
            except (ValueError, OSError) as exc:
                raise ScanError(str(exc)) from exc
        path = Path(text)
        if path.is_dir():
            found = _files_under(path)
        elif path.is_file():
            if not text.endswith(".parquet"):
                raise ScanError(f"{text}: not a Parquet file (expected a name ending in .parquet)")
            found = [path]
        elif globlib.has_magic(text):
            found = sorted(Path(p) for p in globlib.glob(text, recursive=True)
                           if Path(p).is_file() and _is_data_file(Path(p)))
            if not found:
                raise ScanError(f"{text}: the glob matches no Parquet file")
        else:
            raise ScanError(f"{text}: no such file or directory")
        files.extend(found)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _union_schema(files: Sequence[Path]) -> dict[str, pl.DataType]:
    union: dict[str, pl.DataType] = {}
    for f in files:
        try:
            schema = pl.read_parquet_schema(f)
        except Exception as exc:  # polars raises several kinds for a torn or foreign file
            raise ScanError(f"{f}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
        _check_required_types(f, schema)
        for name, dtype in schema.items():
            if name not in union:
                union[name] = dtype
            elif union[name] != dtype:
                union[name] = _supertype(name, union[name], dtype, f)
    return union


def _check_required_types(where: Path, schema) -> None:
    checks = {"epoch": (lambda t: t.is_integer(), "an integer"),
              "study": (lambda t: t in (pl.String, pl.Categorical), "a string"),
              "trial_id": (lambda t: t in (pl.String, pl.Categorical) or t.is_integer(), "a string or an integer")}
    for name, (ok, expected) in checks.items():
        if name in schema and not ok(schema[name]):
            raise ScanError(f"{where}: column {name!r} is {schema[name]}, expected {expected}")


def _supertype(name: str, a: pl.DataType, b: pl.DataType, where: Path) -> pl.DataType:
    if a.is_numeric() and b.is_numeric():
        return pl.Float64 if (a.is_float() or b.is_float()) else pl.Int64
    if pl.Null in (a, b):
        return b if a == pl.Null else a
    raise ScanError(f"{where}: column {name!r} is {b} here but {a} in another file")


def _hive_trial_ids(files: Sequence[Path]) -> bool:
    return all(any(part.startswith("trial_id=") for part in f.parts[:-1]) for f in files)


def empty_frame(schema: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
    base = {"study": pl.String, "trial_id": pl.String, "epoch": pl.Int64}
    return pl.LazyFrame(schema={**base, **(schema or {})})


def scan(source: PathLike | Sequence[PathLike], *, allow_empty: bool = False) -> pl.LazyFrame:
    """A lazy frame of epoch rows with at least `study` (String), `trial_id` (String), `epoch` (Int64).

    Raises `ScanError` naming the source when a path does not exist, a file is not Parquet or a required
    column is missing everywhere; with `allow_empty=True` a source without any file gives an empty frame.
    """
    files = resolve_files(source)
    if not files:
        if allow_empty:
            return empty_frame()
        raise ScanError(f"{source}: no Parquet files found (no epoch rows written yet?)")
    union = _union_schema(files)
    hive = _hive_trial_ids(files)
    missing = [c for c in REQUIRED if c not in union and not (c == "trial_id" and hive)]
    if missing:
        raise ScanError(f"{source}: required column(s) {', '.join(missing)} not found in any file "
                        f"(required: {', '.join(REQUIRED)})")
    union["study"] = pl.String
    union["epoch"] = pl.Int64
    file_trial_id = union.pop("trial_id", None)
    kwargs = dict(hive_partitioning=True, hive_schema={"trial_id": pl.String}) if hive else {}
    if not hive:  # integer ids are read as such and turned into strings below
        union["trial_id"] = pl.Int64 if file_trial_id is not None and file_trial_id.is_integer() else pl.String
    lf = pl.scan_parquet(
        [str(f) for f in files], schema=union, missing_columns="insert",
        cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),
        glob=False, **kwargs,
    )
    lf = lf.with_columns(pl.col("trial_id").cast(pl.String))
    return lf.select([*REQUIRED, *[c for c in lf.collect_schema().names() if c not in REQUIRED]])
