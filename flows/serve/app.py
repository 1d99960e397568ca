"""The HTTP API and page over a SearchService: /search (GET and POST), /health, /ready, /version, /metrics, `/`.

Every search reads the current version once and answers from it to the end, and names it in the response (body
and X-Embedpipe-Version header). Errors are JSON, {"error": {"code", "message"}}, with the status that fits.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections import Counter
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated
from urllib.parse import parse_qsl

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flows.serve.metrics import CONTENT_TYPE
from flows.serve.page import render_page
from flows.serve.service import SearchService
from pipeline.corpus.records import RepeatedKey, unique_keys
from pipeline.errors import EmbedpipeError, InputError
from pipeline.serving.query import answer

log = logging.getLogger("flows.serve")
VERSION_HEADER = "X-Embedpipe-Version"


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON has types: "k": true or "3" is a mistake
    query: str
    k: int | None = None  # the service's default: 10, or --max-k where that is less
    mode: str | None = None


SEARCH_PARAMETERS = ("q", "k", "mode")


def search_body(raw: bytes) -> SearchBody:
    """The POST body, read here rather than by FastAPI, whose JSON parsing keeps the last of a key given twice
    (a proxy or client library may have read the first)."""
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError as exc:
        raise ServiceError(400, "bad_request", f"the request body is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ServiceError(400, "bad_request", f"the request body is not JSON: {exc.msg} at line {exc.lineno} "
                           f"column {exc.colno}") from None
    except RepeatedKey as exc:
        raise ServiceError(400, "bad_request", f"key {exc.args[0]!r} is given twice in the request body: "
                           "expected it once") from None
    except (ValueError, RecursionError) as exc:  # a number past Python's 4,300 digits, arrays nested too deep
        raise ServiceError(400, "bad_request", f"the request body cannot be read: {str(exc)[:120]}; expected "
                           '{"query": ..., "k": ..., "mode": ...}') from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise ServiceError(400, "bad_request", f'the request body is {kind}: expected a JSON object, {{"query": '
                           '..., "k": ..., "mode": ...}')
    try:
        return SearchBody.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]) from None


def check_query_string(raw: bytes) -> None:
    """Starlette turns a percent-escape that is not UTF-8 into U+FFFD, keeps the last of a parameter given
    twice and ignores one it does not know (a misspelt `mode` would search the default): each would search
    something other than what was sent, so each is refused."""
    try:
        names = [name for name, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")]
    except UnicodeDecodeError:
        raise ServiceError(400, "bad_request", "the query string is not valid UTF-8: expected percent-escapes "
                           "that spell UTF-8") from None
    for name, times in Counter(names).items():
        if name not in SEARCH_PARAMETERS:
            raise ServiceError(400, "bad_request", f"unknown parameter {name[:40]!r}: expected "
                               f"{', '.join(SEARCH_PARAMETERS)}")
        if times > 1:
            raise ServiceError(400, "bad_request", f"parameter {name!r} is given {times} times: expected it once")


_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "too_large", 503: "not_ready", 504: "timeout"}


def _validation_message(exc: RequestValidationError) -> str:
    """Which field is wrong and why; never the value (a client may have put a secret in the wrong field)."""
    parts = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        where = [str(x) for x in (loc[1:] if loc[:1] in (["body"], ["query"]) else loc)]  # field, not its source
        parts.append(f"{'.'.join(where) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class Instrumented:
    """Outermost ASGI layer: times and counts every request by endpoint and status, and refuses bodies over the
    limit before the application reads them (a chunked body is counted as it arrives)."""

    def __init__(self, app, service: SearchService) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [None]  # the status sent, once a response starts

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            host = dict(scope["headers"]).get(b"host")
            host = None if host is None else host.decode("latin-1")
            if not self.service.settings.answers_host(host):
                await error_response(
                    421, "misdirected", f"Host {host[:80]!r} is not a name of this loopback service: expected "
                    "localhost or a loopback address, or start it with --allow-host NAME (a proxy's name)")(
                    scope, receive, send_counted)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(receive)
                if body is None:
                    limit = self.service.settings.max_body_bytes
                    await error_response(413, "too_large", f"the request body is over {limit:,} bytes")(
                        scope, receive, send_counted)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counted)
        except Exception:
            if status[0] != 500:  # Starlette raises again what its 500 handler answered (and logged): not twice
                raise
        finally:
            self.service.metrics.observe(scope["path"], status[0] or 500, time.perf_counter() - started)

    async def _read_body(self, receive) -> bytes | None:
        limit, chunks, size = self.service.settings.max_body_bytes, [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def create_app(service: SearchService) -> Instrumented:
    settings = service.settings

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="embedpipe serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def authorized(request: Request) -> None:  # async: a sync one waits for a thread that searches hold
        if settings.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
            raise ServiceError(401, "unauthorized", "a bearer token is required: send 'Authorization: Bearer <token>'",
                               {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "bad_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such endpoint: try /search, /version, /health, /ready or /metrics",
                   405: "method not allowed here"}.get(exc.status_code, str(exc.detail))
        # Starlette's headers kept: a 405 names the methods allowed (Allow)
        return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), message,
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering a request")
        return error_response(500, "internal", "internal error; the service's log has the details")

    def not_ready() -> ServiceError:
        refusal = service.follower.last_refusal
        why = f"; the last version tried, {refusal.version}, was refused ({refusal.check})" if refusal else ""
        return ServiceError(503, "not_ready", f"no version of {settings.index}/{settings.alias} is loaded yet{why}")

    async def search(query: str, k: int, mode: str | None) -> JSONResponse:
        served = service.holder.current  # this request's version, from here to its answer
        if served is None:
            raise not_ready()
        # The deadline stops the search thread too: one abandoned by fail_after would still wait for the search
        # lock and search, and under overload such searches would delay every request after them.
        work = partial(answer, served, query, k, mode, settings.limits, time.monotonic() + settings.request_timeout_s)
        try:
            with anyio.fail_after(settings.request_timeout_s):
                result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            limit = settings.request_timeout_s
            raise ServiceError(504, "timeout", f"the search took longer than {limit:g} s") from None
        except InputError as exc:
            raise ServiceError(400, "bad_request", str(exc)) from None
        except EmbedpipeError as exc:
            log.error("search failed on version %s: %s", served.version, exc)
            raise ServiceError(500, "search_failed", str(exc)) from None
        return JSONResponse(result.to_dict(), headers={VERSION_HEADER: served.version})

    @app.get("/search", dependencies=guarded)
    async def search_get(request: Request, q: Annotated[str, Query(description="the query text")],
                         k: int | None = None, mode: str | None = None) -> JSONResponse:
        check_query_string(request.scope["query_string"])
        return await search(q, settings.limits.default_k if k is None else k, mode)

    @app.post("/search", dependencies=guarded)
    async def search_post(request: Request) -> JSONResponse:
        if request.scope["query_string"]:  # it would be ignored: the request would search other than it says
            raise ServiceError(400, "bad_request", "POST /search takes its parameters in the JSON body, not the URL")
        body = search_body(await request.body())
        return await search(body.query, settings.limits.default_k if body.k is None else body.k, body.mode)

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: uptime probes and curl -I
    async def health() -> dict:
        return {"status": "ok", "ready": service.holder.current is not None}

    @app.api_route("/ready", methods=["GET", "HEAD"])
    async def ready() -> JSONResponse:
        served = service.holder.current
        if served is None:
            raise not_ready()
        return JSONResponse({"ready": True, "index": served.index, "alias": settings.alias,
                             "version": served.version}, headers={VERSION_HEADER: served.version})

    @app.get("/version", dependencies=guarded)
    async def version() -> JSONResponse:
        served = service.holder.current
        if served is None:
            raise not_ready()
        body = {**served.describe(), **service.follower.status(), "timeline": service.holder.timeline()}
        return JSONResponse(body, headers={VERSION_HEADER: served.version})

    @app.get("/metrics", dependencies=guarded)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        served = service.holder.current
        nonce = secrets.token_urlsafe(16)
        body = render_page(settings.index, settings.alias, served.version if served else None,
                           served.modes if served else [], served.default_mode if served else None,
                           settings.limits, settings.token is not None, nonce)
        csp = f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'"
        return HTMLResponse(body, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"})

    return Instrumented(app, service)
