import math

import pytest

from tvae import config, schedules


def test_cosine_restarts_closed_form():
    f = lambda e: schedules.cosine_restarts(e, 20, 2)  # noqa: E731
    assert f(0) == 1.0 and f(20) == 1.0 and f(60) == 1.0 and f(140) == 1.0
    assert f(10) == pytest.approx(0.5)
    assert f(40) == pytest.approx(0.5)                  # middle of the 40-epoch second cycle
    assert f(59) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_multi_phase_grokking_preset():
    cfg = config.preset("v5_12_4_extended").schedule
    assert cfg.kind == "multi_phase"
    f = lambda e: schedules.lr_factor(cfg, e, 500)  # noqa: E731
    assert f(0) == 1.0 and f(25) == 1.0 and f(75) == 1.0   # exploration: restarts at 25, 75
    assert f(12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 12 / 25)))
    assert f(150) == pytest.approx(0.3) and f(349) == pytest.approx(0.3)   # grokking_search: constant
    assert f(350) == pytest.approx(0.1) and f(425) == pytest.approx(0.05)  # fine_tuning: linear to 0
    assert f(500) == pytest.approx(0.0) and f(600) == pytest.approx(0.0)


def test_constant_cosine_and_warmup():
    c = config.ScheduleConfig(kind="constant", warmup_epochs=4)
    assert [schedules.lr_factor(c, e, 10) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = config.ScheduleConfig(kind="cosine", min_scale=0.1)
    assert schedules.lr_factor(cos, 0, 100) == 1.0
    assert schedules.lr_factor(cos, 50, 100) == pytest.approx(0.55)
    assert schedules.lr_factor(cos, 100, 100) == pytest.approx(0.1)


def test_schedules_are_pure():
    cfg = config.preset("v5_12_4").schedule
    first = [schedules.lr_factor(cfg, e, 100) for e in range(100)]
    again = [schedules.lr_factor(cfg, e, 100) for e in reversed(range(100))][::-1]
    assert first == again
