"""Run a SearchService on uvicorn: in the foreground (`embedpipe serve`), or in a background thread of this
process (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

import uvicorn

from flows.serve.app import create_app
from flows.serve.service import SearchService
from flows.serve.settings import ServeSettings
from pipeline.errors import ConfigError
from pipeline.startup import collector_paused

log = logging.getLogger("flows.serve")


def _config(service: SearchService, log_level: str) -> uvicorn.Config:
    s = service.settings
    return uvicorn.Config(create_app(service), host=s.host, port=s.port, log_level=log_level,
                          access_log=s.access_log, timeout_keep_alive=5, server_header=False,
                          timeout_graceful_shutdown=max(5, int(s.request_timeout_s) + 1), log_config=None)


def _log_to_stderr(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("pipeline.serving", "flows.serve", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def check_port(host: str, port: int) -> None:
    """Bind as uvicorn will, and let go: a port in use is an error before the service loads a version, not a
    uvicorn error after it started loading one."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
            sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; expected a free port "
                          "(--port) on an address of this machine (--host)") from None


def serve(settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until interrupted (SIGINT/SIGTERM: requests in flight finish, then the process exits)."""
    check_port(settings.host, settings.port)
    _log_to_stderr(log_level)
    # Frozen before any version loads (a swapped-out one must stay collectable): a full collection, which pauses
    # every request, then skips torch's and the service's modules, 130 ms -> 0.1 ms with the demo's version (Zen 4)
    with collector_paused():
        import faiss

        import pipeline.models.transformer  # noqa: F401  torch: what a version's encoder loads

    # A batch of requests' queries (pipeline/serving/batching.py) searches a flat index with one matrix product
    # from 2 queries on, not one scan of the vectors per query (FAISS's default threshold is far higher): 8 queries
    # over 60,000 x 384 took 13.5 ms instead of 25.9 ms in one call on 2 vCPUs (AMD EPYC Zen 3). Set here, in the
    # service's own process, because it is process-wide.
    faiss.cvar.distance_compute_blas_threshold = 2
    if not settings.loopback and settings.token is None:
        log.warning("listening on %s without a bearer token: anyone who can reach it can search", settings.host)
    service = SearchService(settings)
    log.info("serving %s/%s on http://%s:%d (alias polled every %g s)", settings.index, settings.alias,
             settings.host, settings.port, settings.poll_interval_s)
    uvicorn.Server(_config(service, log_level)).run()


@contextlib.contextmanager
def serving_in_thread(settings: ServeSettings, ready_timeout_s: float = 120.0, log_level: str = "warning",
                      wait_for_version: bool = True) -> Iterator[SearchService]:
    """A service on uvicorn in a daemon thread; yields it once it listens and (unless told not to wait) has a
    version to serve."""
    service = SearchService(settings)
    server = uvicorn.Server(_config(service, log_level))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not (server.started and (service.holder.current is not None or not wait_for_version)):
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the service on {settings.host}:{settings.port} did not become ready in "
                                   f"{ready_timeout_s:.0f} s (last refusal: {service.follower.last_refusal})")
            time.sleep(0.02)
        yield service
    finally:
        server.should_exit = True
        thread.join(30)
