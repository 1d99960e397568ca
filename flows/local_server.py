"""A Prefect server on a free loopback port (`prefect server start`, its own process): the one a CLI run without
PREFECT_API_URL reports to, and the one many flow runs of tests, benchmarks and screenshots share."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import ConfigError
from pipeline.redaction import redact


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoopbackServer:
    """A started server: `url` is its API's (the value of PREFECT_API_URL), answering once `wait` returns."""

    process: subprocess.Popen
    url: str
    output: IO[bytes]

    @classmethod
    def start(cls, home: Path | None = None, services: bool = True) -> LoopbackServer:
        """Start the process and return at once. `home`: PREFECT_HOME, its database's folder (default: the user's
        Prefect home, as Prefect's own temporary server uses). Without `services` it runs the API alone: no
        scheduler, no UI, as Prefect's temporary server does."""
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            # the UI asks /ui-settings where the API is; without this it answers port 4200 whatever --port says
            "PREFECT_UI_API_URL": url}
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
            env["PREFECT_HOME"] = str(home)
        args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "WARNING"]  # no line per request in `output`
        if not services:
            args += ["--no-services", "--no-ui"]
        # read back only if it fails to start (a pipe nobody reads could fill); closed by stop
        output = tempfile.TemporaryFile()  # noqa: SIM115
        return cls(subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT),
                   url, output)

    def wait(self, timeout_s: float) -> str:
        """The API's URL once /health answers; a ConfigError with the server's last output (credentials in URLs
        dropped) if it exits first or does not answer within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self.url
            except OSError:
                code = self.process.poll()
                if time.monotonic() > deadline or code is not None:
                    self.output.seek(0)
                    tail = self.output.read().decode(errors="replace").strip().splitlines()[-5:]
                    self.stop(drain=False)
                    state = f"exited with code {code}" if code is not None else \
                        f"did not answer within {timeout_s:.0f} s"
                    raise ConfigError(f"Prefect's server on {self.url.removesuffix('/api')} {state}: "
                                      f"{redact(' | '.join(tail)) or 'no output'}; PREFECT_API_URL may name a "
                                      "running server to report to instead") from None
                time.sleep(0.05)

    def stop(self, drain: bool = True) -> None:
        """Send the flow runs' queued logs and events first (`drain`; sent after it stops, each batch printed an
        error at exit), then stop it. Once is enough: a second call does nothing."""
        if self.output.closed:
            return
        if drain:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            for worker in (APILogWorker, EventsWorker):
                with contextlib.suppress(Exception):
                    worker.drain_all(timeout=10)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()


@contextlib.contextmanager
def loopback_server(home: Path, timeout_s: float = 120) -> Iterator[str]:
    """A server with its database under `home`, for tests and benchmarks; yields its API URL once it answers, and
    stops it afterwards."""
    server = LoopbackServer.start(home)
    try:
        yield server.wait(timeout_s)
    finally:
        server.stop()
