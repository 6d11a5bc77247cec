"""A Ray cluster the way an operator starts one, on this machine: a head and worker nodes, each a separate
`ray start --block` process in its own session, with its own resources, temporary directory and ports, all on
127.0.0.1, token authentication on with a token of the test's own. A node is stopped by killing its session's
processes (never a global `ray stop`: other Ray instances run on this machine)."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from study_processes import driver_env, free_port, kill_session, session_members

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    temp_dir: Path

    def pids(self) -> set[int]:
        return {pid for pid, _ in session_members(self.proc.pid)}

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL every process of this node (its session), as a lost machine would."""
        kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class LocalCluster:
    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[Node] = field(default_factory=list)
    address: str = ""

    def env(self) -> dict[str, str]:
        """Environment of every node and of a driver that joins: the cluster's own token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, name: str, args: list[str]) -> Node:
        temp_dir = Path(f"/tmp/rn-{os.getpid()}-{name}-{secrets.token_hex(3)}")   # short: socket paths
        log = self.root / f"node-{name}.log"
        argv = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
                "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                "--disable-usage-stats", *args]
        with open(log, "wb") as handle:
            proc = subprocess.Popen(argv, env=driver_env(self.env()), stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = Node(name=name, proc=proc, log=log, temp_dir=temp_dir)
        self.nodes.append(node)
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in node.output():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {name} did not start:\n{node.output()[-3000:]}")
            time.sleep(0.5)
        return node

    def start_head(self, num_cpus: int = 0) -> Node:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        return self._start("head", ["--head", "--port", str(port), "--num-cpus", str(num_cpus),
                                    "--include-dashboard", "false",
                                    "--ray-client-server-port", str(free_port())])

    def add_worker(self, name: str, num_cpus: int = 1) -> Node:
        return self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus),
                                  "--resources", f'{{"{name}": 1}}'])

    def node_of(self, pid: int) -> Node | None:
        """The node whose session holds process ``pid``."""
        return next((n for n in self.nodes if pid in n.pids()), None)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
