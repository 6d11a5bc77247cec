"""analysis.report and the analysis.detect CLI, run as real processes on real Parquet studies."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from analysis import report as report_cli
from analysis.detect import EVENT_SCHEMA
from analysis.synthetic import EXPECTED_CLASS, KINDS, dataset, write_study

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def make_study(root: Path, name: str, kinds: list[str], *, seed: int = 0, trials_table: bool = True) -> Path:
    df = dataset(kinds, epochs=200, seed=seed, study=name)
    write_study(df, root, rows_per_part=60)
    (root / "study.json").write_text(json.dumps({"study": name, "metric": "heldout_acc", "mode": "max",
                                                 "arguments": {"space": "synthetic"}}))
    if trials_table:
        ids = df["trial_id"].unique(maintain_order=True).to_list()
        pl.DataFrame({"trial_id": ids, "status": ["COMPLETED"] * (len(ids) - 1) + ["RUNNING"],
                      "attempts": [1] * len(ids),
                      "param_weight_decay": [float(i % 3) for i in range(len(ids))],
                      "param_train_fraction": [0.3 + 0.05 * i for i in range(len(ids))]}
                     ).write_parquet(root / "trials.parquet")
    return root


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("studies")
    a = make_study(base / "alpha", "alpha", [KINDS[i % 5] for i in range(10)], seed=1)
    b = make_study(base / "beta", "beta", ["grokking", "memorization", "confusion"], seed=2)
    return a, b


@pytest.fixture(scope="module")
def report(studies, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    proc = run("analysis.report", str(studies[0]), "--compare", str(studies[1]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_report_writes_a_self_contained_page_summary_and_events(report: Path, studies):
    assert sorted(p.name for p in report.iterdir()) == ["classes.parquet", "events.parquet", "report.html",
                                                        "summary.md"]
    page = (report / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [alt for alt, _ in images] == ["Class counts", "Learning curves", "Event timeline", "Phase diagram",
                                          "Parameter importance"]
    images = [img for _, img in images]
    for img in images:
        assert base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(http|file|/)', page)    # nothing outside the page
    for name in ("alpha", "beta", "Phase diagram", "Parameter importance", "Event timeline", "provisional"):
        assert name in page
    events = pl.read_parquet(report / "events.parquet")
    assert events.schema == pl.Schema(EVENT_SCHEMA)
    assert set(events["study"]) == {"alpha", "beta"}
    classes = pl.read_parquet(report / "classes.parquet").filter(pl.col("pair") == "acc")
    for row in classes.iter_rows(named=True):
        assert row["class"] == EXPECTED_CLASS[row["trial_id"].split("-", 1)[1]]
    summary = (report / "summary.md").read_text()
    assert "## Grokking trials" in summary and "| alpha |" in summary and "| beta |" in summary
    assert "comprehension 2, confusion 2, grokking 4, memorization 2" in summary    # alpha's acc classes


def test_report_defaults_to_study_dir_and_handles_a_foreign_dataset(tmp_path: Path):
    csv = tmp_path / "theirs.csv"
    df = dataset(["grokking", "memorization"], epochs=150, seed=4, study="theirs")
    df.select("study", "trial_id", "epoch", "train_acc", "heldout_acc").write_csv(csv)
    folder = tmp_path / "their-curves"      # the folder's name is not the study's
    folder.mkdir()
    pl.read_csv(csv).write_parquet(folder / "curves.parquet")
    assert report_cli.main([str(folder)]) == 0
    page = (folder / "report" / "report.html").read_text()
    assert "No trials.parquet" in page
    summary = (folder / "report" / "summary.md").read_text()
    assert "| theirs | " in summary and "| 2 | 300 |" in summary      # 2 trials, 300 epoch rows
    classes = pl.read_parquet(folder / "report" / "classes.parquet")
    assert dict(classes.select("trial_id", "class").iter_rows()) == {
        "t00000-grokking": "grokking", "t00001-memorization": "memorization"}


def test_report_on_a_study_being_written(tmp_path: Path):
    root = tmp_path / "live"
    (root / "epochs").mkdir(parents=True)
    (root / "study.json").write_text(json.dumps({"study": "live"}))
    assert report_cli.main([str(root)]) == 0
    assert "No epoch rows yet" in (root / "report" / "report.html").read_text()
    go = root / "go"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        from analysis.synthetic import dataset
        df = dataset(["grokking"] * 4, epochs=200, seed=5, study="live")
        while not os.path.exists({str(go)!r}):   # start together with the reader
            time.sleep(0.05)
        for first in range(0, 200, 20):
            for (tid,), part in df.filter(df["epoch"] // 20 == first // 20).group_by("trial_id"):
                folder = os.path.join({str(root)!r}, "epochs", f"trial_id={{tid}}")
                os.makedirs(folder, exist_ok=True)
                tmp = os.path.join(folder, ".tmp-part.partial")
                part.write_parquet(tmp)
                os.replace(tmp, os.path.join(folder, f"part-{{first:06d}}-{{first + 19:06d}}.parquet"))
            time.sleep(0.5)
        """)], cwd=ROOT, env=ENV)
    seen_while_writing: list[int] = []   # epochs per trial in each report made while the writer ran
    try:
        go.touch()
        while writer.poll() is None:
            assert report_cli.main([str(root)]) == 0
            if writer.poll() is None:
                summary = (root / "report" / "summary.md").read_text()
                rows = pl.read_parquet(root / "report" / "classes.parquet")
                seen_while_writing.append(int(rows["n_epochs"].max()) if rows.height else 0)
                assert "Study report" in summary
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    # the reader really overlapped the writer: some report saw a part of the epochs, not none and not all
    assert any(0 < n < 200 for n in seen_while_writing), seen_while_writing
    events = pl.read_parquet(root / "report" / "events.parquet")
    assert events.schema == pl.Schema(EVENT_SCHEMA)


