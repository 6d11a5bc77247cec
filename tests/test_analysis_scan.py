"""analysis.scan over real Parquet files: study dirs, many studies, files, directories, globs, bad input,
and a study that is being written by another process while it is read."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import ScanError, scan
from analysis.synthetic import dataset, write_study


def _rows(study: str, trial: str, epochs: range, **metrics) -> pa.Table:
    n = len(epochs)
    cols = {"study": [study] * n, "trial_id": [trial] * n, "epoch": pa.array(list(epochs), pa.int64())}
    cols.update({k: [float(v)] * n for k, v in metrics.items()})
    return pa.table(cols)


@pytest.fixture()
def study_dir(tmp_path: Path) -> Path:
    root = tmp_path / "s1"
    for trial in ("0002", "a1"):
        folder = root / "epochs" / f"trial_id={trial}"
        folder.mkdir(parents=True)
        pq.write_table(_rows("s1", trial, range(0, 5), train_acc=0.5), folder / "part-000000-000004.parquet")
        pq.write_table(_rows("s1", trial, range(5, 8), train_acc=0.9), folder / "part-000005-000007.parquet")
    # a trial that also has a held-out split: the schema is the union
    folder = root / "epochs" / "trial_id=b7"
    folder.mkdir(parents=True)
    pq.write_table(_rows("s1", "b7", range(0, 4), train_acc=0.4, heldout_acc=0.1), folder / "part-0-3.parquet")
    (root / "study.json").write_text("{}")
    return root


def test_study_dir_reads_all_parts_keeps_trial_ids_as_strings_and_unions_schemas(study_dir: Path):
    lf = scan(study_dir)
    assert isinstance(lf, pl.LazyFrame)
    df = lf.collect()
    assert df.columns[:3] == ["study", "trial_id", "epoch"]
    assert df.schema["trial_id"] == pl.String and df.schema["epoch"] == pl.Int64
    assert sorted(df["trial_id"].unique()) == ["0002", "a1", "b7"]   # "0002" not parsed as the number 2
    assert df.height == 8 + 8 + 4
    assert df.filter(pl.col("trial_id") == "a1")["heldout_acc"].null_count() == 8
    assert df.filter(pl.col("trial_id") == "b7")["heldout_acc"].to_list() == [0.1] * 4


def test_hive_partition_key_fills_trial_id_when_a_file_lacks_the_column(tmp_path: Path):
    folder = tmp_path / "s" / "epochs" / "trial_id=007"
    folder.mkdir(parents=True)
    pq.write_table(_rows("s", "x", range(3), train_acc=1.0).drop(["trial_id"]), folder / "part-0-2.parquet")
    df = scan(tmp_path / "s").collect()
    assert df["trial_id"].to_list() == ["007"] * 3


def test_many_studies_single_file_plain_directory_and_glob(study_dir: Path, tmp_path: Path):
    other = tmp_path / "s2"
    write_study(dataset(["grokking", "confusion"], epochs=20, study="s2"), other)
    both = scan([study_dir, other]).collect()
    assert set(both["study"].unique()) == {"s1", "s2"}
    assert both.height == 20 + 40

    plain = tmp_path / "plain"
    plain.mkdir()
    dataset(["memorization"], epochs=10, study="p").write_parquet(plain / "curves.parquet")
    assert scan(plain / "curves.parquet").collect().height == 10
    assert scan(plain).collect().height == 10
    globbed = scan(str(tmp_path / "s*" / "epochs" / "**" / "*.parquet")).collect()
    assert globbed.height == both.height
    # the same file named twice is read once
    assert scan([plain, plain / "curves.parquet"]).collect().height == 10


def test_foreign_csv_with_only_the_required_columns(tmp_path: Path):
    csv = tmp_path / "curves.csv"
    csv.write_text("study,trial_id,epoch,train_acc,heldout_acc\n"
                   + "".join(f"theirs,run-1,{e},{min(1.0, e / 10):.2f},0.01\n" for e in range(30)))
    pl.read_csv(csv).write_parquet(tmp_path / "curves.parquet")
    df = scan(tmp_path / "curves.parquet").collect()
    assert df.schema["trial_id"] == pl.String and df.height == 30


def test_bad_inputs_name_the_problem(tmp_path: Path, study_dir: Path):
    with pytest.raises(ScanError, match="no such file"):
        scan(tmp_path / "nope")
    with pytest.raises(ScanError, match="matches no Parquet"):
        scan(str(tmp_path / "nope*" / "*.parquet"))
    with pytest.raises(ScanError, match="no Parquet files"):
        (tmp_path / "empty").mkdir()
        scan(tmp_path / "empty")
    assert scan(tmp_path / "empty", allow_empty=True).collect().height == 0
    corrupt = study_dir / "epochs" / "trial_id=a1" / "part-000008-000009.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ScanError, match="part-000008-000009.parquet"):
        scan(study_dir)
    corrupt.unlink()
    no_epoch = tmp_path / "noepoch.parquet"
    pl.DataFrame({"study": ["x"], "trial_id": ["t"], "step": [1]}).write_parquet(no_epoch)
    with pytest.raises(ScanError, match="epoch"):
        scan(no_epoch)
    text = tmp_path / "x.csv"
    text.write_text("a,b\n")
    with pytest.raises(ScanError, match="not a Parquet file"):
        scan(text)


def test_temporary_and_hidden_files_are_skipped(study_dir: Path):
    folder = study_dir / "epochs" / "trial_id=a1"
    (folder / ".part-000008-000009.parquet").write_bytes(b"half written")
    (folder / "part-000008-000009.parquet.tmp").write_bytes(b"half written")
    (folder / "_tmp-000008.parquet").write_bytes(b"half written")
    assert scan(study_dir).collect().height == 20


WRITER = textwrap.dedent("""
    import os, sys, time
    import pyarrow as pa, pyarrow.parquet as pq
    root, parts = sys.argv[1], int(sys.argv[2])
    for i in range(parts):
        trial = f"t{i % 3}"
        folder = os.path.join(root, "epochs", f"trial_id={trial}")
        os.makedirs(folder, exist_ok=True)
        first = (i // 3) * 10
        table = pa.table({"study": ["live"] * 10, "trial_id": [trial] * 10,
                          "epoch": pa.array(range(first, first + 10), pa.int64()), "train_acc": [0.5] * 10})
        tmp = os.path.join(folder, f".part-{first:06d}.parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, os.path.join(folder, f"part-{first:06d}-{first + 9:06d}.parquet"))
        time.sleep(0.01)
""")


def test_scan_while_another_process_writes_the_study(tmp_path: Path):
    root = tmp_path / "live"
    (root / "epochs").mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), "60"])
    seen = []
    try:
        while writer.poll() is None:
            df = scan(root, allow_empty=True).collect()
            assert df.height % 10 == 0                      # only whole files are ever read
            assert df.select(pl.struct("trial_id", "epoch").is_unique().all()).item()
            seen.append(df.height)
            time.sleep(0.005)
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert seen == sorted(seen)                             # rows only ever appear
    assert scan(root).collect().height == 600


def test_a_scan_keeps_its_file_list_when_new_files_appear(study_dir: Path):
    lf = scan(study_dir)
    folder = study_dir / "epochs" / "trial_id=c9"
    folder.mkdir()
    pq.write_table(_rows("s1", "c9", range(3), train_acc=1.0), folder / "part-0-2.parquet")
    assert lf.collect().height == 20
    assert scan(study_dir).collect().height == 23


def test_required_column_types(tmp_path: Path):
    ints = tmp_path / "int_ids.parquet"
    pl.DataFrame({"study": ["s", "s"], "trial_id": [7, 7], "epoch": [0, 1], "train_acc": [0.1, 0.2]}).write_parquet(ints)
    df = scan(ints).collect()
    assert df.schema["trial_id"] == pl.String and df["trial_id"].to_list() == ["7", "7"]
    text_epoch = tmp_path / "text_epoch.parquet"
    pl.DataFrame({"study": ["s"], "trial_id": ["a"], "epoch": ["0"]}).write_parquet(text_epoch)
    with pytest.raises(ScanError, match=r"text_epoch.parquet: column 'epoch' is String, expected an integer"):
        scan(text_epoch)


def test_analysis_never_imports_ray_torch_or_study():
    code = ("import sys, analysis, analysis.detect, analysis.report, analysis.bench; "
            "print(sorted(m for m in ('ray', 'torch', 'study', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
