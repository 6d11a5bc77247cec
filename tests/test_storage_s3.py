"""Studies on object storage, against a real S3 endpoint: a moto server started on 127.0.0.1 (its own process, a
free port). The study location parser of every command; the Optuna journal kept on the store; damaged or missing
objects before a resume; the analysis commands reading a study URI; a complete smoke study; a SIGKILLed driver
resumed from another working directory with no local state."""
from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import s3_server
from study import object_journal, preflight, recorder
from study.layout import LocationError, StudyLocation, split_study, study_uri
from study.optuna_store import open_storage
from study_processes import Studies, driver_env, wait_for

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = s3_server.start(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


def _run(module: str, *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=driver_env(), capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------------ one location parser

def test_one_parser_puts_the_name_in_the_path_and_keeps_the_query(tmp_path, monkeypatch):
    uri = "s3://bucket/prefix/st?endpoint_override=127.0.0.1:9000&scheme=http"
    assert split_study(uri) == ("s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http", "st")
    assert study_uri(*split_study(uri)) == uri
    # local paths resolve against the working directory, an absolute one is kept whatever the directory
    monkeypatch.chdir(tmp_path)
    assert split_study("/tmp") == ("/", "tmp")
    assert split_study("res/st") == (str(tmp_path / "res"), "st")
    assert StudyLocation.from_study_dir("res/st").display == str(tmp_path / "res" / "st")
    assert StudyLocation.open("res", "st").results == str(tmp_path / "res")
    assert split_study("file:///data/res/st") == ("file:///data/res", "st")


@pytest.mark.parametrize("bad, says", [
    ("s3://tvae/st?endpoint_override=127.0.0.1:45112&scheme=http/s3b",
     "s3://tvae/st/s3b?endpoint_override=127.0.0.1:45112&scheme=http"),
    ("s3://bucket", "names no study directory"),
    ("/", "does not name a study directory"),
])
def test_a_malformed_location_is_named_with_the_form_expected(bad, says):
    with pytest.raises(LocationError, match=None) as info:
        split_study(bad)
    assert says in str(info.value)


def test_status_of_an_absolute_path_from_another_directory(tmp_path):
    out = _run("study.status", "/tmp", cwd=tmp_path)
    assert out.returncode == 2
    assert "no study at /tmp " in out.stderr, out.stderr


def test_status_and_verify_read_a_study_uri_through_its_endpoint(s3, tmp_path):
    uri = s3.study(s3.results(), "st")
    for command in ("study.status", "study.verify"):
        out = _run(command, uri, cwd=tmp_path)
        # the endpoint in the query was used (no attempt at the real AWS endpoint): the store says "no study"
        assert out.returncode == 2 and f"no study at {uri}" in out.stderr, out.stderr
    malformed = _run("study.status", uri.replace("/st?", "?") + "/st", cwd=tmp_path)
    assert malformed.returncode == 2 and "belongs to the path" in malformed.stderr, malformed.stderr


# --------------------------------------------------------------------------- the Optuna journal on the store

def _journal_object(location: StudyLocation) -> bytes:
    return location.read_bytes(location.journal_path) if location.exists(location.journal_path) else b""


def test_the_journal_reaches_the_store_within_its_period_and_before_any_snapshot(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(object_journal, "SYNC_PERIOD_S", 1.0)
    location = StudyLocation.open(s3.results(), "j")
    storage = open_storage(location)
    study = optuna.create_study(storage=storage, study_name="j")
    for _ in range(3):
        study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 1.0)
    local = Path(object_journal._MIRRORS[location.display].local).read_bytes()
    wait_for(lambda: _journal_object(location) == local, 20, "the journal upload")   # by the background thread
    # pickling (what a Ray Tune snapshot does with the searcher) uploads first
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 2.0)
    blob = pickle.dumps(storage)
    assert _journal_object(location) == Path(object_journal._MIRRORS[location.display].local).read_bytes()
    uploads = object_journal._MIRRORS[location.display].uploads
    records = _journal_object(location).count(b"\n")
    assert uploads < records / 2, f"{uploads} uploads for {records} records: appends must be batched"
    # another process, another directory, no local state: the store alone gives the trials back
    object_journal.sync_all()
    code = ("import pickle, sys, optuna; s = pickle.loads(sys.stdin.buffer.read()); "
            "print(len(optuna.load_study(study_name='j', storage=s).trials))")
    out = subprocess.run([sys.executable, "-c", code], input=blob, cwd=tmp_path, env=driver_env(),
                         capture_output=True, timeout=120)
    assert out.stdout.decode().strip() == "4", out.stderr.decode()[-2000:]


def _study_with_parts(location: StudyLocation) -> None:
    location.write_json(location.join("study.json"), {"study": location.name})
    recorder.write_part(location, "t1", [{"study": location.name, "trial_id": "t1", "attempt": 0, "epoch": e,
                                          "phase": "train", "loss": 1.0 / (e + 1)} for e in range(3)])


def test_preflight_repairs_a_torn_journal_object_and_keeps_the_torn_record(s3):
    location = StudyLocation.open(s3.results(), "torn")
    _study_with_parts(location)
    location.write_atomic(location.journal_path, b'{"op_code": 0}\n{"op_code": 1, "tr')
    notes = preflight.run(location)
    assert len(notes) == 1 and "torn record" in notes[0]
    assert location.read_bytes(location.journal_path) == b'{"op_code": 0}\n'
    kept = [p for p in location.list_files(location.path) if ".torn-" in p]
    assert len(kept) == 1 and location.read_bytes(kept[0]) == b'{"op_code": 1, "tr'


def test_preflight_refuses_a_corrupt_journal_or_part_and_a_missing_journal(s3):
    location = StudyLocation.open(s3.results(), "bad")
    _study_with_parts(location)
    location.write_atomic(location.journal_path, b'{"op_code": 0}\nnot json\n{"op_code": 1}\n')
    with pytest.raises(preflight.PreflightError, match="corrupt at line 2"):
        preflight.run(location)
    location.delete_file(location.journal_path)
    location.write_atomic(location.join("tune", "experiment_state-x.json"), b"{}")
    with pytest.raises(preflight.PreflightError, match="has no optuna.journal"):
        preflight.run(location)
    location.write_atomic(location.journal_path, b"")
    (_, _, part), = recorder.list_parts(location, "t1")
    location.write_atomic(part, location.read_bytes(part)[:40])       # a torn Parquet object
    before = location.read_bytes(location.journal_path)
    with pytest.raises(preflight.PreflightError, match="trial t1, epochs 0-2"):
        preflight.run(location)
    assert location.read_bytes(location.journal_path) == before        # refused: nothing changed


def test_preflight_moves_an_unreadable_trials_table_aside(s3):
    location = StudyLocation.open(s3.results(), "table")
    _study_with_parts(location)
    location.write_atomic(location.join("trials.parquet"), b"PAR1 torn")
    notes = preflight.run(location)
    assert "moved to" in notes[0] and not location.exists(location.join("trials.parquet"))


# ---------------------------------------------------------------------------------- analysis from the store

def test_scan_and_detect_read_a_study_uri(s3, tmp_path):
    from analysis.scan import scan

    location = StudyLocation.open(s3.results(), "scan")
    _study_with_parts(location)
    frame = scan(location.display).collect()
    assert frame.height == 3 and set(frame["trial_id"]) == {"t1"}
    out = _run("analysis.detect", location.display, "--no-events", cwd=tmp_path)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------------- whole studies on the store

def _assert_complete(s3, uri: str, cwd: Path, trials: int = 6, epochs: int = 5) -> None:
    location = StudyLocation.from_study_dir(uri)
    table = recorder.read_epochs(location)
    pairs = list(zip(table["trial_id"].to_pylist(), table["epoch"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == trials * epochs
    verify = _run("study.verify", uri, "--complete", cwd=cwd)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = _run("analysis.report", uri, cwd=cwd)
    assert report.returncode == 0, report.stderr
    assert location.exists(location.join("report", "report.html"))
    assert any(line.startswith(location.display.partition("?")[0] + "/report/report.html")
               for line in report.stdout.splitlines()), report.stdout


@pytest.mark.chaos
@pytest.mark.fast
def test_smoke_study_on_s3_is_complete_and_its_commands_take_the_study_uri(s3, tmp_path):
    results = s3.results()
    uri = s3.study(results, "s3smoke")
    studies = Studies(tmp_path)
    try:
        rc, out = studies.run("--space", "smoke", "--trials", "6", "--epochs", "5", "--name", "s3smoke",
                              "--results", results, timeout=420)
    finally:
        studies.cleanup()
    assert rc == 0, out[-4000:]
    for command in ("study.status", "analysis.report"):
        assert f"python -m {command} '{uri}'" in out, out[-2000:]
    assert f"python -m study.object_journal '{uri}'" in out
    _assert_complete(s3, uri, tmp_path)
    journal_puts = [r for r in s3.requests("/s3smoke/optuna.journal") if '"PUT' in r]
    lines = StudyLocation.from_study_dir(uri).read_bytes(StudyLocation.from_study_dir(uri).journal_path).count(b"\n")
    assert len(journal_puts) < lines / 2, f"{len(journal_puts)} journal uploads for {lines} records"


@pytest.mark.chaos
def test_sigkilled_driver_resumes_from_the_store_alone_in_another_directory(s3, tmp_path):
    results = s3.results()
    uri = s3.study(results, "s3kill")
    location = StudyLocation.from_study_dir(uri)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    studies = Studies(tmp_path)
    try:
        driver = studies.start("--space", "smoke", "--trials", "6", "--epochs", "5", "--concurrency", "2",
                               "--checkpoint-every", "2", "--name", "s3kill", "--results", results, cwd=first)

        def checkpoint_recorded() -> bool:
            states = sorted(p for p in location.list_files(location.tune_dir) if "experiment_state" in p)
            return bool(states) and b"checkpoint_0000" in location.read_bytes(states[-1])

        wait_for(checkpoint_recorded, 300, "a trial checkpoint in Tune's stored experiment", driver, poll=1.0)
        driver.signal(signal.SIGKILL)
        assert driver.wait(60) == -signal.SIGKILL
        driver.kill_group()
        resume = driver.resume_command()
        resumed = studies.start(*resume, cwd=second)
        assert resumed.wait(420) == 0, resumed.output()[-4000:]
        resumed.kill_group()
    finally:
        studies.cleanup()
    assert not any(first.iterdir()) and not any(second.iterdir()), "the driver wrote to its working directory"
    _assert_complete(s3, uri, second)
