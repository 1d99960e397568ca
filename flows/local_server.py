"""A Prefect server on a free loopback port, for tests, benchmarks and screenshots: one server that many flow runs
share (each run without PREFECT_API_URL would otherwise start a temporary server of its own, ~12 s)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_server(home: Path, timeout_s: float = 120) -> Iterator[str]:
    """Start `prefect server start` on 127.0.0.1 with its database under `home`; yields its API URL (the value of
    PREFECT_API_URL) once /health answers, and stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
        # the UI asks /ui-settings where the API is; without this it answers port 4200 whatever --port says
        "PREFECT_UI_API_URL": url}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the Prefect server on port {port} did not become healthy in "
                                       f"{timeout_s:.0f} s") from None
                time.sleep(0.5)
        yield url
    finally:
        # flow runs' logs still queued for this server go before it stops (sent later, each batch printed
        # "--- Error logging to API ---" at exit)
        from prefect.logging.handlers import APILogWorker

        with contextlib.suppress(Exception):
            APILogWorker.drain_all(timeout=10)
        proc.terminate()
        proc.wait(timeout=30)
