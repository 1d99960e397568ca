"""The Prefect server a run or a deployment reports to: PREFECT_API_URL's, checked before anything starts (without
it, a run starts a temporary local server of its own)."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

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
