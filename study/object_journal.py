"""The Optuna journal of a study whose results live on an object store (S3, GCS, Azure: no append).

The study driver is the journal's only writer. It appends to a local copy (Optuna's `JournalFileBackend` in a
private temporary directory, restored from the store when the driver starts) and puts the whole file on the
store as ``STUDY/optuna.journal`` (one object write, which the store makes visible whole or not at all):

  - at most ``SYNC_PERIOD_S`` seconds after an append (a background thread);
  - whenever the storage is pickled. Ray Tune pickles the searcher, and with it this storage, into every
    experiment snapshot it stores (`tune/`), so the journal on the store is never older than the searcher
    state a resume starts from;
  - when the driver exits (`sync_all`, also registered with `atexit`).

Failure behaviour:
  - a driver killed with SIGKILL loses at most the appends of its last ``SYNC_PERIOD_S`` seconds that came after
    the last experiment snapshot. Those belong to trials that the restored experiment does not know either, so
    a resume draws them again (the same as a local driver killed between two snapshots); intermediate values
    of running trials reported after the snapshot are re-reported when the trials continue;
  - an upload that fails (store unreachable) leaves the previous stored journal whole; the background upload
    warns on stderr and the next sync point tries again; a failure while pickling (a Tune snapshot) raises
    there, one at the driver's exit is reported on stderr. The local copy keeps every record until the driver
    exits;
  - a torn or corrupt stored journal (written by something else) is named by `study.preflight` before a
    resume, as for a local file: a torn last record is cut off and kept aside, a corrupt earlier one refuses
    the resume; a missing journal with a stored experiment refuses the resume (the sampler's history is gone).

Cost: one object write of the whole journal per sync, at most one per ``SYNC_PERIOD_S`` plus one per Tune
snapshot; readers (`study.verify`, `study.status`) read the stored object directly.

``python -m study.object_journal STUDY_URI DEST`` copies a study's journal to a local file, which
optuna-dashboard can open.
"""
from __future__ import annotations

import atexit
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend

from study.layout import OPTUNA_JOURNAL, StudyLocation

SYNC_PERIOD_S = 5.0


class _Mirror:
    """One study's local journal copy and its uploads (one per study and process)."""

    def __init__(self, location: StudyLocation) -> None:
        from study.transfer import cache_dir, download_file

        self.location = location
        self.local = str(cache_dir("tvae-journal-") / OPTUNA_JOURNAL)
        if location.exists(location.journal_path):
            download_file(location.fs, location.journal_path, Path(self.local))
            self._synced_size = os.path.getsize(self.local)
        else:
            open(self.local, "wb").close()
            self._synced_size = -1          # not on the store yet: the first sync writes it
        self.backend = JournalFileBackend(self.local)
        self.lock = threading.RLock()
        self.uploads = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.sync()

    def append(self, logs: list[dict[str, Any]]) -> None:
        with self.lock:
            self.backend.append_logs(logs)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="optuna-journal-sync", daemon=True)
            self._thread.start()
        self._wake.set()

    def sync(self) -> bool:
        """Put the local journal on the store if it changed since the last upload; True if it did."""
        with self.lock:
            size = os.path.getsize(self.local)
            if size == self._synced_size:
                return False
            with open(self.local, "rb") as handle:
                data = handle.read()
            self.location.write_atomic(self.location.journal_path, data)
            self._synced_size = len(data)
            self.uploads += 1
            return True

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(SYNC_PERIOD_S)   # batch the appends of the next few seconds into one upload
            try:
                self.sync()
            except Exception as exc:   # reported; the next sync point (snapshot, exit) tries again and raises
                print(f"warning: uploading the Optuna journal to {self.location.display} failed: {exc}",
                      file=sys.stderr, flush=True)


_MIRRORS: dict[str, _Mirror] = {}
_MIRRORS_LOCK = threading.Lock()
_registered = False


def _mirror(location: StudyLocation) -> _Mirror:
    global _registered
    with _MIRRORS_LOCK:
        mirror = _MIRRORS.get(location.display)
        if mirror is None:
            mirror = _MIRRORS[location.display] = _Mirror(location)
        if not _registered:   # after the mirror's temporary directory: atexit runs this first
            atexit.register(sync_all)
            _registered = True
        return mirror


def sync_all() -> None:
    """Upload every journal this process writes (the driver calls it before it exits)."""
    for mirror in list(_MIRRORS.values()):
        mirror.sync()


class MirroredJournalBackend(BaseJournalBackend):
    """Optuna's journal backend for a study on an object store (see the module's description)."""

    def __init__(self, location: StudyLocation) -> None:
        self._location = location
        self._mirror = _mirror(location)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        with self._mirror.lock:
            return list(self._mirror.backend.read_logs(log_number_from))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._mirror.append(logs)

    def sync(self) -> bool:
        return self._mirror.sync()

    def __getstate__(self) -> dict[str, Any]:
        # pickled into a Ray Tune experiment snapshot: the stored journal must not be older than the snapshot
        self._mirror.sync()
        return {"results": self._location.results, "name": self._location.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._location = StudyLocation.open(state["results"], state["name"])
        self._mirror = _mirror(self._location)


def dashboard_command(location: StudyLocation) -> str:
    """The shell command that opens the study in optuna-dashboard."""
    if location.is_local:
        return f"optuna-dashboard {shlex.quote(location.journal_path)}"
    local = f"{location.name}.optuna.journal"
    return (f"python -m study.object_journal {location.arg} {shlex.quote(local)} && "
            f"optuna-dashboard {shlex.quote(local)}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from study.transfer import download_file

    parser = argparse.ArgumentParser(prog="python -m study.object_journal",
                                     description="Copy a study's Optuna journal (from any store) to a local file.")
    parser.add_argument("study_dir", help="the study's location RESULTS/STUDY (path or URI)")
    parser.add_argument("dest", help="local file to write (optuna-dashboard DEST opens it)")
    args = parser.parse_args(argv)
    try:
        location = StudyLocation.from_study_dir(args.study_dir)
        if not location.exists(location.journal_path):
            raise FileNotFoundError(f"{location.display}: no {OPTUNA_JOURNAL} (no study there, or not started)")
        download_file(location.fs, location.journal_path, Path(os.path.abspath(args.dest)))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(os.path.abspath(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
