"""The Prefect server a run or a deployment reports to: PREFECT_API_URL's, checked before anything starts (without
it, a CLI run starts a local server of its own)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.logging import get_logger
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    PREFECT_UI_URL,
    temporary_settings,
)

from flows.local_server import LoopbackServer
from pipeline.errors import ConfigError
from pipeline.redaction import redact


def check_prefect_api() -> str | None:
    """PREFECT_API_URL (None when unset), once the server there answers; otherwise a clear error, not the client's
    RuntimeError traceback after the run's own checks."""
    url = PREFECT_API_URL.value()
    if not url:
        return None
    with get_client(sync_client=True) as client:
        if (error := client.api_healthcheck()) is not None:
            raise ConfigError(f"no Prefect server answers at PREFECT_API_URL={redact(url)}: {error}")
    return url


@contextlib.contextmanager
def local_server() -> Iterator[LoopbackServer | None]:
    """Without PREFECT_API_URL, a Prefect server of this run's own, started now (flows/local_server.py: `prefect
    server start`, its API alone, with the database in Prefect's home, as the temporary server a flow would start)
    so that its start (~5 s on 2 vCPUs) overlaps what this process does before the flow (enter `reporting_to` around
    the flow's call); stopped at the end. With PREFECT_API_URL set, None."""
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return
    server = LoopbackServer.start(services=False)
    get_logger().info("Starting this run's Prefect server on %s (PREFECT_API_URL names none; stopped when the run "
                      "ends)", server.url.removesuffix("/api"))
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def reporting_to(server: LoopbackServer) -> Iterator[None]:
    """Once the server answers, Prefect's client reports to it, with heartbeats off (no service watches them there,
    and each flow run's end waited up to a second for the heartbeat thread's sleep) and no UI address (it has no UI:
    no "View at" link to a page that does not exist)."""
    # at least a minute: it starts beside Ray and the model's load
    url = server.wait(max(60, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                                     PREFECT_UI_URL: ""}):
        yield
