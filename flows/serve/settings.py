"""What `embedpipe serve` is told: where the alias is, where to listen, and the limits it enforces."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pipeline.serving.loading import LoadSettings
from pipeline.serving.query import Limits

TOKEN_ENV = "EMBEDPIPE_SERVE_TOKEN"  # the bearer token is read from the environment, never from the command line


@dataclass(frozen=True)
class ServeSettings:
    root: str  # a path or URL; S3 credentials come from the environment
    index: str
    alias: str = "live"
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = field(default=None, repr=False)  # None: no authentication
    poll_interval_s: float = 2.0
    request_timeout_s: float = 10.0
    max_body_bytes: int = 64 * 1024
    limits: Limits = field(default_factory=Limits)
    load: LoadSettings = field(default_factory=LoadSettings)
    access_log: bool = False

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
