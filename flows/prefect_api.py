"""The Prefect server a run or a deployment reports to: PREFECT_API_URL's, checked before anything starts (without
it, a run starts a temporary local server of its own)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable

from prefect.client.orchestration import get_client
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    temporary_settings,
)

from pipeline.errors import ConfigError
from pipeline.storage.keys import redact


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


def start_temporary_server() -> Callable[[], None] | None:
    """Without PREFECT_API_URL, start the temporary local server a flow run would start (Prefect's own) in a thread
    now, so that its start (~5 s on 2 vCPUs) overlaps what this process does before the flow; returns what waits
    until it answers, to call before anything asks Prefect's API (a second start call meanwhile would return at
    once, before the server answers). With PREFECT_API_URL set nothing starts, and None comes back."""
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    # ~2 s of imports, here: in the thread they held the GIL against this thread's work (1.1x slower in all)
    from prefect.server.api.server import SubprocessASGIServer

    failed: list[BaseException] = []

    def start() -> None:
        try:
            SubprocessASGIServer().start()
        except BaseException as exc:  # raised where the caller waits
            failed.append(exc)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(start,), name="prefect-server-start",
                              daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed[0]
    return wait


def without_heartbeats() -> contextlib.AbstractContextManager:
    """Flow runs on the temporary server, without heartbeats: an ephemeral server runs no service that would watch
    them, and each flow run's end waits for its heartbeat thread's current one-second sleep (up to a second)."""
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
