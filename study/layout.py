"""Where a study lives: the study directory (docs/design.md) on a local path or any pyarrow filesystem URI.

    RESULTS/STUDY/
      study.json        arguments, seed, versions, start time, schema_version
      epochs/           trial_id=<ID>/part-<first>-<last>.parquet   (one row per trial and epoch)
      trials.parquet    one row per trial
      optuna.journal    Optuna JournalStorage
      tune/             Ray Tune experiment directory (trial checkpoints)
      attempts/         trial_id=<ID>/<n>   one empty marker per start of a trial (gives the `attempt` column)

Every write of a whole file goes through `write_atomic` (temporary name, flush, fsync, rename), so a reader
never sees a torn file. Nothing here imports Ray.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

STUDY_JSON = "study.json"
EPOCHS_DIR = "epochs"
TRIALS_PARQUET = "trials.parquet"
OPTUNA_JOURNAL = "optuna.journal"
TUNE_DIR = "tune"
ATTEMPTS_DIR = "attempts"
SCHEMA_VERSION = 1


def _is_uri(text: str) -> bool:
    return "://" in text


@dataclass(frozen=True)
class StudyLocation:
    """A study directory: a pyarrow filesystem plus the study's path inside it."""

    results: str         # what the user gave (path or URI), kept for printing commands
    name: str
    fs: pafs.FileSystem
    path: str            # the study directory inside ``fs`` (absolute for local paths)

    @classmethod
    def open(cls, results: str, name: str) -> "StudyLocation":
        """Resolve ``results`` (a local path or a pyarrow URI such as ``file:///x`` or ``s3://b/x``)."""
        if not name or "/" in name or name.startswith(".") or name != name.strip():
            raise ValueError(f"invalid study name {name!r}: use letters, digits, '-', '_' (no '/')")
        if _is_uri(results):
            try:
                fs, root = pafs.FileSystem.from_uri(results)
            except Exception as exc:  # pyarrow raises ArrowInvalid/ArrowNotImplementedError
                raise ValueError(f"--results {results!r} is not a usable filesystem URI: {exc}") from exc
        else:
            fs, root = pafs.LocalFileSystem(), os.path.abspath(results)
        return cls(results=results, name=name, fs=fs, path=f"{root.rstrip('/')}/{name}")

    @classmethod
    def from_study_dir(cls, study_dir: str) -> "StudyLocation":
        """Open an existing study from its own directory (``RESULTS/STUDY``), path or URI."""
        stripped = study_dir.rstrip("/")
        parent, _, name = stripped.rpartition("/")
        if not name:
            raise ValueError(f"{study_dir!r} does not name a study directory")
        if _is_uri(stripped) and parent.endswith(":/"):
            parent += "/"
        return cls.open(parent or ".", name)

    # ---- paths -------------------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    @property
    def epochs_dir(self) -> str:
        return self.join(EPOCHS_DIR)

    def trial_partition(self, trial_id: str) -> str:
        return self.join(EPOCHS_DIR, f"trial_id={trial_id}")

    @property
    def journal_path(self) -> str:
        return self.join(OPTUNA_JOURNAL)

    @property
    def tune_dir(self) -> str:
        return self.join(TUNE_DIR)

    @property
    def display(self) -> str:
        """The study directory as the user would type it."""
        if _is_uri(self.results):
            return f"{self.results.rstrip('/')}/{self.name}"
        return self.path

    # ---- small file operations ---------------------------------------------------------------------------
    def exists(self, path: str | None = None) -> bool:
        info = self.fs.get_file_info(path or self.path)
        return info.type != pafs.FileType.NotFound

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def list_files(self, directory: str) -> list[str]:
        """Paths of the plain files directly inside ``directory`` (empty if it does not exist)."""
        selector = pafs.FileSelector(directory, allow_not_found=True, recursive=False)
        return sorted(i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def list_dirs(self, directory: str) -> list[str]:
        selector = pafs.FileSelector(directory, allow_not_found=True, recursive=False)
        return sorted(i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
        directory = path.rpartition("/")[0]
        self.makedirs(directory)
        # never ends in .parquet, so no reader's glob picks up a half-written temporary
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex}-{path.rpartition('/')[2]}.partial"
        if self.is_local:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(directory)
        else:  # object stores: a single PUT is already atomic; move where the filesystem supports it
            with self.fs.open_output_stream(tmp) as stream:
                stream.write(data)
            try:
                self.fs.move(tmp, path)
            except Exception:
                with self.fs.open_output_stream(path) as stream:
                    stream.write(data)
                self.fs.delete_file(tmp)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)
        if self.is_local:
            _fsync_dir(path.rpartition("/")[0])

    def read_json(self, path: str) -> dict[str, Any]:
        try:
            return json.loads(self.read_bytes(path))
        except FileNotFoundError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc

    def write_json(self, path: str, payload: dict[str, Any]) -> None:
        self.write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
