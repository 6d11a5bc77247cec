"""Starting or joining Ray: a private local instance whose every listener (the dashboard included) is on
127.0.0.1 (the default), or an existing cluster through ``--address``. Token authentication stays on (Ray's
default). Never touches another Ray instance on the machine."""
from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

TOKEN_PATH = Path.home() / ".ray" / "auth_token"


class RayStartError(RuntimeError):
    """Ray could not be started or joined; nothing of the study was stored yet."""


@dataclass(frozen=True)
class RayInfo:
    local: bool
    dashboard_url: str | None     # http://127.0.0.1:PORT for local studies
    address: str


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else any free port."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# Ray reads this switch when it is imported; on Linux it defaults to 1 (a node other machines can join). Set to
# 0, Ray takes 127.0.0.1 as the node's address instead of the machine's network address, and binds its GCS server,
# raylet, object manager, workers' gRPC servers, dashboard agent and runtime-env agent to loopback only. A
# node started so cannot be joined by another machine: used for private local instances only.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Listeners of a local study that are not on loopback, each with the reason Ray gives no way to bind it there.
# `tests/test_listeners.py` lists a running study's listeners with `ss -ltnp` and fails on any other one.
NON_LOOPBACK_ALLOWED: dict[str, str] = {}


def loopback_only() -> None:
    """Make the Ray instance this process starts listen on 127.0.0.1 only (see `LOOPBACK_SWITCH`)."""
    if os.environ.get(LOOPBACK_SWITCH) is None:
        os.environ[LOOPBACK_SWITCH] = "0"
    if "ray" in sys.modules and os.environ[LOOPBACK_SWITCH] == "0":
        from ray._private import ray_constants   # imported before us: the constant was read already

        ray_constants.ENABLE_RAY_CLUSTER = False


def start(address: str | None, *, dashboard_port: int | None = None, num_cpus: int | None = None,
          num_gpus: int | None = None) -> RayInfo:
    """Start a private local Ray (``address=None``) or join the cluster at ``address``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        loopback_only()
    if address:
        # `ray start --head` turns token authentication on when a token exists, but ray.init with an explicit
        # address never does: do what `ray start` does, unless the user chose a mode (RAY_AUTH_MODE).
        # (Before `import ray`: Ray reads the mode once, when it loads.)
        if "RAY_AUTH_MODE" not in os.environ and (TOKEN_PATH.exists() or os.environ.get("RAY_AUTH_TOKEN")
                                                  or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    if address:
        try:
            context = ray.init(address=address, logging_level=logging.WARNING)
        except Exception as exc:
            raise RayStartError(f"could not join the Ray cluster at {address}: {exc}") from exc
        url = context.dashboard_url
        return RayInfo(local=False, dashboard_url=f"http://{url}" if url else None, address=address)
    # "local" (not None/"auto"): never attach to another Ray instance running on this machine
    # no port given: Ray takes 8265, or the next free one (it retries); a given port must be free
    port = {"dashboard_port": free_port(dashboard_port)} if dashboard_port else {}
    dashboard, retried = True, False
    while True:
        try:
            context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                               **(port if dashboard else {}), num_cpus=num_cpus, num_gpus=num_gpus,
                               logging_level=logging.WARNING)
            break
        except Exception as exc:
            ray.shutdown()
            if dashboard and "dashboard with missing packages" in str(exc):
                # a Ray without its dashboard packages (no ray[default]): the study matters more than the view
                print("Ray dashboard unavailable: its packages are missing (pip install 'ray[default]'); "
                      "the study runs without it (follow it with `python -m study.status`)",
                      file=sys.stderr, flush=True)
                dashboard = False
                continue
            # Ray gives its raylet a fixed 30 s to register: an overloaded machine misses it; one more try
            if retried or "timed out during startup" not in str(exc):
                raise RayStartError(f"could not start a local Ray instance: {exc}") from exc
            retried = True
            print("Ray did not start within its 30 s (an overloaded machine?): trying once more",
                  file=sys.stderr, flush=True)
    url = context.dashboard_url
    return RayInfo(local=True, dashboard_url=f"http://{url}" if url else None,
                   address=context.address_info.get("gcs_address", ""))


def dashboard_help(info: RayInfo) -> str:
    lines = [] if info.local else [f"Running on (joined) the Ray cluster at {info.address}."]
    if not info.dashboard_url:
        lines.append("Ray dashboard: not available (the cluster runs none; install ray[default] for it).")
        return "\n".join(lines)
    lines.append(f"Ray dashboard: {info.dashboard_url}")
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
        lines.append(f"  it asks for a token: paste the output of `ray get-auth-token` (the file {TOKEN_PATH}); "
                     "for its HTTP API send `Authorization: Bearer <token>`.")
    return "\n".join(lines)


def stop(interrupted_start: bool = False) -> None:
    """Disconnect from Ray, stopping the local instance this process started.

    ``interrupted_start``: ray.init was cut off (a signal while it connected). Ray then does not count itself
    initialised, and a plain shutdown left the node's agents running, reparented to init (seen:
    ray::DashboardAgent, ray::RuntimeEnvAgent, the dashboard's module forkserver): the raylet was still
    starting them. Every Ray process this process started is frozen, then killed (a start has no state to
    save), before Ray's own shutdown."""
    import ray

    if interrupted_start:
        try:
            _kill_started_node()
        except ImportError:   # psutil is a dependency; a stripped environment without it just shuts down
            pass
    ray.shutdown()   # a no-op when this process never connected


# command-line marks of the processes a local Ray node consists of
_RAY_MARKS = ("ray::", "raylet", "gcs_server", "ray/dashboard", "ray/_private", "ray.dashboard", "ray-dashboard")


def _ray_descendants() -> list:
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if any(mark in cmd for mark in _RAY_MARKS):
            found.append(proc)
    return found


def _kill_started_node() -> None:
    """SIGSTOP the Ray processes below this one, listing them again until no new one appears (a stopped
    process spawns nothing, so the list becomes complete), then SIGKILL them all."""
    import psutil

    frozen: dict[int, psutil.Process] = {}
    for _ in range(20):
        new = [proc for proc in _ray_descendants() if proc.pid not in frozen]
        if not new:
            break
        for proc in new:
            try:
                proc.suspend()
            except psutil.Error:
                pass
            frozen[proc.pid] = proc
    for proc in frozen.values():
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(frozen.values()), timeout=5)
