"""The search page at `/` in a real headless Chromium: a person types a query, picks a mode and k, clicks Search,
and reads titles, doc ids, scores, chunk offsets and the version that answered; errors show as text; a title with
markup stays text. Marked `browser`: skipped where no chromium binary is installed (apt-get install chromium)."""

from __future__ import annotations

import json
import urllib.request

import polars as pl
import pytest

from flows.local_server import free_port
from flows.serve.server import serving_in_thread
from flows.serve.settings import ServeSettings
from pipeline.snapshots.aliases import promote
from pipeline.storage.backend import Storage
from tests.chromium import Chromium, binary
from tests.serving import INDEX, publish_version

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(binary() is None, reason="no chromium binary (Debian: apt-get install chromium)")]
MARKUP = '<img src=x onerror="document.body.dataset.injected=1"><b class="injected">bold?</b>'

RESULTS = """[...document.querySelectorAll('li.hit')].map(li => ({
  title: li.querySelector('.title').textContent,
  cells: [...li.querySelectorAll('.meta span')].map(s => s.textContent)}))"""


@pytest.fixture(scope="module")
def root(tmp_path_factory, encoder, serving_corpus) -> str:
    vectors, ids = serving_corpus
    first = ids["title"][0]
    ids = ids.with_columns(pl.when(pl.col("row") == 0).then(pl.lit(first + " " + MARKUP)).otherwise(pl.col("title"))
                           .alias("title"))
    s = Storage(str(tmp_path_factory.mktemp("page-root")))
    publish_version(s, "v1", encoder, vectors, ids)
    promote(s, INDEX, "live", "v1", None)
    return s.url


@pytest.fixture(scope="module")
def browser():
    with Chromium(binary()) as chromium:
        yield chromium


def api_search(base: str, query: str, k: int, mode: str, headers: dict | None = None) -> dict:
    body = json.dumps({"query": query, "k": k, "mode": mode}).encode()
    request = urllib.request.Request(base + "/search", body, {"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def search_in_page(browser: Chromium, query: str, mode: str, k: int, expect: str = "done") -> None:
    browser.type_into("#q", query)
    browser.evaluate(f"document.getElementById('mode').value = {json.dumps(mode)}")
    browser.type_into("#k", str(k))
    browser.click("button[type=submit]")
    assert browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
                            ) == expect


def test_a_person_searches_and_reads_the_results(root, browser, tmp_path):
    settings = ServeSettings(root=root, index=INDEX, port=free_port(), poll_interval_s=0.1)
    base = f"http://127.0.0.1:{settings.port}"
    with serving_in_thread(settings):
        browser.open(base + "/")
        assert browser.evaluate("document.title") == f"{INDEX} · embedpipe"
        assert browser.evaluate("document.getElementById('version').textContent") == "v1"
        modes = browser.evaluate("[...document.querySelectorAll('#mode option')].map(o => o.value)")
        assert {"exact", "binary", "binary+rescore"} <= set(modes)

        query = "vitamin D deficiency and bone health"
        search_in_page(browser, query, "binary+rescore", 5)
        shown = browser.evaluate(RESULTS)
        expected = api_search(base, query, 5, "binary+rescore")["hits"]
        assert len(shown) == 5 and [s["title"] for s in shown] == [h["title"] for h in expected]
        for row, hit in zip(shown, expected, strict=True):
            assert row["cells"] == [f"doc {hit['doc_id']}", f"score {hit['score']:.4f}", f"chunk {hit['chunk_id']}",
                                    f"chars {hit['start']}-{hit['end']}"]
        status = browser.evaluate("document.getElementById('status').textContent")
        assert "5 results" in status and "mode binary+rescore" in status and "answered by version v1" in status
        browser.screenshot(tmp_path / "page.png")
        assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")

        search_in_page(browser, "   ", "exact", 5, expect="error")
        assert "is empty" in browser.evaluate("document.getElementById('status').textContent")
        assert browser.evaluate("document.querySelectorAll('li.hit').length") == 0


def test_titles_with_markup_stay_text(root, browser, serving_corpus):
    settings = ServeSettings(root=root, index=INDEX, port=free_port(), poll_interval_s=0.1)
    with serving_in_thread(settings):
        browser.open(f"http://127.0.0.1:{settings.port}/")
        search_in_page(browser, serving_corpus[1]["title"][0], "exact", 3)
        titles = [r["title"] for r in browser.evaluate(RESULTS)]
        assert any(MARKUP in t for t in titles)  # shown as the characters it is
        assert browser.evaluate("document.querySelectorAll('.injected, li img').length") == 0
        assert browser.evaluate("document.body.dataset.injected") is None


def test_with_a_token_the_page_asks_for_it(root, browser):
    settings = ServeSettings(root=root, index=INDEX, port=free_port(), poll_interval_s=0.1, token="page-token-1")
    with serving_in_thread(settings):
        browser.open(f"http://127.0.0.1:{settings.port}/")
        search_in_page(browser, "statins", "exact", 3, expect="error")
        assert "bearer token is required" in browser.evaluate("document.getElementById('status').textContent")
        browser.type_into("#token", "page-token-1")
        search_in_page(browser, "statins", "exact", 3)
        assert browser.evaluate("document.querySelectorAll('li.hit').length") == 3
