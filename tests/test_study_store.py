"""The study's on-disk pieces without Ray: layout, crash-consistent part files, trials table, Optuna journal."""
from __future__ import annotations

import os

import optuna
import pyarrow.parquet as pq
import pytest

from study import recorder, trials_table
from study.layout import StudyLocation
from study.optuna_store import ArrowJournalBackend, fail_orphans, open_storage, repair_torn_tail
from optuna.storages.journal import JournalStorage


def _rows(trial_id: str, first: int, last: int, attempt: int = 0) -> list[dict]:
    return [{"study": "s", "trial_id": trial_id, "attempt": attempt, "epoch": e, "phase": "train",
             "loss": 1.0 / (e + 1), "frozen_A": e > 1, "heldout_acc": None if e == first else 0.5}
            for e in range(first, last + 1)]


@pytest.fixture(params=["path", "file-uri", "mock-uri"])
def location(request, tmp_path) -> StudyLocation:
    if request.param == "path":
        return StudyLocation.open(str(tmp_path / "results"), "s")
    if request.param == "file-uri":
        return StudyLocation.open(f"file://{tmp_path}/results", "s")
    return StudyLocation.open("mock:///results", "s")  # an in-memory, non-local pyarrow filesystem


def test_parts_are_whole_typed_and_truncated_from_a_restart_epoch(location):
    recorder.write_part(location, "t1", _rows("t1", 0, 2))
    recorder.write_part(location, "t1", _rows("t1", 3, 5))
    recorder.write_part(location, "t2", _rows("t2", 0, 1))
    table = recorder.read_epochs(location)
    assert table.num_rows == 8
    assert str(table.schema.field("epoch").type) == "int64"
    assert str(table.schema.field("frozen_A").type) == "bool"
    assert str(table.schema.field("heldout_acc").type) == "double"
    # a restart from the checkpoint at epoch 3 removes the part written after it, keeps the earlier one
    removed = recorder.truncate_parts(location, "t1", from_epoch=3)
    assert [os.path.basename(p) for p in removed] == ["part-000003-000005.parquet"]
    assert [(f, l) for f, l, _ in recorder.list_parts(location, "t1")] == [(0, 2)]
    # a part that straddles the restart epoch means the data and the checkpoint disagree: refuse
    with pytest.raises(RuntimeError, match="spans epoch 1"):
        recorder.truncate_parts(location, "t1", from_epoch=1)
    assert sorted(recorder.trial_ids(location)) == ["t1", "t2"]


def test_part_metadata_and_refusals(location):
    path = recorder.write_part(location, "t1", _rows("t1", 0, 1))
    with location.fs.open_input_file(path) as handle:
        meta = pq.read_schema(handle).metadata
    assert meta[b"tvae_study.schema_version"] == b"1"
    with pytest.raises(ValueError, match="not consecutive"):
        recorder.write_part(location, "t1", _rows("t1", 0, 0) + _rows("t1", 2, 2))
    with pytest.raises(ValueError, match="required column 'trial_id'"):
        recorder.rows_to_table([{"study": "s", "epoch": 0}])
    with pytest.raises(TypeError, match="not a number"):
        recorder.rows_to_table([{"study": "s", "trial_id": "t", "epoch": 0, "loss": [1, 2]}])


def test_atomic_write_leaves_no_temporary_and_readers_skip_partials(tmp_path):
    location = StudyLocation.open(str(tmp_path), "s")
    recorder.write_part(location, "t1", _rows("t1", 0, 1))
    partition = location.trial_partition("t1")
    assert os.listdir(partition) == ["part-000000-000001.parquet"]
    # a temporary left by a writer killed mid-write is never read and is removed on the trial's restart
    stray = os.path.join(partition, ".tmp-dead-part-000002-000003.parquet.partial")
    open(stray, "wb").write(b"PAR1 torn")
    assert recorder.read_epochs(location).num_rows == 2
    recorder.truncate_parts(location, "t1", from_epoch=2)
    assert not os.path.exists(stray)


def test_bad_locations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid study name"):
        StudyLocation.open(str(tmp_path), "a/b")
    with pytest.raises(ValueError, match="not a usable filesystem URI"):
        StudyLocation.open("nosuchscheme://bucket/x", "s")
    loc = StudyLocation.from_study_dir(f"file://{tmp_path}/res/my-study")
    assert loc.name == "my-study" and loc.path == f"{tmp_path}/res/my-study"


def test_trials_table_round_trip(location):
    records = [
        trials_table.TrialRecord("t2", "DIVERGED", 1, 3, {"lr": 0.1, "kind": "cosine"}, {}, {"loss": 2.0},
                                 reason="epoch 3: loss is nan"),
        trials_table.TrialRecord("t1", "COMPLETED", 2, 5, {"lr": 0.01, "phases": [1, 2]}, {"Q": 1.5},
                                 {"Q": 1.4, "loss": float("nan")}),
    ]
    trials_table.write(location, records)
    rows = trials_table.read(location).to_pylist()
    assert [r["trial_id"] for r in rows] == ["t1", "t2"]
    assert rows[0]["best_Q"] == 1.5 and rows[0]["final_loss"] is None and rows[0]["param_phases"] == "[1, 2]"
    assert rows[1]["status"] == "DIVERGED" and rows[1]["reason"].startswith("epoch 3")
    with pytest.raises(ValueError, match="unknown trial status"):
        trials_table.TrialRecord("t3", "DONE", 1, 1)


def test_journal_torn_tail_is_repaired_and_orphans_failed(tmp_path):
    location = StudyLocation.open(str(tmp_path), "s")
    study = optuna.create_study(study_name="s", storage=open_storage(location))
    live = study.ask()
    live.set_user_attr("tune_trial_id", "live")
    orphan = study.ask()
    orphan.set_user_attr("tune_trial_id", "lost")
    done = study.ask()
    study.tell(done, 1.0)
    with open(location.journal_path, "ab") as handle:   # a driver killed mid-append
        handle.write(b'{"op_code": 5, "worker_id": "x", "trial_id"')
    assert repair_torn_tail(location.journal_path) > 0
    reopened = optuna.load_study(study_name="s", storage=open_storage(location))
    assert fail_orphans(reopened, {"live"}, "test") == [orphan.number]
    states = {t.number: t.state.name for t in reopened.get_trials()}
    assert states == {live.number: "RUNNING", orphan.number: "FAIL", done.number: "COMPLETE"}


def test_arrow_journal_backend_on_a_non_local_filesystem():
    location = StudyLocation.open("mock:///results", "s")
    storage = JournalStorage(ArrowJournalBackend(location, location.journal_path))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for value in (1.0, 3.0):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, value)
    again = optuna.load_study(study_name="s", storage=JournalStorage(ArrowJournalBackend(location,
                                                                                        location.journal_path)))
    assert [t.value for t in again.trials] == [1.0, 3.0] and again.best_value == 3.0

