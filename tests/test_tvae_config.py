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
