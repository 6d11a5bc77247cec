"""Copies between a study location on any pyarrow filesystem (an object store) and this machine's disk, for
the readers that need local files: the polars scans of `analysis`, the report, optuna-dashboard.

Each file is downloaded whole to a temporary name and renamed into place, so a local copy never holds a torn
file; the copy is a snapshot of the listing taken when it starts (a running study's later files are not in it;
files are written whole on the store, so none is half there). Nothing here imports Ray or polars.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from study.layout import EPOCHS_DIR, STUDY_JSON, TRIALS_PARQUET, StudyLocation

_CHUNK = 1 << 20
_cache_dirs: list[str] = []


def cache_dir(prefix: str = "tvae-remote-") -> Path:
    """A private temporary directory removed when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    if not _cache_dirs:
        atexit.register(_remove_cache_dirs)
    _cache_dirs.append(path)
    return Path(path)


def _remove_cache_dirs() -> None:
    for path in _cache_dirs:
        shutil.rmtree(path, ignore_errors=True)


def download_file(fs: pafs.FileSystem, path: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    with fs.open_input_stream(path) as src, open(tmp, "wb") as out:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
    os.replace(tmp, dest)
    return dest


def download_tree(fs: pafs.FileSystem, root: str, dest: Path, suffix: str = "") -> list[Path]:
    """Every file below ``root`` whose name ends in ``suffix`` (relative paths kept) into ``dest``."""
    selector = pafs.FileSelector(root, allow_not_found=True, recursive=True)
    copied = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.endswith(suffix):
            continue
        relative = info.path[len(root.rstrip("/")) + 1:]
        copied.append(download_file(fs, info.path, dest / relative))
    return sorted(copied)


def fetch_study(location: StudyLocation, dest_root: Path | None = None) -> Path:
    """A local copy of what the analysis reads from a study: ``study.json``, ``trials.parquet`` and the epoch
    parts, in ``dest_root/NAME`` (a private temporary directory by default). Raises FileNotFoundError naming
    the location when it holds no study."""
    if not location.exists(location.path):
        raise FileNotFoundError(f"{location.display}: no such study directory")
    dest = (dest_root or cache_dir()) / location.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in (STUDY_JSON, TRIALS_PARQUET):
        if location.exists(location.join(name)):
            download_file(location.fs, location.join(name), dest / name)
    download_tree(location.fs, location.epochs_dir, dest / EPOCHS_DIR, suffix=".parquet")
    return dest


def fetch_uri(uri: str, dest_root: Path | None = None) -> Path:
    """A local copy of what a URI names: a study directory (see `fetch_study`), any directory (its ``.parquet``
    files) or one file."""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as exc:   # ArrowInvalid / OSError for an unknown scheme or an unreachable store
        raise ValueError(f"{uri}: not a usable filesystem URI ({exc})") from exc
    path = path.rstrip("/")
    info = fs.get_file_info(path)
    root = dest_root or cache_dir()
    if info.type == pafs.FileType.File:
        return download_file(fs, path, root / path.rpartition("/")[2])
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: no such file or directory")
    if fs.get_file_info(f"{path}/{STUDY_JSON}").type == pafs.FileType.File:
        return fetch_study(StudyLocation.from_study_dir(uri), root)
    dest = root / (path.rpartition("/")[2] or "root")
    download_tree(fs, path, dest, suffix=".parquet")
    return dest


def upload_dir(local: Path, location: StudyLocation, subdir: str) -> list[str]:
    """Every file of ``local`` to ``STUDY/subdir/`` (each one written atomically); the URIs written."""
    written = []
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        relative = file.relative_to(local).as_posix()
        location.write_atomic(location.join(subdir, relative), file.read_bytes())
        written.append(relative)
    base = location.display
    head, sep, query = base.partition("?")
    return [f"{head}/{subdir}/{r}{sep}{query}" for r in written]

