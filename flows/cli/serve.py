"""`embedpipe serve ROOT INDEX --alias live`: search the version an alias points at, over HTTP, and follow the
alias as it is promoted and rolled back (flows/serve/). No Prefect, no Ray."""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer

from flows.cli.common import reports_errors
from flows.cli.snapshots import Index, Root


@reports_errors
def serve(
    root: Root,
    index: Index,
    alias: Annotated[str, typer.Option(help="the alias to serve and follow")] = "live",
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default; anything else should set "
                                           "a token)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on")] = 8000,
    poll_interval: Annotated[float, typer.Option(min=0.05, help="seconds between conditional reads of the "
                                                                "alias")] = 2.0,
    token_env: Annotated[str, typer.Option(help="environment variable holding the bearer token; requests without "
                                                "it are refused when it is set")] = "EMBEDPIPE_SERVE_TOKEN",
    max_k: Annotated[int, typer.Option(min=1, help="most results one search may ask for")] = 100,
    max_query_chars: Annotated[int, typer.Option(min=1, help="longest query accepted, in characters")] = 2000,
    request_timeout: Annotated[float, typer.Option(min=0.1, help="seconds a search may take before it is answered "
                                                                 "with 504")] = 10.0,
    default_mode: Annotated[str | None, typer.Option(help="search mode when a request names none (default: exact, "
                                                          "else the version's first mode); a version without it "
                                                          "is refused")] = None,
    warmup_query: Annotated[list[str] | None, typer.Option(help="query run in every mode before a version serves "
                                                                "(repeatable; default: three built-in ones)")] = None,
    query_batch: Annotated[int, typer.Option(min=1, help="most queries one forward pass encodes: concurrent requests' "
                                                         "queries share a pass (1: one request at a time)")] = 64,
    allow_host: Annotated[list[str] | None, typer.Option(help="a Host name a loopback service answers besides "
                                                             "localhost and loopback addresses (a proxy's; "
                                                             "repeatable)")] = None,
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Serve an alias over HTTP: /search, /version, /health, /ready, /metrics and a search page at /."""
    from flows.serve.server import serve as run_server
    from flows.serve.settings import ServeSettings, host_name
    from pipeline.errors import InputError, SnapshotError
    from pipeline.quality.search import refuse_bad_query
    from pipeline.redaction import redact
    from pipeline.serving.loading import WARMUP_QUERIES, LoadSettings
    from pipeline.serving.query import Limits
    from pipeline.snapshots.aliases import read_alias
    from pipeline.storage.backend import Storage

    for query in warmup_query or ():  # a bad one would refuse every version: the service would never be ready
        try:
            refuse_bad_query(query)
        except InputError as exc:
            raise InputError(f"--warmup-query: {exc}") from None
    if read_alias(Storage(root), index, alias).version is None:  # fail here, not with a service that never gets ready
        raise SnapshotError(f"alias {index}/{alias} is not set at {redact(root)}: publish and promote a version "
                            "first (make demo, or embedpipe run CONFIG with publish.alias)")
    settings = ServeSettings(
        root=root, index=index, alias=alias, host=host, port=port, token=serve_token(token_env),
        poll_interval_s=poll_interval, request_timeout_s=request_timeout,
        limits=Limits(max_k=max_k, max_query_chars=max_query_chars),
        load=LoadSettings(warmup_queries=tuple(warmup_query or WARMUP_QUERIES), default_mode=default_mode,
                          query_batch=query_batch),
        access_log=access_log, allowed_hosts=tuple(host_name(name) for name in allow_host or ()))
    run_server(settings, log_level)


def serve_token(env: str) -> str | None:
    """The bearer token in `env`, stripped (a secret file's newline would make every request 401); None when unset.
    Set but empty (auth silently off) or with characters a header cannot carry (RFC 6750's b64token) is an error;
    the token is never shown."""
    from pipeline.errors import InputError

    raw = os.environ.get(env)
    if raw is None:
        return None
    token = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token):
        raise InputError(f"{env} is {'empty' if not token else 'not a bearer token'}: expected letters, digits and "
                         "-._~+/ (RFC 6750's b64token), or leave it unset to serve without a token")
    return token
