import subprocess
import sys
from pathlib import Path

import pytest

from tvae import config
from tvae.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_type_checked_and_unknown_keys_named():
    cfg = config.build("v5_12_4", overrides={"loss.rank.weight": 1, "schedule.kind": "cosine",
                                             "phases.structure_start": 10})
    assert cfg.loss.rank.weight == 1.0 and isinstance(cfg.loss.rank.weight, float)
    assert cfg.schedule.kind == "cosine" and cfg.phases.structure_start == 10
    with pytest.raises(ConfigError, match="loss.rank.wieght"):
        config.build("v5_12_4", overrides={"loss.rank.wieght": 1.0})
    with pytest.raises(ConfigError, match="loss.rank.weight: expected a float"):
        config.build("v5_12_4", overrides={"loss.rank.weight": "high"})
    with pytest.raises(ConfigError, match="phases.structure_start: expected an int"):
        config.build("v5_12_4", overrides={"phases.structure_start": True})
    with pytest.raises(ConfigError, match="schedule.kind"):
        config.build("v5_12_4", overrides={"schedule.kind": "exponential"})
    with pytest.raises(ConfigError, match="data.train_fraction"):
        config.build("v5_12_4", overrides={"data.train_fraction": 1.5})
    with pytest.raises(ConfigError, match="unknown preset"):
        config.build("v6")


def test_yaml_round_trip_and_unknown_yaml_key(tmp_path):
    cfg = config.build("v5_12_4_extended", overrides={"data.train_fraction": 0.7})
    path = tmp_path / "c.yaml"
    path.write_text(config.dump_yaml(cfg))
    again = config.load_yaml(path)
    assert config.to_dict(again) == config.to_dict(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  rank:\n    weigth: 0.1\n")
    with pytest.raises(ConfigError, match="loss.rank.weigth"):
        config.load_yaml(bad)


def test_cli_refuses_bad_input_with_exit_code_2(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "tvae.train", *args], cwd=ROOT, capture_output=True, text=True)

    r = run("--out", str(tmp_path / "a"), "--set", "loss.rnk.weight=1")
    assert r.returncode == 2 and "loss.rnk" in r.stderr
    r = run("--out", str(tmp_path / "a"), "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr
    r = run("--out", str(tmp_path / "nothing"), "--resume")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("3", 3), ("-2", -2), ("0.5", 0.5), (".5", 0.5), ("1.", 1.0), ("+2", 2), ("true", True),
    ("false", False), ("null", None), ("[1, 2.5]", [1, 2.5]), ('["a", "b"]', ["a", "b"]), ("cosine", "cosine"),
    ('"3"', "3"), ("yes", "yes"), ('{"a": 1}', {"a": 1}),
])
def test_one_set_grammar(text, value):
    parsed = config.parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_the_set_grammar_is_the_same_in_every_cli():
    from study.run import parse_sets
    from tvae import configlib, modular_addition

    items = ["optim.lr=1e-3", "steps_per_epoch=3", "a=true", "b=null", "c=[1, 2]"]
    expected = {"optim.lr": 1e-3, "steps_per_epoch": 3, "a": True, "b": None, "c": [1, 2]}
    assert parse_sets(items) == configlib.parse_assignments(items) == expected
    run = modular_addition.make_run(configlib.parse_assignments(["optim.lr=1e-3", "data.modulus=7"]), epochs=1)
    assert run.config.optim.lr == 1e-3
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        configlib.parse_assignment("optim.lr")


def _train_cli(*args):
    return subprocess.run([sys.executable, "-m", "tvae.train", "--quiet", *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_cli_set_takes_exponent_notation_and_resume_accepts_the_same_command(tmp_path):
    out = str(tmp_path / "run")
    command = ["--preset", "tiny", "--epochs", "1", "--seed", "0", "--set", "optim.lr=1e-3", "--out", out]
    r = _train_cli(*command)
    assert r.returncode == 0, r.stderr
    assert config.load_yaml(tmp_path / "run" / "config.yaml").optim.lr == 1e-3
    r = _train_cli(*command, "--resume", "--epochs", "2")       # the same command plus --resume; --epochs grows
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "run" / "epochs.parquet").column("epoch").to_pylist() == [0, 1]


def test_cli_resume_refuses_a_different_option_naming_the_key_and_both_values(tmp_path):
    out = str(tmp_path / "run")
    assert _train_cli("--preset", "tiny", "--epochs", "1", "--seed", "0", "--out", out).returncode == 0
    before = (tmp_path / "run" / "epochs.parquet").read_bytes()
    r = _train_cli("--preset", "tiny", "--epochs", "2", "--seed", "3", "--out", out, "--resume")
    assert r.returncode == 2
    assert "seed: the checkpoint has 0, the command gives 3" in r.stderr
    r = _train_cli("--out", out, "--resume", "--set", "optim.lr=1e-3", "--preset", "v5_12_4")
    assert r.returncode == 2
    assert "preset: the checkpoint has 'tiny', the command gives 'v5_12_4'" in r.stderr
    assert "optim.lr" not in r.stderr            # the tiny preset's lr is 1e-3 too: it matches
    assert (tmp_path / "run" / "epochs.parquet").read_bytes() == before
