"""Helpers of the fault-injection suite (imported by the tests as ``chaoslib``; fixtures are in conftest.py): drive `python -m study.run` as a real process in its own session, strike
it with real signals at chosen moments, resume it, and check the study's invariants with `study.verify`.

Every driver runs in a new session (its own process group), so a test kills exactly what it started (never a
global `ray stop`: other Ray instances run on this machine)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 240.0   # the machine is shared and slow: Ray's start-up alone can take a minute


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    env.pop("TVAE_STUDY_FAULTS", None)
    env.update(extra or {})
    return env


@dataclass
class Driver:
    """A running `study.run` process (its own session) with its output in a log file."""
    proc: subprocess.Popen
    log: Path
    args: list[str] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the driver process only (as Ctrl-C / kill would)."""
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"driver did not exit within {timeout:.0f}s; output:\n{self.output()[-4000:]}")

    def session_processes(self) -> list[str]:
        """Command lines of the processes running in the driver's session (the driver and what it started,
        reparented or not). Linux /proc; zombies do not count."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.proc.pid and fields[0] != "Z":           # session id, state
                    found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()[:160])
            except (OSError, IndexError, ValueError):
                continue
        return found

    def session_left(self, within: float = 20.0) -> list[str]:
        """`session_processes` once they had ``within`` seconds to exit (call it after the driver exited)."""
        deadline = time.monotonic() + within
        while (left := self.session_processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def kill_group(self) -> None:
        """SIGKILL the driver's whole process group (the driver and what it started in its session)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


class Studies:
    """Starts drivers for one test and cleans every one of them up afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.drivers: list[Driver] = []

    def start(self, *args: str, faults: object = None, env: dict[str, str] | None = None) -> Driver:
        extra = dict(env or {})
        if faults is not None:
            extra["TVAE_STUDY_FAULTS"] = json.dumps(faults)
        log = self.root / f"driver-{len(self.drivers)}.log"
        argv = [sys.executable, "-m", "study.run", *args]
        with open(log, "wb") as handle:
            proc = subprocess.Popen(argv, cwd=REPO, env=_env(extra), stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        driver = Driver(proc=proc, log=log, args=list(args))
        self.drivers.append(driver)
        return driver

    def run(self, *args: str, timeout: float = 600, **kwargs) -> tuple[int, str]:
        driver = self.start(*args, **kwargs)
        rc = driver.wait(timeout)
        driver.kill_group()   # whatever it left behind in its session
        return rc, driver.output()

    def cleanup(self) -> None:
        for driver in self.drivers:
            driver.kill_group()


def wait_for(condition: Callable[[], object], timeout: float, what: str, driver: Driver | None = None,
             poll: float = 0.2):
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` (and the driver's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if driver is not None and not driver.alive():
            raise AssertionError(f"driver exited ({driver.proc.returncode}) before {what}:\n{driver.output()[-4000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f"; driver output:\n{driver.output()[-4000:]}" if driver else ""))


# ------------------------------------------------------------------------------------- what is on disk

def part_files(study_dir: Path) -> list[Path]:
    return sorted(p for p in (study_dir / "epochs").glob("trial_id=*/part-*.parquet"))


def checkpoints(study_dir: Path) -> list[Path]:
    return sorted((study_dir / "tune").glob("trial_*/checkpoint_*"))


def trials_rows(study_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    path = study_dir / "trials.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def attempt_markers(study_dir: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for directory in sorted((study_dir / "attempts").glob("trial_id=*")):
        markers = [json.loads(p.read_text()) for p in sorted(directory.iterdir(), key=lambda p: int(p.name))
                   if p.name.isdigit() and p.stat().st_size]
        out[directory.name.split("=", 1)[1]] = markers
    return out


def assert_invariants(study_dir: Path, *, complete: bool = True):
    """Every scenario ends here: `study.verify` must find no violated invariant."""
    from study.verify import verify

    report = verify(str(study_dir), complete=complete)
    assert report.ok, report.text()
    return report


def snapshot(study_dir: Path) -> dict[str, bytes]:
    """Every file of a study (relative path → bytes), to prove that a refused command changed nothing."""
    return {str(p.relative_to(study_dir)): p.read_bytes() for p in sorted(study_dir.rglob("*")) if p.is_file()}
