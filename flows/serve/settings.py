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
    allowed_hosts: tuple[str, ...] = ()  # Host names a loopback service answers besides its loopback ones

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def answers_host(self, header: str | None) -> bool:
        """Whether a request naming `header` in its Host is for this service. A loopback service answers only
        loopback names and `allowed_hosts`: a web page whose name an attacker rebinds to 127.0.0.1 (DNS rebinding)
        sends its own name, and would otherwise read a service without a token from the visitor's browser. A
        service on another address is reached by names this one cannot know (a token guards it)."""
        if header is None or not self.loopback:
            return True  # no Host: not a browser (HTTP/1.0)
        name = host_name(header)
        if name == "localhost" or name.endswith(".localhost") or name in self.allowed_hosts:
            return True  # *.localhost is loopback by RFC 6761: browsers resolve it so, not by DNS
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


def host_name(header: str) -> str:
    """The name in a Host header: no port, no IPv6 brackets, lower case, no trailing dot."""
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".")
