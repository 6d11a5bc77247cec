"""Starting or joining Ray: a private local instance with its dashboard on 127.0.0.1 (the default), or an
existing cluster through ``--address``. Never touches another Ray instance on the machine."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

TOKEN_PATH = Path.home() / ".ray" / "auth_token"


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


def start(address: str | None, *, dashboard_port: int = 8265, num_cpus: int | None = None,
          num_gpus: int | None = None) -> RayInfo:
    """Start a private local Ray (``address=None``) or join the cluster at ``address``."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        context = ray.init(address=address, logging_level=logging.WARNING)
        url = context.dashboard_url
        return RayInfo(local=False, dashboard_url=f"http://{url}" if url else None, address=address)
    # "local" (not None/"auto"): never attach to another Ray instance running on this machine
    context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=free_port(dashboard_port), num_cpus=num_cpus, num_gpus=num_gpus,
                       logging_level=logging.WARNING)
    url = context.dashboard_url
    return RayInfo(local=True, dashboard_url=f"http://{url}" if url else None,
                   address=context.address_info.get("gcs_address", ""))


def dashboard_help(info: RayInfo) -> str:
    if not info.dashboard_url:
        return "Ray dashboard: not available (install ray[default])."
    lines = [f"Ray dashboard: {info.dashboard_url}"]
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
        lines.append(f"  it asks for a token: paste the output of `ray get-auth-token` (the file {TOKEN_PATH}); "
                     "for its HTTP API send `Authorization: Bearer <token>`.")
    return "\n".join(lines)


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
