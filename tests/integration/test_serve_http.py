"""`embedpipe serve`'s HTTP API on a real uvicorn on loopback (in a thread of the test process): the endpoints,
errors as JSON, limits, the bearer token, readiness, timeouts and metrics; an S3 root whose credentials never
show."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from flows.local_server import free_port
from flows.serve.app import ServiceError, search_body
from flows.serve.server import serving_in_thread
from flows.serve.settings import ServeSettings
from pipeline.serving.query import Limits
from pipeline.snapshots.aliases import promote
from pipeline.storage.backend import Storage
from tests.conftest import S3_KEY, S3_SECRET
from tests.serving import INDEX, corrupt, publish_version

TOKEN = "serve-test-token-5d1e77"


def call(base: str, path: str, body: object = None, method: str | None = None, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, object]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, hdrs, text = resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        status, hdrs, text = err.code, dict(err.headers), err.read().decode()
    kind = hdrs.get("content-type", "")
    return status, hdrs, json.loads(text) if kind.startswith("application/json") else text


@pytest.fixture(scope="module")
def root(tmp_path_factory, encoder, serving_corpus) -> str:
    s = Storage(str(tmp_path_factory.mktemp("serve-root")))
    publish_version(s, "v1", encoder, *serving_corpus)
    publish_version(s, "bad", encoder, *serving_corpus)
    corrupt(s, "bad")
    promote(s, INDEX, "live", "v1", None)
    return s.url


def settings_for(root: str, **changes) -> ServeSettings:
    return replace(ServeSettings(root=root, index=INDEX, port=free_port(), poll_interval_s=0.05,
                                 limits=Limits(max_k=50, max_query_chars=500), max_body_bytes=4096), **changes)


@pytest.fixture(scope="module")
def base(root):
    settings = settings_for(root)
    with serving_in_thread(settings):
        yield f"http://127.0.0.1:{settings.port}"


def test_search_get_and_post_name_the_version_that_answered(base):
    status, headers, got = call(base, "/search?q=vitamin+D+and+bone+health&k=3")
    assert status == 200 and got["version"] == "v1" and headers["x-embedpipe-version"] == "v1"
    assert got["index"] == INDEX and got["mode"] == "exact" and got["k"] == 3 and len(got["hits"]) == 3
    assert set(got["hits"][0]) == {"rank", "doc_id", "title", "score", "chunk_id", "start", "end"}
    assert got["hits"][0]["score"] >= got["hits"][1]["score"] and got["truncated_to_tokens"] is None
    status, _, posted = call(base, "/search", {"query": "vitamin D and bone health", "k": 3, "mode": "binary+rescore"})
    assert status == 200 and posted["version"] == "v1" and posted["mode"] == "binary+rescore"
    assert [h["doc_id"] for h in posted["hits"]] == [h["doc_id"] for h in got["hits"]]  # rescoring restores exact
    for query, truncated in (("interleukin-6 " * 35, None), ("IL-6/IL-10 " * 40, 256)):  # 212 and 282 tokens
        status, _, got = call(base, "/search", {"query": query, "k": 1})
        assert status == 200 and got["truncated_to_tokens"] == truncated and len(got["hits"]) == 1, query


def test_health_ready_and_version(base):
    assert call(base, "/health")[2] == {"status": "ok", "ready": True}
    status, _, ready = call(base, "/ready")
    assert status == 200 and ready == {"ready": True, "index": INDEX, "alias": "live", "version": "v1"}
    status, _, version = call(base, "/version")
    assert status == 200 and version["version"] == "v1" and version["alias"] == "live"
    assert version["model"]["name"] == "all-MiniLM-L6-v2" and version["model"]["dims"] == 384
    assert len(version["model"]["fingerprint"]) == 16 and version["loaded_at"].endswith("+00:00")
    assert "exact" in version["modes"] and "binary+rescore" in version["modes"]
    assert [s["version"] for s in version["timeline"]] == ["v1"] and version["timeline"][0]["until"] is None


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "message"), [
    ("GET", "/search?q=%20%20&k=3", None, 400, "bad_request", "is empty: expected some text"),
    ("GET", "/search?q=%E2%80%8B%00", None, 400, "bad_request", "is empty: expected some text"),  # ZWSP, NUL
    ("GET", "/search?q=x&k=51", None, 400, "bad_request", "k=51: expected 1 to 50"),
    ("GET", "/search?q=x&k=ten", None, 400, "bad_request", "k: Input should be a valid integer"),
    ("GET", "/search?k=3", None, 400, "bad_request", "q: Field required"),
    ("GET", "/search?q=x&mode=ivfpq", None, 400, "bad_request", "no search mode 'ivfpq' in idx version v1; available"),
    ("GET", "/search?q=x&mode=", None, 400, "bad_request", "mode is empty; expected one of"),
    ("POST", "/search", {"query": "x", "mode": ""}, 400, "bad_request", "mode is empty; expected one of"),
    ("GET", "/search?q=%ED%A0%80", None, 400, "bad_request", "the query string is not valid UTF-8"),
    ("GET", "/search?q=x&q=y", None, 400, "bad_request", "parameter 'q' is given 2 times: expected it once"),
    ("GET", "/search?q=x&mdoe=binary", None, 400, "bad_request", "unknown parameter 'mdoe': expected q, k, mode"),
    ("POST", "/search", {"query": "\ud800 x"}, 400, "bad_request", "not valid Unicode: a lone surrogate at char"),
    ("POST", "/search", {"query": "\ud800"}, 400, "bad_request", "not valid Unicode: a lone surrogate at char"),
    ("POST", "/search", {"query": "x", "k": True}, 400, "bad_request", "k: Input should be a valid integer"),
    ("POST", "/search", [{"query": "x"}], 400, "bad_request", "the request body is an array: expected a JSON object"),
    ("POST", "/search", {"query": "x" * 501}, 400, "bad_request", "501 characters; this service takes at most 500"),
    ("POST", "/search", {"query": "x", "limit": 3}, 400, "bad_request", "limit: Extra inputs are not permitted"),
    ("POST", "/search", {"query": 3}, 400, "bad_request", "query: Input should be a valid string"),
    ("POST", "/search", {"query": "x" * 5000}, 413, "too_large", "request body is over 4,096 bytes"),
    ("GET", "/nowhere", None, 404, "not_found", "no such endpoint"),
    ("DELETE", "/search", None, 405, "method_not_allowed", "method not allowed"),
    ("POST", "/search?k=50&mode=bm25", {"query": "x"}, 400, "bad_request", "takes its parameters in the JSON body"),
])
def test_errors_are_json_with_a_clear_message(base, method, path, body, status, code, message):
    got_status, headers, got = call(base, path, body, method=method)
    assert got_status == status and headers["content-type"] == "application/json"
    assert got["error"]["code"] == code and message in got["error"]["message"], got


def test_bad_json_a_key_given_twice_bad_utf8_and_a_chunked_body_over_the_limit(base):
    for raw, message in [(b"{not json", "not JSON: Expecting property name enclosed in double quotes at line 1"),
                         (b'{"query": "x", "k": 2, "query": "y"}', "key 'query' is given twice in the request body"),
                         (b'{"query": "caf\xe9"}', "the request body is not valid UTF-8 (byte 14)"),
                         (b'{"query": ' + b"[" * 2000 + b"]" * 2000 + b"}", "the request body cannot be read: "
                          "maximum recursion depth exceeded")]:
        status, _, got = call(base, "/search", raw=raw, method="POST")
        assert status == 400 and got["error"]["code"] == "bad_request" and message in got["error"]["message"], got
    with pytest.raises(ServiceError, match="Exceeds the limit .4300 digits. for integer string conversion"):
        search_body(b'{"query": "x", "k": ' + b"9" * 5000 + b"}")  # a server whose body limit lets it through
    request = urllib.request.Request(base + "/search", data=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 413


def test_metrics_count_requests_latency_and_swaps(base):
    for _ in range(3):
        call(base, "/search?q=statins&k=2")
    call(base, "/search?q=x&k=0")
    status, headers, text = call(base, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")

    def value(name: str, labels: str = "") -> float:
        match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
        assert match, f"{name}{labels} not in /metrics"
        return float(match[1])

    assert value("embedpipe_serve_requests_total", '{endpoint="/search",status="200"}') >= 3
    assert value("embedpipe_serve_requests_total", '{endpoint="/search",status="400"}') >= 1
    assert value("embedpipe_serve_request_seconds_count", '{endpoint="/search"}') >= 4
    assert value("embedpipe_serve_request_seconds_bucket", '{endpoint="/search",le="+Inf"}') >= 4
    assert value("embedpipe_serve_swaps_total") == 1 and value("embedpipe_serve_failed_loads_total",
                                                               '{check="checksum"}') == 0
    assert value("embedpipe_serve_version_info", '{alias="live",index="idx",version="v1"}') == 1
    assert value("embedpipe_serve_alias_polls_total", '{outcome="unchanged"}') >= 1
    # every search's query went through a forward pass (one request at a time here: one query per pass)
    assert value("embedpipe_serve_queries_per_pass_bucket", '{le="1.0"}') >= 3


def test_the_page_lists_modes_and_the_serving_version(base):
    status, headers, page = call(base, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert '<code id="version">v1</code>' in page and '<option value="exact" selected>exact</option>' in page
    nonce = re.search(r"script-src 'nonce-([^']+)'", headers["content-security-policy"])[1]
    assert f'<script nonce="{nonce}">' in page and 'id="token"' not in page


def test_methods_are_named_on_a_405_and_probes_may_use_head(base):
    status, headers, _ = call(base, "/search", method="DELETE")
    assert status == 405 and "GET" in headers["allow"]  # Starlette's header, kept (it names the first route's)
    for path in ("/health", "/ready", "/"):
        with urllib.request.urlopen(urllib.request.Request(base + path, method="HEAD"), timeout=30) as resp:
            assert resp.status == 200 and resp.read() == b"", path  # headers only


def test_a_service_whose_max_k_is_under_10_answers_requests_that_name_no_k(root):
    """The default k was 10 whatever --max-k said: every request without k, and the page's form, were refused."""
    settings = settings_for(root, limits=Limits(max_k=5, max_query_chars=500))
    base = f"http://127.0.0.1:{settings.port}"
    with serving_in_thread(settings):
        for status, _, got in (call(base, "/search?q=statins"), call(base, "/search", {"query": "statins"})):
            assert status == 200 and got["k"] == 5 and len(got["hits"]) == 5
        page = call(base, "/")[2]
        assert 'max="5" value="5"' in page


