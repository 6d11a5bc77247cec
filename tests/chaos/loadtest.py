"""Load test (issue 5): a study of many one-epoch trials of the cheapest space; reports the driver's peak memory
and the wall seconds per trial, then checks every invariant. A benchmark, not a test:

    .venv/bin/python tests/chaos/loadtest.py [--trials 200] [--concurrency 2] [--results DIR]

Prints a table and one JSON line. The driver is `python -m study.run` in its own session; its resident memory
(VmRSS, and the kernel's high-water mark VmHWM) is sampled from /proc every 0.5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB; (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    kib = lambda name: int(fields.get(name, "0 kB").split()[0])  # noqa: E731
    return kib("VmRSS"), kib("VmHWM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--space", default="smoke")
    parser.add_argument("--max-seconds", type=float, help="stop the driver with SIGINT after this long and report "
                        "on the trials finished by then (the study stays resumable)")
    parser.add_argument("--results", help="results root (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from study.verify import verify

    results = Path(args.results) if args.results else Path(tempfile.mkdtemp(prefix="tvae-loadtest-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "study.run", "--space", args.space, "--name", "load", "--trials",
               str(args.trials), "--epochs", "1", "--concurrency", str(args.concurrency), "--checkpoint-every", "1",
               "--results", str(results)]
    log = results / "driver.log"
    results.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    samples, hwm = [], 0
    try:
        interrupted = False
        while proc.poll() is None:
            if args.max_seconds and not interrupted and time.monotonic() - start > args.max_seconds:
                os.kill(proc.pid, signal.SIGINT)
                interrupted = True
            rss, peak = _memory_kib(proc.pid)
            if rss:
                samples.append(rss)
                hwm = max(hwm, peak)
            time.sleep(0.5)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # whatever the driver left in its session
        except ProcessLookupError:
            pass
    wall = time.monotonic() - start
    report = verify(str(results / "load"), complete=not interrupted)
    finished = report.counts.get("completed", 0)
    samples.sort()
    result = {
        "trials": args.trials, "concurrency": args.concurrency, "space": args.space, "exit": proc.returncode,
        "finished": finished, "interrupted": interrupted,
        "wall_s": round(wall, 1), "s_per_trial": round(wall / max(finished, 1), 2),
        "driver_peak_rss_mib": round(hwm / 1024, 1),
        "driver_median_rss_mib": round(samples[len(samples) // 2] / 1024, 1) if samples else None,
        "driver_final_rss_mib": round(samples[-1] / 1024, 1) if samples else None,
        "invariants_ok": report.ok, "violations": [str(v) for v in report.violations],
    }
    print(f"{finished} of {args.trials} one-epoch trials of {args.space!r} finished, {args.concurrency} at once"
          + (" (stopped by --max-seconds)" if interrupted else "") + f": exit {proc.returncode}, "
          f"{wall:.0f} s in all, {result['s_per_trial']} s per trial; driver peak RSS "
          f"{result['driver_peak_rss_mib']} MiB (median {result['driver_median_rss_mib']} MiB); invariants "
          + ("hold" if report.ok else "VIOLATED:\n" + report.text()))
    print(json.dumps(result))
    if not args.results:
        import shutil

        shutil.rmtree(results, ignore_errors=True)
    return 0 if report.ok and (proc.returncode == 0 or interrupted) else 1


if __name__ == "__main__":
    sys.exit(main())
