"""How embedpipe's Prefect tasks run: no caching and no result persistence. Results stay in the flow's
process (nothing large crosses Prefect), and Ray workers hand their results back to the task that
called them, so the driver always reads them."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

local_task = task(cache_policy=NO_CACHE, persist_result=False)
