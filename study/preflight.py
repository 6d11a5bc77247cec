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
  checkpoints      an unfinished trial whose latest checkpoint, as the stored Ray Tune snapshot names it, is
                   missing from storage (see below): that ``checkpoint_00000k`` is recreated

The same checks run on an object store (`s3://…`): what is set aside there is copied to the same names, and
the stored journal is rewritten whole. There a missing ``optuna.journal`` beside a stored Ray Tune experiment
refuses the resume too (the sampler's history would be lost).

Missing checkpoints. Tune prunes a trial's oldest checkpoint (``num_to_keep = 2``) in the step that makes it force
an experiment snapshot; a driver SIGKILLed between the two leaves a snapshot naming a deleted checkpoint, and
Tune fails that trial's restore before any of our code runs ("does not exist on storage anymore"). For every
trial the snapshot does not record as TERMINATED whose named checkpoint is missing, `check_checkpoints`
recreates the directory under the same name:

  * as a copy of the trial's newest intact checkpoint that is *older* (a lower index) than the missing one,
    when there is one. The trainable restores from whatever directory it is given, and the epoch it continues
    from is the one inside the copied state (``run/`` or ``cohort/``; ``trial_state.json`` is not read for it),
    so the trial continues from the older epoch, and the trainable first deletes its part files from that epoch
    on (`study.trainable`): each (trial, epoch) row is still written exactly once.
  * otherwise as a placeholder holding only ``PREFLIGHT-PLACEHOLDER.txt`` (what the race itself leaves: Tune
    deleted the older checkpoints first, so only *newer* ones, unknown to the snapshot, remain). The trainable
    finds it unreadable, names it, finds no intact older checkpoint and starts the trial over from epoch 0,
    deleting all of its part files first (`study.trainable.restore_latest`): the trial's training is lost,
    its rows are not duplicated.

Newer checkpoint directories than the named one are never used: the snapshot does not know them, and one may be
left over from an earlier life of the trial (a restart from epoch 0 reuses the indices after the named one) whose
rows were deleted since. The trainable's own fallback (`study.trainable._checkpoint_chain`) follows the same
rule. This repair only creates directories under names Tune already records; Tune's private snapshot is read
(`study.compat.stored_trials`), never rewritten: rewriting it would tie the repair to a private format
for writing too.
"""
from __future__ import annotations

import json
import os
import time
import uuid

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from study.layout import (CHECKPOINT_STATE_FILE, OPTUNA_JOURNAL, TRIALS_PARQUET, StudyLocation, checkpoint_index,
                          fsync_dir, older_checkpoints)
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


PLACEHOLDER = "PREFLIGHT-PLACEHOLDER.txt"


def _intact_checkpoint(location: StudyLocation, directory: str) -> bool:
    """A checkpoint directory the trainable wrote whole enough to try: its state file reads as JSON and it holds
    more than that file. (A torn one that passes is still caught by the trainable, which then falls back.)"""
    try:
        json.loads(location.read_bytes(f"{directory}/{CHECKPOINT_STATE_FILE}"))
    except (OSError, ValueError):
        return False
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
    return any(i.type == pafs.FileType.File and i.base_name != CHECKPOINT_STATE_FILE
               for i in location.fs.get_file_info(selector))


def _copy_checkpoint(location: StudyLocation, source: str, target: str) -> None:
    """Copy the directory ``source`` to ``target`` (which does not exist). Locally under a temporary name, then
    renamed: ``target`` appears whole or not at all; on an object store object by object (a torn copy is found
    unreadable by the trainable, which then falls back as for any damaged checkpoint)."""
    if location.is_local:
        parent, _, name = target.rpartition("/")
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}.partial"
        pafs.copy_files(source, tmp, source_filesystem=location.fs, destination_filesystem=location.fs)
        os.replace(tmp, target)
        fsync_dir(parent)
    else:
        pafs.copy_files(source, target, source_filesystem=location.fs, destination_filesystem=location.fs)


def check_checkpoints(location: StudyLocation) -> list[str]:
    """Recreate the missing latest checkpoint of every unfinished trial of the stored Tune experiment (see the
    module's docstring); return what was done."""
    from study import compat

    if not location.exists(location.tune_dir):
        return []
    try:
        state_path, trials = compat.stored_trials(location.fs, location.tune_dir)
    except compat.UntestedVersionError as exc:   # the snapshot is read through private Ray APIs
        raise PreflightError(str(exc)) from None
    except Exception as exc:   # a torn or foreign snapshot: Tune's own restore reports it
        return [f"the Ray Tune snapshot in {location.tune_dir} could not be read to check the trials' checkpoints "
                f"({type(exc).__name__}: {exc}); not checked (Ray Tune reports it when it restores)"]
    notes = []
    for trial in trials:
        if trial.status == "TERMINATED" or trial.checkpoint is None:
            continue
        named = checkpoint_index(trial.checkpoint)
        trial_dir = f"{location.tune_dir}/{trial.trial_dir}"
        target = f"{trial_dir}/{trial.checkpoint}"
        if named is None or location.exists(target):
            continue
        source = next((d for d in older_checkpoints(location.fs, trial_dir, named) if _intact_checkpoint(location, d)),
                      None)
        what = (f"trial {trial.trial_id} ({trial.status} in {state_path}): its latest registered checkpoint "
                f"{target} is missing (as when Tune pruned it after that snapshot and the driver was killed "
                "before the next)")
        if source is not None:
            _copy_checkpoint(location, source, target)
            notes.append(f"{what}: recreated as a copy of its older intact checkpoint {source}; the trial continues "
                         "from that checkpoint's epoch and rewrites its rows after it")
        else:
            location.write_atomic(f"{target}/{PLACEHOLDER}", (
                f"Created by study.preflight: {what}, and no older intact checkpoint was left. This placeholder "
                "lets Ray Tune restore the trial; the trainable finds no state here and starts the trial over "
                "from epoch 0, deleting its part files first.\n").encode())
            notes.append(f"{what}: no older intact checkpoint left, so it was recreated as a placeholder "
                         f"({PLACEHOLDER}); the trial starts over from epoch 0 and rewrites its rows")
    return notes


def run(location: StudyLocation) -> list[str]:
    """Check the stored study before a resume; return the repairs made (raise `PreflightError` to refuse)."""
    if not location.is_local:
        return run_remote(location)
    check_epoch_parts(location)           # refuse first: nothing is changed when the resume is refused
    notes = check_journal(location.join(OPTUNA_JOURNAL))
    notes += check_trials_table(location.join(TRIALS_PARQUET))
    notes += check_checkpoints(location)
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
    notes += check_checkpoints(location)
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
