"""Checks (and safe repairs) of a stored study before `study.run --resume` touches it.

Each damaged file is named in a message. What can be rebuilt from intact data is repaired, and whatever is
removed is kept aside, never deleted; what cannot be rebuilt stops the resume (`PreflightError`) with what to do:

  optuna.journal   a torn last line (a writer killed mid-append) is cut off and kept in
                   ``optuna.journal.torn-<time>``; a corrupt line before the end refuses the resume (the
                   records after it cannot be trusted, and Optuna would stop reading there)
  trials.parquet   unreadable: moved to ``trials.parquet.corrupt-<time>``; the driver rebuilds it from Ray Tune's
                   state when the study runs (it is a summary, not a source)
  epoch parts      an unreadable part refuses the resume: its rows exist nowhere else
  study.json       unreadable: refused by the caller (it holds the study's arguments)

The same checks run on an object store (`s3://…`): what is set aside there is copied to the same names, and
the stored journal is rewritten whole. There a missing ``optuna.journal`` beside a stored Ray Tune experiment
refuses the resume too (the sampler's history would be lost).
"""
from __future__ import annotations

import json
import os
import time

import pyarrow.parquet as pq

from study.layout import OPTUNA_JOURNAL, TRIALS_PARQUET, StudyLocation
from study.recorder import list_parts, trial_ids


class PreflightError(ValueError):
    """A stored file is damaged and cannot be repaired from intact data."""


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def _aside(path: str, suffix: str) -> str:
    target = f"{path}.{suffix}-{_stamp()}"
    n = 1
    while os.path.exists(target):
        target = f"{path}.{suffix}-{_stamp()}-{n}"
        n += 1
    return target


def _torn_tail(data: bytes, path: str, kind: str) -> bytes:
    """The journal's bytes after its last newline (empty when it ends in one); PreflightError naming the line when
    an earlier record is not JSON. ``kind``: "file" or "object", for the message."""
    lines = data.split(b"\n")
    torn = lines.pop()
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError as exc:
            raise PreflightError(
                f"the Optuna journal {path} is corrupt at line {number} of {len(lines)} ({exc}). The sampler's "
                f"records after it cannot be trusted, so the study is not resumed. Restore the {kind} from a "
                "backup, or start a new study (another --name)") from None
    return torn


def check_journal(path: str) -> list[str]:
    """Repair a torn last line (kept aside); refuse a corrupt earlier line. Return what was done."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    torn = _torn_tail(data, path, "file")
    if not torn:
        return []
    try:
        json.loads(torn)
        complete = True   # a whole record that only lacks its newline
    except ValueError:
        complete = False
    if complete:
        with open(path, "ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return [f"the Optuna journal {path} lacked its final newline: added"]
    kept = _aside(path, "torn")
    with open(kept, "wb") as handle:
        handle.write(torn)
        handle.flush()
        os.fsync(handle.fileno())
    with open(path, "rb+") as handle:
        handle.truncate(len(data) - len(torn))
        handle.flush()
        os.fsync(handle.fileno())
    return [f"the Optuna journal {path} ended in a torn record of {len(torn)} bytes (a writer was killed "
            f"mid-append): cut off and kept in {kept}"]


def check_trials_table(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    try:
        pq.read_table(path)
        return []
    except Exception as exc:   # ArrowInvalid / OSError on a torn or corrupt file
        kept = _aside(path, "corrupt")
        os.replace(path, kept)
        return [f"{path} is unreadable ({exc}): moved to {kept}; it is rebuilt from Ray Tune's state"]


def check_epoch_parts(location: StudyLocation) -> list[str]:
    damaged = []
    for trial_id in trial_ids(location):
        for first, last, path in list_parts(location, trial_id):
            try:
                pq.read_metadata(path)
                pq.read_table(path)
            except Exception as exc:
                damaged.append(f"{path} (trial {trial_id}, epochs {first}-{last}): {exc}")
    if damaged:
        raise PreflightError(
            "unreadable epoch part file(s), whose rows exist nowhere else:\n  " + "\n  ".join(damaged)
            + "\nThe study is not resumed. Restore them from a backup, or move them out of the study directory "
              "to resume without those rows (`python -m study.verify` will then report the gap).")
    return []


def run(location: StudyLocation) -> list[str]:
    """Check the stored study before a resume; return the repairs made (raise `PreflightError` to refuse)."""
    if not location.is_local:
        return run_remote(location)
    check_epoch_parts(location)           # refuse first: nothing is changed when the resume is refused
    notes = check_journal(location.join(OPTUNA_JOURNAL))
    notes += check_trials_table(location.join(TRIALS_PARQUET))
    return notes


# ---- the same on any pyarrow filesystem (object stores) ------------------------------------------------------

def _aside_remote(location: StudyLocation, path: str, suffix: str) -> str:
    target, n = f"{path}.{suffix}-{_stamp()}", 1
    while location.exists(target):
        target, n = f"{path}.{suffix}-{_stamp()}-{n}", n + 1
    return target


def _readable_parquet(location: StudyLocation, path: str) -> None:
    with location.fs.open_input_file(path) as handle:
        pq.read_table(handle)


def run_remote(location: StudyLocation) -> list[str]:
    damaged = []
    for trial_id in trial_ids(location):
        for first, last, path in list_parts(location, trial_id):
            try:
                _readable_parquet(location, path)
            except Exception as exc:
                damaged.append(f"{path} (trial {trial_id}, epochs {first}-{last}): {exc}")
    if damaged:
        raise PreflightError(
            f"unreadable epoch part object(s) in {location.display}, whose rows exist nowhere else:\n  "
            + "\n  ".join(damaged) + "\nThe study is not resumed. Restore them, or move them out of the study "
            "to resume without those rows (`python -m study.verify` will then report the gap).")
    notes = _check_journal_remote(location)
    table = location.join(TRIALS_PARQUET)
    if location.exists(table):
        try:
            _readable_parquet(location, table)
        except Exception as exc:
            kept = _aside_remote(location, table, "corrupt")
            location.write_atomic(kept, location.read_bytes(table))
            location.delete_file(table)
            notes.append(f"{table} is unreadable ({exc}): moved to {kept}; it is rebuilt from Ray Tune's state")
    return notes


def _check_journal_remote(location: StudyLocation) -> list[str]:
    path = location.join(OPTUNA_JOURNAL)
    if not location.exists(path):
        if location.exists(location.tune_dir):
            raise PreflightError(
                f"the Optuna journal {location.display} has no {OPTUNA_JOURNAL}, but a Ray Tune experiment is "
                "stored: the sampler's history is lost, so the study is not resumed. Restore the object from a "
                "backup, or start a new study (another --name)")
        return []
    data = location.read_bytes(path)
    torn = _torn_tail(data, path, "object")
    if not torn:
        return []
    try:
        json.loads(torn)
        location.write_atomic(path, data + b"\n")
        return [f"the Optuna journal {path} lacked its final newline: added"]
    except ValueError:
        pass
    kept = _aside_remote(location, path, "torn")
    location.write_atomic(kept, torn)
    location.write_atomic(path, data[: len(data) - len(torn)])
    return [f"the Optuna journal {path} ended in a torn record of {len(torn)} bytes: cut off and kept in {kept}"]
