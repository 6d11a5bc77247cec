"""Drive `python -m study.run` as a real process in its own session (`tests/test_study_ray.py` and the
fault-injection suite in `tests/chaos/`): start it, wait for what it writes, read its output and its resume
command, and kill exactly what it started (never a global `ray stop`: other Ray instances run on this machine)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 240.0   # the machine is shared and slow: Ray's start-up alone can take a minute


def live_trials(study_dir: Path) -> list[dict]:
    """The rows of a running study's ``trials.parquet`` ([] before it exists), read through one open file: the
    driver replaces the file by renaming a new one over it, and a reader that opens the path twice (as
    ``pq.read_table(path)`` may: footer, then pages) can mix two versions."""
    import pyarrow.parquet as pq

    try:
        with open(study_dir / "trials.parquet", "rb") as handle:
            return pq.read_table(handle).to_pylist()
    except FileNotFoundError:
        return []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def driver_env(extra: dict[str, str] | None = None) -> dict[str, str]:
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
        reparented or not)."""
        return [cmdline for _, cmdline in session_members(self.proc.pid)]

    def session_left(self, within: float = 20.0) -> list[str]:
        """`session_processes` once they had ``within`` seconds to exit (call it after the driver exited)."""
        deadline = time.monotonic() + within
        while (left := self.session_processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def resume_command(self) -> list[str]:
        """The arguments of the resume command the driver printed (without ``python -m study.run``)."""
        match = re.search(r"^\s+(python -m study\.run .*--resume.*)$", self.output(), re.MULTILINE)
        assert match, f"no resume command printed:\n{self.output()[-3000:]}"
        return shlex.split(match.group(1))[3:]

    def kill_group(self) -> None:
        """SIGKILL everything in the driver's session: its process group, and whatever moved to another group
        (Ray's agents survive a SIGKILLed driver)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in session ``sid`` (Linux /proc; zombies do not count)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":                              # session id, state
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()[:160]
                found.append((int(stat.parent.name), cmdline))
        except (OSError, IndexError, ValueError):
            continue
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid``, a few rounds (one may fork as another dies)."""
    for _ in range(3):
        members = session_members(sid)
        if not members:
            return
        for pid, _ in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


class Studies:
    """Starts drivers for one test and cleans every one of them up afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.drivers: list[Driver] = []

    def start(self, *args: str, faults: object = None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Driver:
        extra = dict(env or {})
        if faults is not None:
            extra["TVAE_STUDY_FAULTS"] = json.dumps(faults)
        log = self.root / f"driver-{len(self.drivers)}.log"
        argv = [sys.executable, "-m", "study.run", *args]
        with open(log, "wb") as handle:
            proc = subprocess.Popen(argv, cwd=cwd or REPO, env=driver_env(extra), stdout=handle, stderr=subprocess.STDOUT,
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
