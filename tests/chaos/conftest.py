"""Fixtures of the fault-injection suite; the helpers live in ``chaoslib``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]       # chaoslib, and tests/study_processes.py

from study_processes import Studies  # noqa: E402


@pytest.fixture
def studies(tmp_path):
    """Starts `study.run` drivers for one test and afterwards kills every process of their sessions."""
    manager = Studies(tmp_path)
    yield manager
    manager.cleanup()
