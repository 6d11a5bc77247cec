"""The study CLI's refusals, the search spaces, and the searcher's bookkeeping (no Ray cluster needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import search_spaces
from study import run as study_run
from study import status as study_status
from study.config import StudyConfig
from study.layout import StudyLocation

REPO = Path(__file__).resolve().parents[1]


def test_every_space_lists_with_its_parameters():
    out = subprocess.run([sys.executable, "-m", "search_spaces"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("grokking", "baseline", "smoke", "modular_addition"):
        assert name in search_spaces.names()
        assert f"{name}  (task " in out.stdout
    for parameter in ("coverage_epochs", "structure_epochs", "lr_schedule", "lr_T0", "weight_decay",
                      "train_fraction", "w_geodesic"):
        assert parameter in out.stdout


@pytest.mark.parametrize("name", ["grokking", "baseline", "smoke"])
def test_ternary_spaces_produce_overrides_the_trainer_accepts(name):
    from tvae import config as tvae_config

    space = search_spaces.get(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    study.set_user_attr("epochs", 40)
    families = set()
    for _ in range(30):
        trial = study.ask()
        overrides = {**space.fixed, **space.define(trial)}
        preset = overrides.pop("preset", "v5_12_4")
        cfg = tvae_config.build(preset, overrides=overrides, epochs=40)
        families.add(cfg.schedule.kind)
        study.tell(trial, 0.0)
    if name == "grokking":
        assert families == {"constant", "cosine", "cosine_restarts", "multi_phase"}


def test_bad_arguments_are_refused_with_their_name(tmp_path, capsys):
    results = str(tmp_path)
    assert study_run.main(["--space", "nope", "--results", results, "--dry-run"]) == 2
    assert "unknown search space 'nope'" in capsys.readouterr().err
    assert study_run.main(["--space", "smoke", "--trials", "0", "--results", results, "--dry-run"]) == 2
    assert "--trials must be ≥ 1" in capsys.readouterr().err
    assert study_run.main(["--name", "missing", "--results", results, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_run.main(["--space", "smoke", "--trials", "two"])
    assert "invalid int value" in capsys.readouterr().err


def test_existing_study_is_never_overwritten_and_resume_keeps_its_identity(tmp_path, capsys):
    location = StudyLocation.open(str(tmp_path), "s1")
    config = StudyConfig(space="smoke", name="s1", trials=3, epochs=2, results=str(tmp_path))
    location.write_json(location.join("study.json"), {"arguments": config.to_dict(), "metric": "train_Q",
                                                      "mode": "max"})
    before = Path(location.join("study.json")).read_bytes()
    assert study_run.main(["--space", "smoke", "--name", "s1", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err
    assert study_run.main(["--name", "s1", "--results", str(tmp_path), "--resume", "--trials", "5"]) == 2
    assert "--trials 5 (the study has 3)" in capsys.readouterr().err
    assert Path(location.join("study.json")).read_bytes() == before
    assert study_run.main(["--name", "s1", "--results", str(tmp_path), "--resume", "--dry-run"]) == 0
    assert "3 new trial(s) to sample" in capsys.readouterr().out


def test_status_of_a_missing_or_corrupt_study_exits_non_zero(tmp_path, capsys):
    assert study_status.main([str(tmp_path / "nothing")]) == 2
    assert "no study at" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text("{not json")
    assert study_status.main([str(tmp_path / "bad")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_help_explains_every_option():
    parser = study_run.build_parser()
    text = " ".join(parser.format_help().split())
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 19
    for action in options:
        assert action.help and len(action.help) > 15, f"{action.option_strings[0]} has no help text"
        assert action.option_strings[0] in text
        assert " ".join(action.help.replace("%%", "%").split())[:40] in text   # the help is shown
    assert "fraction such as 0.25" in text


def test_searcher_records_divergence_pruning_and_completion_in_optuna(tmp_path):
    from study.trainable import DIVERGED_KEY, DONE_KEY
    from study import compat
    from study.optuna_store import open_storage
    from study.tune_driver import make_searcher

    space = search_spaces.get("smoke")
    location = StudyLocation.open(str(tmp_path), "s")
    searcher = make_searcher(space, StudyConfig(space="smoke", name="s", trials=3, epochs=4), location)
    configs = [searcher.suggest(tid) for tid in ("a", "b", "c")]
    assert all(set(c["overrides"]) == {"optim.lr", "loss.rank.weight"} for c in configs)
    searcher.on_trial_complete("a", {"train_Q": 1.5, DONE_KEY: 1, DIVERGED_KEY: 0})
    searcher.on_trial_complete("b", {"train_Q": float("-inf"), DONE_KEY: 1, DIVERGED_KEY: 1,
                                     "divergence_reason": "epoch 2: loss is nan"})
    searcher.on_trial_complete("c", {"train_Q": 0.3, DONE_KEY: 0, DIVERGED_KEY: 0})
    study = optuna.load_study(study_name="s", storage=open_storage(location))   # read back from the journal
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert by_id["a"].state.name == "COMPLETE" and by_id["a"].value == 1.5
    assert by_id["b"].state.name == "FAIL" and "loss is nan" in by_id["b"].user_attrs["diverged"]
    assert by_id["c"].state.name == "PRUNED"
    assert study.user_attrs["epochs"] == 4
    # the searcher is pickled with the experiment: it must round-trip and keep its knowledge
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(space, StudyConfig(space="smoke", name="s", trials=3, epochs=4), location)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert compat.searcher_tune_ids(restored) == {"a", "b", "c"} and len(compat.searcher_study(restored).trials) == 3


def test_status_json_reads_a_stored_study(tmp_path, capsys):
    from study import recorder, trials_table

    location = StudyLocation.open(str(tmp_path), "s")
    config = StudyConfig(space="smoke", name="s", trials=2, epochs=2)
    location.write_json(location.join("study.json"), {"arguments": config.to_dict(), "metric": "train_Q",
                                                      "mode": "max"})
    recorder.write_part(location, "t1", [{"study": "s", "trial_id": "t1", "epoch": e, "train_Q": e}
                                         for e in range(2)])
    trials_table.write(location, [trials_table.TrialRecord("t1", "COMPLETED", 1, 2, {"lr": 0.1},
                                                           {"train_Q": 1.0})])
    assert study_status.main([location.display, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 2 and info["counts"] == {"COMPLETED": 1}
    assert info["best"]["trial_id"] == "t1" and info["best"]["value"] == 1.0


def test_resume_with_a_space_starts_a_missing_study(tmp_path, capsys):
    """`--space S --name N --resume` is the idempotent form (what `make study` uses): start, or continue."""
    assert study_run.main(["--space", "smoke", "--name", "fresh", "--results", str(tmp_path), "--resume",
                           "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "starting it" in out and "New study 'fresh'" in out
    assert not (tmp_path / "fresh" / "study.json").exists()   # a dry run writes nothing


def test_grokking_asha_never_stops_a_memorised_trial_but_prunes_others():
    from ray.tune.experiment import Trial

    from study.tune_driver import GrokkingSafeASHA

    scheduler = GrokkingSafeASHA(memorised_when=("train_acc", 0.99), time_attr="epochs_done",
                                 metric="heldout_acc", mode="max", max_t=20, grace_period=2, reduction_factor=3)
    trials = [Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(5)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    # t0 has memorised (train_acc 1.0) but not generalised (held-out worst of all); t1..t4 have not memorised
    heldout = {"t0": 0.0, "t1": 0.4, "t2": 0.3, "t3": 0.2, "t4": 0.1}
    actions: dict[str, str] = {}
    for epoch in (1, 2, 3):
        for trial in trials:
            if actions.get(trial.trial_id) == "STOP":
                continue
            result = {"epochs_done": epoch, "heldout_acc": heldout[trial.trial_id],
                      "train_acc": 1.0 if trial.trial_id == "t0" else 0.5}
            actions[trial.trial_id] = scheduler.on_trial_result(None, trial, result)
    assert actions["t0"] == "CONTINUE" and "t0" in scheduler.protected
    stopped = {t for t, a in actions.items() if a == "STOP"}
    assert stopped and "t0" not in stopped and "t1" not in stopped
    assert all("below the rung cutoff" in scheduler.stopped[t] for t in stopped)


def test_set_of_a_conditionally_searched_key_is_refused(tmp_path, capsys):
    """schedule.phases is drawn only when a trial picks the multi_phase schedule: --set must still refuse it,
    or it would silently lose to the searched value in those trials."""
    from search_spaces.describe import searched_keys

    assert {"schedule.phases", "schedule.T0"} <= searched_keys(search_spaces.get("grokking"))
    for key, value in [("schedule.phases", "[]"), ("schedule.T0", "10")]:
        assert study_run.main(["--space", "grokking", "--results", str(tmp_path), "--dry-run",
                               "--set", f"{key}={value}"]) == 2
        assert f"--set {key}: the space 'grokking' searches this key" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                     # nothing written