def test_a_bearer_token_guards_search_version_and_metrics(root, caplog):
    settings = settings_for(root, token=TOKEN)
    base = f"http://127.0.0.1:{settings.port}"
    with caplog.at_level(logging.DEBUG), serving_in_thread(settings):
        for path in ("/search?q=statins", "/version", "/metrics"):
            status, headers, got = call(base, path)
            assert status == 401 and got["error"]["code"] == "unauthorized" and headers["www-authenticate"] == "Bearer"
            assert call(base, path, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert call(base, path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert call(base, "/health")[0] == 200 and call(base, "/ready")[0] == 200
        status, _, page = call(base, "/")
        assert status == 200 and 'id="token"' in page
        answered = [call(base, p, headers={"Authorization": f"Bearer {TOKEN}"})[2] for p in ("/version", "/metrics")]
    assert f"serving {INDEX}/live version v1" in caplog.text  # the service's log was captured
    assert TOKEN not in json.dumps(answered[0]) + answered[1] + page + caplog.text
    assert TOKEN not in repr(settings)


def test_not_ready_until_a_version_passes_its_checks(tmp_path, encoder, serving_corpus):
    s = Storage(str(tmp_path))
    for v in ("good", "bad"):
        publish_version(s, v, encoder, *serving_corpus)
    corrupt(s, "bad")
    promote(s, INDEX, "live", "bad", None)
    settings = settings_for(s.url)
    base = f"http://127.0.0.1:{settings.port}"
    with serving_in_thread(settings, wait_for_version=False) as service:
        deadline = time.monotonic() + 30
        while service.follower.last_refusal is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert call(base, "/health")[2] == {"status": "ok", "ready": False}
        for path in ("/ready", "/search?q=statins", "/version"):
            status, _, got = call(base, path)
            assert status == 503 and got["error"]["code"] == "not_ready"
            assert "version tried, bad, was refused (checksum)" in got["error"]["message"]
        promote(s, INDEX, "live", "good", "bad")
        while call(base, "/ready")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert call(base, "/search?q=statins")[2]["version"] == "good"


def test_a_search_over_its_time_limit_is_answered_504_and_not_run_after(root):
    """Under overload a request that timed out must not be searched later all the same (each such search would
    delay the requests after it): here another search holds the service's search lock past the request's limit."""
    settings = settings_for(root, request_timeout_s=0.5)
    with serving_in_thread(settings) as service:
        base = f"http://127.0.0.1:{settings.port}"

        def passes() -> float:  # forward passes so far (the warm-up's included)
            text = call(base, "/metrics")[2]
            return float(re.search(r"^embedpipe_serve_queries_per_pass_count (\S+)$", text, re.M).group(1))

        before = passes()
        with service.search_lock:  # a long search
            status, _, got = call(base, "/search?q=statins")
        time.sleep(0.3)  # a search left waiting for the lock would have encoded the query by now
        assert passes() == before
        assert call(base, "/search?q=statins")[0] == 200 and passes() == before + 1
    assert status == 504 and got["error"] == {"code": "timeout", "message": "the search took longer than 0.5 s"}


def test_an_s3_root_serves_and_its_credentials_never_show(s3_server, encoder, serving_corpus, caplog):
    import uuid

    s = Storage(f"s3://embedpipe-test/{uuid.uuid4().hex}")
    publish_version(s, "v1", encoder, *serving_corpus)
    publish_version(s, "v2", encoder, *serving_corpus)
    promote(s, INDEX, "live", "v1", None)
    settings = settings_for(s.url)
    base = f"http://127.0.0.1:{settings.port}"
    # INFO: botocore's own DEBUG lines carry the access key id (its request headers), below any service's level
    with caplog.at_level(logging.INFO), serving_in_thread(settings) as service:
        assert call(base, "/search?q=statins")[2]["version"] == "v1"
        promote(s, INDEX, "live", "v2", "v1")
        deadline = time.monotonic() + 30
        while service.holder.current.version != "v2":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        seen = [call(base, p)[2] for p in ("/version", "/metrics", "/search?q=x&k=0", "/search?q=statins")]
    text = json.dumps(seen) + caplog.text
    assert seen[-1]["version"] == "v2" and "serving idx/live version v2" in caplog.text
    assert S3_KEY not in text and S3_SECRET not in text


def test_the_serve_command_refuses_what_would_never_get_ready(root, tmp_path, monkeypatch):
    """An alias that is not set, or a warm-up query every version would fail, is an error at start, not a
    service that answers 503 for good; so is a port in use."""
    from typer.testing import CliRunner

    from flows.cli import app

    def serve(*args: str):
        return CliRunner().invoke(app, ["serve", *args, "--port", str(free_port())])

    out = serve(str(tmp_path), INDEX)
    assert out.exit_code == 2 and f"alias {INDEX}/live is not set at {tmp_path}: publish and promote" in out.stderr
    out = serve(root, INDEX, "--warmup-query", "statins", "--warmup-query", "  ")
    assert out.exit_code == 2 and "--warmup-query: query '  ' is empty: expected some text" in out.stderr
    # a token set but empty turned authentication off; one a header cannot carry made every request 401
    for token in ("", "  ", "pässwörd"):
        out = CliRunner().invoke(app, ["serve", root, INDEX, "--port", str(free_port())],
                                 env={"EMBEDPIPE_SERVE_TOKEN": token})
        assert out.exit_code == 2 and "EMBEDPIPE_SERVE_TOKEN is" in out.stderr and "RFC 6750" in out.stderr, token
        assert not token.strip() or token not in out.stderr
    from flows.cli.serve import serve_token

    monkeypatch.setenv("EMBEDPIPE_TEST_TOKEN", "tok-123\n")  # a secret file's trailing newline
    monkeypatch.delenv("EMBEDPIPE_NO_SUCH_VAR", raising=False)
    assert serve_token("EMBEDPIPE_TEST_TOKEN") == "tok-123" and serve_token("EMBEDPIPE_NO_SUCH_VAR") is None
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port in use: said before any version loads
        port = taken.getsockname()[1]
        out = CliRunner().invoke(app, ["serve", root, INDEX, "--port", str(port)])
    assert out.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr


def test_a_loopback_service_answers_only_its_own_names(root):
    """DNS rebinding: a page at attacker.example whose name is rebound to 127.0.0.1 reaches a tokenless loopback
    service from the visitor's browser, naming itself in Host; that request is refused before any endpoint."""
    settings = settings_for(root, allowed_hosts=("search.internal",))
    base = f"http://127.0.0.1:{settings.port}"
    with serving_in_thread(settings):
        for host in ("attacker.example", f"attacker.example:{settings.port}", "127.0.0.1.attacker.example",
                     "localhost.attacker.example"):
            for path in ("/search?q=statins", "/version", "/"):
                status, _, got = call(base, path, headers={"Host": host})
                assert status == 421 and got["error"]["code"] == "misdirected", (host, path)
                assert "--allow-host" in got["error"]["message"]
        for host in ("localhost", f"LOCALHOST.:{settings.port}", "app.localhost", "127.0.0.1", "127.0.0.2:80",
                     f"[::1]:{settings.port}", "search.internal", f"search.internal:{settings.port}"):
            status, _, got = call(base, "/search?q=statins", headers={"Host": host})
            assert status == 200 and got["hits"], host
        assert 'status="421"' in call(base, "/metrics")[2]


def test_a_service_on_another_address_answers_any_name(root):
    """Reached from other machines by names it cannot know (a load balancer's, a pod's): a token guards it."""
    settings = settings_for(root, host="0.0.0.0", token=TOKEN)
    base = f"http://127.0.0.1:{settings.port}"
    with serving_in_thread(settings):
        status, _, got = call(base, "/search?q=statins", headers={"Host": "search.example.com",
                                                                  "Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and got["hits"]


def test_an_unexpected_error_is_a_json_500_logged_once(root, monkeypatch, caplog):
    """Its traceback is in the log once (Starlette raised it again after our handler, and uvicorn logged it too);
    the client gets no detail of it."""
    def broken(*_args, **_kwargs):
        raise RuntimeError("search broke: secret detail")

    monkeypatch.setattr("flows.serve.app.answer", broken)
    settings = settings_for(root)
    base = f"http://127.0.0.1:{settings.port}"
    with caplog.at_level(logging.INFO), serving_in_thread(settings):
        status, _, got = call(base, "/search?q=statins")
        assert call(base, "/health")[0] == 200  # the service goes on
        metrics = call(base, "/metrics")[2]
    assert status == 500 and got == {"error": {"code": "internal",
                                               "message": "internal error; the service's log has the details"}}
    logged = [r for r in caplog.records if r.exc_info and "secret detail" in str(r.exc_info[1])]
    assert len(logged) == 1 and logged[0].name == "flows.serve", [r.name for r in logged]
    assert 'status="500"' in metrics
