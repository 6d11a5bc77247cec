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
import re
import shlex
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

STUDY_JSON = "study.json"
EPOCHS_DIR = "epochs"
TRIALS_PARQUET = "trials.parquet"
OPTUNA_JOURNAL = "optuna.journal"
TUNE_DIR = "tune"
ATTEMPTS_DIR = "attempts"
SCHEMA_VERSION = 1
CHECKPOINT_STATE_FILE = "trial_state.json"    # in each Tune checkpoint of a trial: the trainable's own state
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def is_uri(text: str) -> bool:
    """A pyarrow filesystem URI (``s3://…``, ``gs://…``, ``file://…``) rather than a local path."""
    return "://" in text


_is_uri = is_uri


class LocationError(ValueError):
    """A study location that cannot be parsed or opened; the message names it and says what was expected."""


def normalise_results(results: str) -> str:
    """A results root as every command and every node should see it: a local path made absolute (so a command
    printed here works from any working directory), a URI unchanged."""
    if _is_uri(results):
        return results
    return os.path.abspath(os.path.expanduser(results))


def study_uri(results: str, name: str) -> str:
    """The study's own location: ``name`` added to the results root's *path*, the query kept after it
    (``s3://b/prefix?endpoint_override=h:p`` + ``s`` → ``s3://b/prefix/s?endpoint_override=h:p``)."""
    if not _is_uri(results):
        return f"{normalise_results(results).rstrip('/')}/{name}" if results.rstrip("/") else f"/{name}"
    parts = urlsplit(results)
    return _unsplit(parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{name}", parts.query)


def _unsplit(scheme: str, netloc: str, path: str, query: str) -> str:
    # urllib's urlunsplit writes `mock:/x` for an empty host; pyarrow wants `mock:///x`
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def split_study(study_dir: str) -> tuple[str, str]:
    """``RESULTS/STUDY`` (a path or a URI) → (results root, study name): the one parser of a study location
    that every command uses. Local paths are resolved against the working directory; in a URI the study name is
    the last element of the path, and the query (``endpoint_override``, ``scheme``, ``region``, ...) belongs to
    the store, not to the name."""
    text = study_dir.strip()
    if not text:
        raise LocationError("empty study location: give RESULTS/STUDY (a path or a URI)")
    if not _is_uri(text):
        path = normalise_results(text).rstrip("/")
        root, _, name = path.rpartition("/")
        if not name:
            raise LocationError(f"{study_dir!r} does not name a study directory (RESULTS/STUDY)")
        return root or "/", name
    parts = urlsplit(text)
    if parts.fragment:
        raise LocationError(f"{study_dir!r}: a study URI has no '#' part")
    misplaced = [value for _, value in parse_qsl(parts.query, keep_blank_values=True) if "/" in value]
    if misplaced:
        head, _, tail = text.partition("?")
        query, _, name = tail.rpartition("/")
        raise LocationError(f"{study_dir!r}: the study name is in the query string ({misplaced[0]!r}); it belongs "
                            f"to the path, before '?': {head.rstrip('/')}/{name}?{query}")
    root_path, _, name = parts.path.rstrip("/").rpartition("/")
    if not name:
        raise LocationError(f"{study_dir!r} names no study directory: give RESULTS/STUDY, e.g. "
                            f"{parts.scheme}://{parts.netloc or 'bucket'}/prefix/STUDY")
    if not root_path and not parts.netloc:
        root_path = "/"
    return _unsplit(parts.scheme, parts.netloc, root_path, parts.query), name


@dataclass(frozen=True)
class StudyLocation:
    """A study directory: a pyarrow filesystem plus the study's path inside it."""

    results: str         # the results root: an absolute local path, or the URI as given (query included)
    name: str
    fs: pafs.FileSystem
    path: str            # the study directory inside ``fs`` (absolute for local paths)

    @classmethod
    def open(cls, results: str, name: str) -> "StudyLocation":
        """Resolve ``results`` (a local path or a pyarrow URI such as ``file:///x`` or ``s3://b/x?query``)."""
        if not name or "/" in name or name.startswith(".") or name != name.strip() or "?" in name:
            raise ValueError(f"invalid study name {name!r}: use letters, digits, '-', '_' (no '/')")
        results = normalise_results(results)
        if _is_uri(results):
            try:
                fs, path = pafs.FileSystem.from_uri(study_uri(results, name))
            except Exception as exc:  # pyarrow raises ArrowInvalid/ArrowNotImplementedError
                raise LocationError(f"--results {results!r} is not a usable filesystem URI: {exc}") from exc
            return cls(results=results, name=name, fs=fs, path=path.rstrip("/"))
        return cls(results=results, name=name, fs=pafs.LocalFileSystem(), path=study_uri(results, name))

    @classmethod
    def from_study_dir(cls, study_dir: str) -> "StudyLocation":
        """Open an existing study from its own location (``RESULTS/STUDY``, path or URI): see `split_study`."""
        return cls.open(*split_study(study_dir))

    parse = from_study_dir

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
        """The study's location as every command takes it: the absolute path, or the study URI (the name in the
        path, the query after it)."""
        return study_uri(self.results, self.name)

    @property
    def arg(self) -> str:
        """`display` quoted for a shell command line (a URI's query has '&')."""
        return shlex.quote(self.display)

    def local_path(self) -> str | None:
        """The study directory on this machine's disk, or None for a remote store."""
        return self.path if self.is_local else None

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
            fsync_dir(directory)
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
            fsync_dir(path.rpartition("/")[0])

    def read_json(self, path: str) -> dict[str, Any]:
        try:
            return json.loads(self.read_bytes(path))
        except FileNotFoundError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc

    def write_json(self, path: str, payload: dict[str, Any]) -> None:
        self.write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def fsync_dir(directory: str) -> None:
    """Make a rename or a new file in local ``directory`` durable (best effort: skipped where it cannot open it)."""
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


def checkpoint_index(name: str) -> int | None:
    """k of a Tune checkpoint directory named ``checkpoint_<k>`` (zero-padded), else None."""
    match = _CHECKPOINT_DIR.match(name)
    return int(match.group(1)) if match else None


def older_checkpoints(fs: pafs.FileSystem, trial_dir: str, index: int) -> list[str]:
    """The checkpoint directories of ``trial_dir`` (on ``fs``) with a lower index than ``index``, newest first."""
    found = []
    for info in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True, recursive=False)):
        k = checkpoint_index(info.base_name)
        if info.type == pafs.FileType.Directory and k is not None and k < index:
            found.append((k, info.path))
    return [path for _k, path in sorted(found, reverse=True)]
