"""A real S3 endpoint for the tests: a moto server (`moto[server]`) started as its own process on 127.0.0.1 with a
free port, one bucket, and the URI form the study commands take (`s3://BUCKET/PREFIX?endpoint_override=…`).
Stopped by its process id."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from study_processes import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    port: int
    proc: subprocess.Popen
    bucket: str
    log: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def results(self, prefix: str | None = None) -> str:
        """A results root on this server (a fresh prefix unless one is given)."""
        prefix = prefix or f"r-{uuid.uuid4().hex[:8]}"
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def study(self, results: str, name: str) -> str:
        head, _, query = results.partition("?")
        return f"{head}/{name}?{query}"

    def requests(self, needle: str = "") -> list[str]:
        """The request lines the server logged (method and path), those containing ``needle``."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if '"' in line and needle in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start(workdir: Path, bucket: str = "tvae") -> S3Server:
    """Start moto's S3 server and create ``bucket``; sets the (fake) AWS credentials in this process's
    environment, which the study processes inherit."""
    os.environ.update(CREDENTIALS)
    port = free_port()
    log = workdir / f"moto-{port}.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = S3Server(port=port, proc=proc, bucket=bucket, log=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            request = urllib.request.Request(f"http://{server.endpoint}/{bucket}", method="PUT")
            urllib.request.urlopen(request, timeout=5).read()
            return server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"the moto S3 server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.3)
