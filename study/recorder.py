"""Crash-consistent epoch rows: buffered rows become whole Parquet part files.

A trial's rows live in ``epochs/trial_id=<ID>/part-<first>-<last>.parquet`` (epochs zero-padded so names sort).
The trainable calls `write_part` at each checkpoint boundary *before* it registers that checkpoint, and
`truncate_parts(from_epoch=k)` when it starts from a checkpoint at epoch ``k`` (or from scratch, ``k = 0``):
parts written after the last registered checkpoint are removed and re-produced. Hence, after any crash and
resume, each (trial_id, epoch) is present exactly once. Nothing here imports Ray.
"""
from __future__ import annotations

import io
import re
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from study.layout import SCHEMA_VERSION, StudyLocation

PART_RE = re.compile(r"part-(\d+)-(\d+)\.parquet$")
_STRING_COLUMNS = ("study", "trial_id", "phase")
_INT_COLUMNS = ("epoch", "attempt")


def part_name(first: int, last: int) -> str:
    return f"part-{first:06d}-{last:06d}.parquet"


def parse_part(path: str) -> tuple[int, int] | None:
    match = PART_RE.search(path)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _column_type(name: str, values: list[Any]) -> pa.DataType:
    if name in _STRING_COLUMNS:
        return pa.string()
    if name in _INT_COLUMNS:
        return pa.int64()
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, str) for v in present):
        return pa.string()
    return pa.float64()


def _cell(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if kind == pa.float64():
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"epoch-row value {value!r} is not a number") from exc
    return value


def rows_to_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Epoch rows (dicts) → an Arrow table with the schema-v1 column types and the version in its metadata."""
    if not rows:
        raise ValueError("no rows to write")
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    for required in ("study", "trial_id", "epoch"):
        if required not in names:
            raise ValueError(f"epoch rows lack the required column {required!r}")
    arrays, fields = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        kind = _column_type(name, values)
        arrays.append(pa.array([_cell(v, kind) for v in values], type=kind))
        fields.append(pa.field(name, kind))
    schema = pa.schema(fields, metadata={"tvae_study.schema_version": str(SCHEMA_VERSION)})
    return pa.Table.from_arrays(arrays, schema=schema)


def write_part(location: StudyLocation, trial_id: str, rows: list[Mapping[str, Any]]) -> str | None:
    """Write ``rows`` (consecutive epochs of one trial) as one atomic part file; return its path."""
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    if epochs != list(range(epochs[0], epochs[0] + len(epochs))):
        raise ValueError(f"rows of trial {trial_id} are not consecutive epochs: {epochs}")
    table = rows_to_table(rows)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path = f"{location.trial_partition(trial_id)}/{part_name(epochs[0], epochs[-1])}"
    location.write_atomic(path, buffer.getvalue())
    return path


def list_parts(location: StudyLocation, trial_id: str) -> list[tuple[int, int, str]]:
    """(first, last, path) of every finished part of a trial, by first epoch."""
    found = []
    for path in location.list_files(location.trial_partition(trial_id)):
        span = parse_part(path)
        if span is not None:
            found.append((span[0], span[1], path))
    return sorted(found)


def truncate_parts(location: StudyLocation, trial_id: str, from_epoch: int) -> list[str]:
    """Delete the trial's parts that start at or after ``from_epoch`` (and stray temporaries); return them.

    A part that starts before ``from_epoch`` but ends at or after it cannot exist when parts are only written
    at checkpoint boundaries; if one does, the trainer's cadence changed and we refuse to guess."""
    removed = []
    for first, last, path in list_parts(location, trial_id):
        if first >= from_epoch:
            location.delete_file(path)
            removed.append(path)
        elif last >= from_epoch:
            raise RuntimeError(
                f"part {path} spans epoch {from_epoch}, where trial {trial_id} restarts; "
                "the epoch dataset and the checkpoint disagree")
    for path in location.list_files(location.trial_partition(trial_id)):
        if path.endswith(".partial"):
            location.delete_file(path)
    return removed


def trial_ids(location: StudyLocation) -> list[str]:
    """Trial ids that have a partition under ``epochs/``."""
    ids = []
    for directory in location.list_dirs(location.epochs_dir):
        name = directory.rpartition("/")[2]
        if name.startswith("trial_id="):
            ids.append(name[len("trial_id="):])
    return ids


def remove_trial(location: StudyLocation, trial_id: str) -> None:
    """Remove a trial's whole partition (used for orphans of a killed driver that Tune never recorded)."""
    location.fs.delete_dir(location.trial_partition(trial_id))


def read_epochs(location: StudyLocation, columns: Iterable[str] | None = None) -> pa.Table | None:
    """All finished part files of the study as one table (None when there are none yet)."""
    tables = []
    for trial_id in trial_ids(location):
        for _first, _last, path in list_parts(location, trial_id):
            try:
                with location.fs.open_input_file(path) as handle:
                    tables.append(pq.read_table(handle, columns=list(columns) if columns else None))
            except (pa.ArrowInvalid, OSError) as exc:   # torn or corrupt: name the file, never skip it
                raise ValueError(f"epoch part {path} (trial {trial_id}) is unreadable: {exc}") from None
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")
