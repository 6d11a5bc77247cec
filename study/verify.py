"""``python -m study.verify STUDY_DIR [--complete] [--json]``: check a study directory's invariants.

Run it after any crash, kill or resume; the fault-injection suite (``tests/chaos/``) runs it after every
scenario. It reads only (it never repairs, locks or rewrites anything), so it is safe while the study runs.

Invariants (each violation names its invariant and the file or trial concerned):

  files        every Parquet file (epoch parts, ``trials.parquet``) reads whole, carries schema_version 1, and a
               part's name matches its rows; ``study.json`` is valid; every Optuna journal line but a torn last
               one is valid JSON (a torn last line is a *note*: the next ``study.run`` repairs it)
  epochs       each (trial, epoch) row exactly once, epochs 0..last without a gap, ``attempt`` never decreasing
  trials       at most the requested number of trials, each once; with ``--complete``: exactly the requested
               number, all finished, a COMPLETED/DIVERGED trial has a row for each epoch it trained, no rows of
               trials the study does not know
  params       a trial's parameters are the same in every attempt (the attempt markers), in ``trials.parquet``
               and in Optuna; no two trials share a configuration
  optuna       the Optuna storage agrees with ``trials.parquet``: one Optuna trial per study trial, with the
               matching state (and value for COMPLETED); with ``--complete``: no RUNNING (zombie) trial left

Exit status: 0 all invariants hold; 1 some are violated (each printed); 2 not a study directory.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from study.layout import (ATTEMPTS_DIR, OPTUNA_JOURNAL, SCHEMA_VERSION, STUDY_JSON, TRIALS_PARQUET,
                          StudyLocation)
from study.recorder import parse_part
from study.statuses import TERMINAL, TrialStatus


@dataclass(frozen=True)
class Violation:
    invariant: str      # files | epochs | trials | params | optuna
    message: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.message}"


@dataclass
class Report:
    study_dir: str
    complete: bool
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, invariant: str, message: str) -> None:
        self.violations.append(Violation(invariant, message))

    def violated(self) -> set[str]:
        return {v.invariant for v in self.violations}

    def to_dict(self) -> dict[str, Any]:
        return {"study_dir": self.study_dir, "complete": self.complete, "ok": self.ok,
                "violations": [asdict(v) for v in self.violations], "notes": self.notes, "counts": self.counts}

    def text(self) -> str:
        lines = [f"study {self.study_dir}: " + ("all invariants hold" if self.ok else
                                                f"{len(self.violations)} violation(s)")
                 + ("" if not self.counts else "  (" + ", ".join(f"{k} {v}" for k, v in self.counts.items()) + ")")]
        lines += [f"  VIOLATED {v}" for v in self.violations]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- readers

def _read_parquet(location: StudyLocation, path: str):
    with location.fs.open_input_file(path) as handle:
        return pq.read_table(handle)


def _files_under(location: StudyLocation, directory: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
    return [i for i in location.fs.get_file_info(selector) if i.type == pafs.FileType.File]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0) or (a != a and b != b)
        except (TypeError, ValueError):
            return False
    return a == b


def _normalise_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as trials.parquet stores them (lists and dicts as sorted JSON)."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v for k, v in params.items()}


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    keys = sorted(set(a) | set(b))
    differing = [f"{k}: {a.get(k, '<absent>')!r} vs {b.get(k, '<absent>')!r}" for k in keys
                 if not _same(a.get(k), b.get(k))]
    return "; ".join(differing) if differing else None


# ------------------------------------------------------------------------------------------------- checks

def _check_epoch_parts(location: StudyLocation, study_name: str, report: Report) -> dict[str, list[tuple]]:
    """Read every part file; return trial id → [(epoch, attempt, part path)]."""
    rows: dict[str, list[tuple]] = defaultdict(list)
    for info in _files_under(location, location.epochs_dir):
        base = info.base_name
        if base.endswith(".partial"):
            report.notes.append(f"unfinished temporary {info.path} (invisible to readers; removed when its "
                                "trial restarts)")
            continue
        if base.startswith("."):
            continue
        partition = info.path.rpartition("/")[0].rpartition("/")[2]
        if not partition.startswith("trial_id="):
            report.add("files", f"{info.path} lies outside a trial_id=<ID> partition")
            continue
        trial_id = partition[len("trial_id="):]
        span = parse_part(base)
        if span is None:
            report.add("files", f"{info.path} is not named part-<first>-<last>.parquet")
            continue
        try:
            table = _read_parquet(location, info.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError on a torn or corrupt file
            report.add("files", f"epoch part {info.path} (trial {trial_id}, epochs {span[0]}-{span[1]}) is "
                                f"unreadable: {exc}")
            continue
        meta = table.schema.metadata or {}
        version = meta.get(b"tvae_study.schema_version")
        if version is not None and version != str(SCHEMA_VERSION).encode():
            report.add("files", f"{info.path} has schema_version {version.decode()}, expected {SCHEMA_VERSION}")
        if "epoch" not in table.column_names:
            report.add("files", f"{info.path} has no 'epoch' column")
            continue
        epochs = table.column("epoch").to_pylist()
        if epochs != list(range(span[0], span[1] + 1)):
            report.add("files", f"{info.path} is named for epochs {span[0]}-{span[1]} but holds {epochs}")
        for column, expected in (("trial_id", trial_id), ("study", study_name)):
            if column in table.column_names:
                wrong = set(table.column(column).to_pylist()) - {expected}
                if wrong:
                    report.add("files", f"{info.path} holds {column} {sorted(map(str, wrong))}, expected "
                                        f"{expected!r}")
        attempts = (table.column("attempt").to_pylist() if "attempt" in table.column_names
                    else [None] * len(epochs))
        rows[trial_id].extend((e, a, info.path) for e, a in zip(epochs, attempts))
    return rows


def _check_epoch_rows(rows: dict[str, list[tuple]], report: Report) -> dict[str, int]:
    """Exactly once, no gaps, attempts non-decreasing. Return trial id → rows."""
    counts = {}
    for trial_id, found in sorted(rows.items()):
        found.sort(key=lambda r: (r[0], r[2]))
        epochs = [r[0] for r in found]
        counts[trial_id] = len(epochs)
        duplicated = sorted(e for e, n in Counter(epochs).items() if n > 1)
        if duplicated:
            where = sorted({r[2].rpartition("/")[2] for r in found if r[0] in duplicated})
            report.add("epochs", f"trial {trial_id}: epoch(s) {_ranges(duplicated)} appear more than once "
                                 f"(in {', '.join(where)})")
        missing = sorted(set(range(max(epochs) + 1)) - set(epochs)) if epochs else []
        if missing:
            report.add("epochs", f"trial {trial_id}: epoch(s) {_ranges(missing)} missing before its last stored "
                                 f"epoch {max(epochs)}")
        attempts = [r[1] for r in found if r[1] is not None]
        if any(b < a for a, b in zip(attempts, attempts[1:])):
            report.add("epochs", f"trial {trial_id}: the attempt column decreases with the epoch ({attempts})")
    return counts


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def _read_trials(location: StudyLocation, report: Report) -> list[dict[str, Any]] | None:
    path = location.join(TRIALS_PARQUET)
    if not location.exists(path):
        return None
    try:
        return _read_parquet(location, path).to_pylist()
    except Exception as exc:
        report.add("files", f"{path} is unreadable: {exc}")
        return None


def _check_trials(trials: list[dict[str, Any]] | None, row_counts: dict[str, int], requested: int, epochs: int,
                  report: Report) -> None:
    trials = trials or []
    ids = [t["trial_id"] for t in trials]
    for trial_id, n in Counter(ids).items():
        if n > 1:
            report.add("trials", f"trial {trial_id} appears {n} times in {TRIALS_PARQUET}")
    statuses = Counter(t["status"] for t in trials)
    report.counts.update({"trials": len(set(ids)), "requested": requested, "rows": sum(row_counts.values()),
                          **{s.lower(): n for s, n in sorted(statuses.items())}})
    if len(set(ids)) > requested:
        report.add("trials", f"{len(set(ids))} trials recorded, more than the {requested} requested")
    unknown = sorted(set(row_counts) - set(ids))
    if report.complete:
        if len(set(ids)) != requested:
            report.add("trials", f"{len(set(ids))} trials recorded, {requested} requested")
        unfinished = sorted(t["trial_id"] for t in trials if t["status"] not in TERMINAL)
        if unfinished:
            report.add("trials", f"trial(s) {', '.join(unfinished)} not finished "
                                 f"({', '.join(sorted({t['status'] for t in trials if t['status'] not in TERMINAL}))})")
        if unknown:
            report.add("trials", f"epoch rows of trial(s) {', '.join(unknown)} that {TRIALS_PARQUET} does not know")
    elif unknown:
        report.notes.append(f"epoch rows of trial(s) {', '.join(unknown)} not yet in {TRIALS_PARQUET} (removed "
                            "when the study completes if Ray Tune never recorded them)")
    for t in trials:
        stored = row_counts.get(t["trial_id"], 0)
        done = int(t.get("epochs_done") or 0)
        if t["status"] not in TrialStatus.__members__:
            report.add("trials", f"trial {t['trial_id']} has the unknown status {t['status']!r}")
        elif t["status"] == TrialStatus.COMPLETED and (stored != epochs or done != epochs):
            report.add("trials", f"trial {t['trial_id']} is COMPLETED but has {stored} epoch rows and "
                                 f"epochs_done {done} (expected {epochs})")
        elif t["status"] in (TrialStatus.DIVERGED, TrialStatus.PRUNED) and stored != done:
            report.add("trials", f"trial {t['trial_id']} {t['status']} after {done} epochs but has {stored} epoch "
                                 "rows")
        elif t["status"] in (TrialStatus.DIVERGED, TrialStatus.ERROR) and not t.get("reason"):
            report.add("trials", f"trial {t['trial_id']} is {t['status']} without a reason")
        if stored > max(done, 0) and t["status"] in TERMINAL:
            report.add("trials", f"trial {t['trial_id']} has {stored} epoch rows, more than its {done} epochs")


def _trial_params(trial: dict[str, Any]) -> dict[str, Any]:
    return {k[len("param_"):]: v for k, v in trial.items() if k.startswith("param_") and v is not None}


def _check_params(location: StudyLocation, trials: list[dict[str, Any]] | None, rows: dict[str, list[tuple]],
                  report: Report) -> None:
    by_id = {t["trial_id"]: t for t in trials or []}
    for directory in location.list_dirs(location.join(ATTEMPTS_DIR)):
        name = directory.rpartition("/")[2]
        if not name.startswith("trial_id="):
            continue
        trial_id = name[len("trial_id="):]
        markers = {}
        for path in location.list_files(directory):
            base = path.rpartition("/")[2]
            if not base.isdigit():
                continue
            data = location.read_bytes(path)
            if not data:
                continue   # a marker of an older driver: no parameters recorded
            try:
                markers[int(base)] = json.loads(data)
            except ValueError as exc:
                report.add("files", f"attempt marker {path} is not valid JSON: {exc}")
        for number, marker in sorted(markers.items()):
            if marker.get("repairs"):
                report.notes.append(f"trial {trial_id}, attempt {number}: " + "; ".join(marker["repairs"]))
        reference = _normalise_params(markers[min(markers)]["params"]) if markers else None
        for number, marker in sorted(markers.items()):
            diff = _diff(reference, _normalise_params(marker.get("params", {})))
            if diff:
                report.add("params", f"trial {trial_id}: attempt {number} ran with other parameters than attempt "
                                     f"{min(markers)} ({diff})")
        if reference is not None and trial_id in by_id:
            diff = _diff(reference, _trial_params(by_id[trial_id]))
            if diff:
                report.add("params", f"trial {trial_id}: {TRIALS_PARQUET} parameters differ from the ones it ran "
                                     f"with ({diff})")
        used = {a for _e, a, _p in rows.get(trial_id, []) if a is not None}
        started = set(markers) | {int(p.rpartition('/')[2]) for p in location.list_files(directory)
                                  if p.rpartition('/')[2].isdigit()}
        if used - started:
            report.add("params", f"trial {trial_id}: epoch rows of attempt(s) {sorted(used - started)} that never "
                                 "started (no marker)")
    seen: dict[str, str] = {}
    for t in trials or []:
        params = _trial_params(t)
        if not params:
            continue
        key = json.dumps(params, sort_keys=True, default=str)
        if key in seen:
            report.add("params", f"trials {seen[key]} and {t['trial_id']} ran the same configuration {params}")
        seen[key] = t["trial_id"]


def _journal_lines(location: StudyLocation, report: Report) -> bool:
    """Check each journal line; return whether Optuna can read it."""
    path = location.join(OPTUNA_JOURNAL)
    data = location.read_bytes(path)
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""   # text after the last newline (empty when the file ends cleanly)
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError as exc:
            report.add("files", f"Optuna journal {path}: line {number} of {len(lines)} is corrupt ({exc}); "
                                "the records after it cannot be trusted")
            return False
    if torn:
        report.notes.append(f"Optuna journal {path} ends in a torn line of {len(torn)} bytes (a writer was killed "
                            "mid-append); the next study.run repairs it and keeps the torn bytes aside")
    return True


def _check_optuna(location: StudyLocation, trials: list[dict[str, Any]] | None, metric: str | None,
                  report: Report) -> None:
    path = location.join(OPTUNA_JOURNAL)
    if not location.exists(path):
        if trials:
            report.add("optuna", f"{TRIALS_PARQUET} has {len(trials)} trials but there is no {OPTUNA_JOURNAL}")
        return
    if not _journal_lines(location, report):
        return
    from study.optuna_store import OPTUNA_STATES, TUNE_ID_ATTR, ArrowJournalBackend
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = JournalFileBackend(path) if location.is_local else ArrowJournalBackend(location, path)
    storage = JournalStorage(backend)
    names = [s.study_name for s in storage.get_all_studies()]
    if location.name not in names:
        if trials:
            report.add("optuna", f"{OPTUNA_JOURNAL} holds no study {location.name!r} (it has {names})")
        return
    study_id = storage.get_study_id_from_name(location.name)
    ot_trials = storage.get_all_trials(study_id, deepcopy=False)
    by_tune: dict[str, list] = defaultdict(list)
    for ot in ot_trials:
        by_tune[ot.user_attrs.get(TUNE_ID_ATTR)].append(ot)
    known = {t["trial_id"] for t in trials or []}
    for t in trials or []:
        matches = by_tune.get(t["trial_id"], [])
        if not matches:
            report.add("optuna", f"trial {t['trial_id']} ({t['status']}) has no Optuna trial")
            continue
        retried = all(m.state.name == "FAIL" for m in matches[:-1]) and all("retry_of" in m.user_attrs
                                                                          for m in matches[1:])
        if len(matches) > 1 and not retried:   # a retry after ERROR is a new Optuna trial with `retry_of`
            report.add("optuna", f"trial {t['trial_id']} has {len(matches)} Optuna trials "
                                 f"({', '.join(str(m.number) for m in matches)})")
        ot = matches[-1]
        diff = _diff(_normalise_params(ot.params), _trial_params(t))
        if diff:
            report.add("optuna", f"trial {t['trial_id']}: Optuna trial {ot.number} has other parameters ({diff})")
        expected = OPTUNA_STATES.get(t["status"], frozenset())
        if ot.state.name not in expected:
            report.add("optuna", f"trial {t['trial_id']} is {t['status']} but Optuna trial {ot.number} is "
                                 f"{ot.state.name} (expected {' or '.join(sorted(expected))})")
        elif t["status"] == TrialStatus.COMPLETED and metric and t.get(f"final_{metric}") is not None:
            if not _same(ot.value, t[f"final_{metric}"]):
                report.add("optuna", f"trial {t['trial_id']}: Optuna value {ot.value} differs from final_{metric} "
                                     f"{t[f'final_{metric}']}")
    for tune_id, matches in by_tune.items():
        for ot in matches:
            if tune_id in known:
                continue
            if ot.state.name in ("RUNNING", "WAITING") and report.complete:
                report.add("optuna", f"Optuna trial {ot.number} (Tune trial {tune_id}) is still {ot.state.name} "
                                     "in a finished study (a zombie)")
            elif ot.state.name == "COMPLETE":
                report.add("optuna", f"Optuna trial {ot.number} (Tune trial {tune_id}) is COMPLETE but the study "
                                     "does not know it")
    report.counts["optuna_trials"] = len(ot_trials)


def verify(study_dir: str | StudyLocation, *, complete: bool = False) -> Report:
    """Check every invariant of a study directory (see the module docstring). ``complete``: also require a
    finished study (the requested number of trials, all finished, no zombie Optuna trial, no orphan rows)."""
    location = study_dir if isinstance(study_dir, StudyLocation) else StudyLocation.from_study_dir(study_dir)
    report = Report(study_dir=location.display, complete=complete)
    study_json = location.join(STUDY_JSON)
    if not location.exists(study_json):
        raise FileNotFoundError(f"no study at {location.display} (missing {STUDY_JSON})")
    record = location.read_json(study_json)   # ValueError names the file when it is not JSON
    arguments = record.get("arguments")
    if not isinstance(arguments, dict) or "trials" not in arguments or "epochs" not in arguments:
        raise ValueError(f"{study_json} has no study arguments: not a study.json written by study.run")
    rows = _check_epoch_parts(location, record.get("study", location.name), report)
    row_counts = _check_epoch_rows(rows, report)
    trials = _read_trials(location, report)
    _check_trials(trials, row_counts, int(arguments["trials"]), int(arguments["epochs"]), report)
    _check_params(location, trials, rows, report)
    _check_optuna(location, trials, record.get("metric"), report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", help="the study directory RESULTS/STUDY (path or URI)")
    parser.add_argument("--complete", action="store_true",
                        help="also require a finished study: all requested trials finished, no zombie trial")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    try:
        report = verify(args.study_dir, complete=args.complete)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
