"""What a study directory says besides its epoch rows: `study.json` and `trials.parquet` (both optional, so a
dataset not written by `study` is analysed the same way). Files only; both are replaced atomically by
`study.run`, so reading them while a study runs sees a whole old or a whole new file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

PARAM_PREFIX = "param_"


class StudyFileError(ValueError):
    """A study file exists but cannot be read. The message names it."""


def study_json(directory: str | Path) -> dict[str, Any]:
    """The parsed `study.json`, or {} when the directory has none."""
    path = Path(directory) / "study.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise StudyFileError(f"{path}: expected a JSON object")
    return data


def study_name(directory: str | Path) -> str:
    return str(study_json(directory).get("study") or Path(directory).resolve().name)


def trials(directory: str | Path, study: str | None = None) -> pl.DataFrame | None:
    """`trials.parquet` with a `study` column (from `study.json`, else the directory name), or None."""
    path = Path(directory) / "trials.parquet"
    if not path.is_file():
        return None
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # a foreign or corrupt file
        raise StudyFileError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    if "trial_id" not in df.columns:
        raise StudyFileError(f"{path}: no trial_id column")
    return df.with_columns(pl.lit(study or study_name(directory)).alias("study"),
                           pl.col("trial_id").cast(pl.String))


def param_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(PARAM_PREFIX)]
