"""Prometheus metrics of one service: requests and their latency by endpoint, queries per forward pass, swaps,
refused loads, releases, alias polls. A registry per service, so two services in one process (tests) count apart."""

from __future__ import annotations

import contextlib

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pipeline.serving.follower import FollowEvents

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENDPOINTS = ("/", "/search", "/health", "/ready", "/version", "/metrics")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics(FollowEvents):
    def __init__(self, index: str, alias: str) -> None:
        self.index, self.alias = index, alias
        self.registry = r = CollectorRegistry()
        self.requests = Counter("embedpipe_serve_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("embedpipe_serve_request_seconds", "time to answer an HTTP request, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.swaps = Counter("embedpipe_serve_swaps", "versions swapped in (the first load included)", registry=r)
        self.failed_loads = Counter("embedpipe_serve_failed_loads", "versions refused, by the check that failed",
                                    ["check"], registry=r)
        self.releases = Counter("embedpipe_serve_versions_released", "swapped-out versions freed", registry=r)
        self.release_seconds = Histogram("embedpipe_serve_release_seconds", "from a swap to the old version's release",
                                         buckets=(0.01, 0.1, 0.5, 1, 5, 30, 120), registry=r)
        self.polls = Counter("embedpipe_serve_alias_polls", "reads of the alias, by outcome", ["outcome"], registry=r)
        self.serving = Gauge("embedpipe_serve_version_info", "1 for the version that answers",
                             ["index", "alias", "version"], registry=r)
        self.queries_per_pass = Histogram("embedpipe_serve_queries_per_pass", "queries encoded by one forward pass "
                                          "(concurrent requests share one; warm-ups included)",
                                          buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.load_seconds = Gauge("embedpipe_serve_last_load_seconds", "load, check and warm-up time of the last "
                                  "version swapped in", registry=r)
        for check in ("storage", "snapshot", "checksum", "model", "index", "warm-up", "load"):
            self.failed_loads.labels(check)  # every series exists from the start, at 0
        for outcome in ("unchanged", "changed", "failed"):
            self.polls.labels(outcome)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        endpoint = endpoint if endpoint in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- FollowEvents ---------------------------------------------------------------------------------------------

    def polled(self, changed: bool) -> None:
        self.polls.labels("changed" if changed else "unchanged").inc()

    def poll_failed(self) -> None:
        self.polls.labels("failed").inc()

    def swapped(self, old: str | None, new: str, load_seconds: float) -> None:
        self.swaps.inc()
        self.load_seconds.set(load_seconds)
        if old is not None:
            with contextlib.suppress(KeyError):
                self.serving.remove(self.index, self.alias, old)
        self.serving.labels(self.index, self.alias, new).set(1)

    def refused(self, version: str, check: str) -> None:
        self.failed_loads.labels(check).inc()

    def released(self, version: str, after_seconds: float) -> None:
        self.releases.inc()
        self.release_seconds.observe(after_seconds)
