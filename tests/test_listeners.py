"""Nothing of a local study is exposed: while `study.run` runs its trials, every TCP listener of the driver and of
the processes it started (`ss -ltnp`, matched by session) is on a loopback address, or in
`study.cluster.NON_LOOPBACK_ALLOWED` with its reason."""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess

import pytest

from study.cluster import NON_LOOPBACK_ALLOWED
from study_processes import STARTUP_TIMEOUT, Studies, session_members, wait_for

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2)")

_LINE = re.compile(r"^LISTEN\s+\d+\s+\d+\s+(?P<addr>\S+):(?P<port>\d+)\s+\S+\s+(?P<users>.*)$")


def listeners(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP listener of ``pids``, as `ss -ltnp` shows them."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', match["users"]):
            if int(pid) in pids:
                found.append((match["addr"].strip("[]"), int(match["port"]), name))
    return sorted(set(found))


def is_loopback(address: str) -> bool:
    if address == "*":            # ss's name for every interface (IPv4 and IPv6)
        return False
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_classifier():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not any(is_loopback(a) for a in ("0.0.0.0", "::", "*", "192.0.2.2"))


def test_a_local_study_listens_on_loopback_only(tmp_path):
    studies = Studies(tmp_path)
    results = tmp_path / "results"
    try:
        driver = studies.start("--space", "smoke", "--name", "ports", "--trials", "2", "--epochs", "50",
                               "--concurrency", "2", "--checkpoint-every", "1", "--results", str(results))
        # both trials have started (their workers are up) and written rows: every kind of Ray process is there
        wait_for(lambda: len(list((results / "ports" / "epochs").glob("trial_id=*"))) >= 2,
                 STARTUP_TIMEOUT, "both trials running", driver, poll=0.5)
        pids = {pid for pid, _ in session_members(driver.proc.pid)}
        seen = listeners(pids)
    finally:   # SIGKILL of the driver's whole session: the study itself is not under test here
        studies.cleanup()
    print("listeners:", seen)
    names = {name for _, _, name in seen}
    assert {"gcs_server", "raylet"} <= names, f"expected Ray's listeners, saw {seen}"
    assert len(seen) >= 6, seen
    exposed = [(addr, port, name) for addr, port, name in seen
               if not is_loopback(addr) and name not in NON_LOOPBACK_ALLOWED]
    assert not exposed, f"listeners of a local study not on loopback: {exposed} (all: {seen})"