def test_compute_returns_frames_draw_returns_figures_and_neither_writes(studies, tmp_path: Path):
    out = tmp_path / "never-written"
    options = report_cli.ReportOptions(studies=(studies[1],), out=out)
    before = sorted(p.relative_to(studies[1]) for p in studies[1].rglob("*"))
    data = report_cli.compute(options)
    assert isinstance(data.trial_summary, pl.DataFrame) and isinstance(data.curves, pl.DataFrame)
    assert not hasattr(data, "figures")
    figs = report_cli.draw(data)
    assert {"curves", "timeline", "classes"} <= set(figs)
    assert all(png.startswith(b"\x89PNG") for png in figs.values())
    assert not out.exists() and sorted(p.relative_to(studies[1]) for p in studies[1].rglob("*")) == before
    page = report_cli.render_html(data, figs)
    assert base64.b64encode(figs["curves"]).decode() in page


def test_bad_input_exits_2_and_keeps_the_previous_report(report: Path, studies, tmp_path: Path, capsys):
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    assert report_cli.main([str(studies[0]), "--out", str(report), "--pair", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    assert report_cli.main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert report_cli.main([str(studies[0]), "--out", str(tmp_path / "o"), "--params", "lr", "wd"]) == 2
    err = capsys.readouterr().err
    assert "'lr'" in err and "weight_decay" in err
    assert report_cli.main([str(studies[0]), "--out", str(tmp_path / "o"), "--direction", "acc=up"]) == 2
    assert "acc=up" in capsys.readouterr().err
    (studies[1] / "trials.parquet").rename(studies[1] / "trials.bak")
    try:
        (studies[1] / "trials.parquet").write_bytes(b"not parquet")
        assert report_cli.main([str(studies[1]), "--out", str(tmp_path / "o2")]) == 2
        assert "trials.parquet" in capsys.readouterr().err
    finally:
        (studies[1] / "trials.bak").replace(studies[1] / "trials.parquet")


def test_detect_cli_json_lines_and_errors(studies):
    proc = run("analysis.detect", str(studies[1]), "--pair", "acc", "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    trials = [r for r in records if r["record"] == "trial"]
    events = [r for r in records if r["record"] == "event"]
    assert {r["trial_id"]: r["class"] for r in trials} == {
        "t00000-grokking": "grokking", "t00001-memorization": "memorization", "t00002-confusion": "confusion"}
    grok = next(r for r in trials if r["class"] == "grokking")
    assert grok["delay"] == grok["t_gen"] - grok["t_mem"] and {"t_mem", "t_gen", "delay"} <= set(grok)
    assert records.index(trials[-1]) < records.index(events[0])          # trials first, then events
    assert all(isinstance(e["params"], dict) and e["rule"] for e in events)
    bad = run("analysis.detect", str(studies[1]), "--pair", "Q")
    assert bad.returncode == 2 and "pairs in the data: acc, loss" in bad.stderr and "Traceback" not in bad.stderr


def test_detect_cli_text_and_missing_path(studies, capsys):
    from analysis.detect import cli as detect_cli
    assert detect_cli.main([str(studies[1])]) == 0
    out = capsys.readouterr().out
    assert "grokking" in out and "events (" in out
    assert detect_cli.main([str(studies[1]) + "/nothing-here"]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_direction_of_the_ranking_metric_decides_the_ranking(studies, tmp_path: Path):
    """--direction METRIC=min for the ranking metric ranks by its minimum (study.json says max); --mode wins."""
    def ranking(**kw):
        data = report_cli.compute(report_cli.ReportOptions(studies=(studies[0],), out=tmp_path, **kw))
        best = data.trial_summary[f"best_{data.metric}"]
        return data.mode, best

    mode, best_default = ranking()
    assert mode == "max"
    mode, best_min = ranking(directions=(("heldout_acc", "min"),))
    assert mode == "min" and (best_min <= best_default).all() and (best_min < best_default).any()
    assert ranking(directions=(("heldout_acc", "min"),), mode="max")[0] == "max"
    assert ranking(directions=(("train_acc", "min"),))[0] == "max"      # another metric's direction: no effect


def test_python_m_analysis_detect_runs_the_detectors_module_once():
    """`python -m analysis.detect` runs `analysis/detect/__main__.py`; the detectors are the one imported module
    (a module run as __main__ and imported again would define every detector twice)."""
    code = textwrap.dedent("""
        import runpy, sys
        import analysis.detect as detect
        sys.argv = ["analysis.detect", "--help"]
        try:
            runpy.run_module("analysis.detect", run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        from analysis.detect import cli
        assert cli.grokking is detect.grokking and sys.modules["analysis.detect"] is detect
        print("once")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("once"), proc.stderr
