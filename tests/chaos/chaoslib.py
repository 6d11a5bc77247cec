"""Helpers of the fault-injection suite (imported by the tests as ``chaoslib``; fixtures are in conftest.py,
the process driving in `tests/study_processes.py`): what a study leaves on disk, and `study.verify`'s invariants.
The tests drive `python -m study.run` as a real process in its own session, strike it with real signals at
chosen moments, resume it, and check the study's invariants."""
from __future__ import annotations

import json
from pathlib import Path


# ------------------------------------------------------------------------------------- what is on disk

def part_files(study_dir: Path) -> list[Path]:
    return sorted(p for p in (study_dir / "epochs").glob("trial_id=*/part-*.parquet"))


def checkpoints(study_dir: Path) -> list[Path]:
    return sorted((study_dir / "tune").glob("trial_*/checkpoint_*"))


def trials_rows(study_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    path = study_dir / "trials.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def attempt_markers(study_dir: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for directory in sorted((study_dir / "attempts").glob("trial_id=*")):
        markers = [json.loads(p.read_text()) for p in sorted(directory.iterdir(), key=lambda p: int(p.name))
                   if p.name.isdigit() and p.stat().st_size]
        out[directory.name.split("=", 1)[1]] = markers
    return out


def assert_invariants(study_dir: Path, *, complete: bool = True):
    """Every scenario ends here: `study.verify` must find no violated invariant."""
    from study.verify import verify

    report = verify(str(study_dir), complete=complete)
    assert report.ok, report.text()
    return report


def snapshot(study_dir: Path) -> dict[str, bytes]:
    """Every file of a study (relative path → bytes), to prove that a refused command changed nothing."""
    return {str(p.relative_to(study_dir)): p.read_bytes() for p in sorted(study_dir.rglob("*")) if p.is_file()}
