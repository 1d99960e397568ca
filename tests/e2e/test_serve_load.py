"""The blue-green promise under load: `embedpipe serve` (the real command, in its own process) answers 8 concurrent
clients while the test promotes a new version, rolls back, and promotes a version with a corrupted file.

Zero failed requests; every response names a version that was serving at some moment during that request (the
service's own timeline of swaps); the corrupted version never answers; after each swap settles the server's RSS is
back within 10% of what it was with one version loaded (a version's files alone are over 15% of that RSS, and it
holds more in memory, so a version kept alive would show). The default suite runs it for 12 s; `-m slow` adds the
30 s run.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import psutil
import pytest

from flows.local_server import free_port
from pipeline.snapshots.aliases import promote, read_alias, rollback
from pipeline.storage.backend import Storage
from tests.conftest import REPO
from tests.serving import INDEX, corrupt, publish_version, random_corpus

CLIENTS = 8
# exact index 123 MB + fp16 rescoring store 61 MB: a version is ~20% of the server's RSS, which varies by run (with
# 60,000 rows, 760-903 MB: their 141 MB were at times under the 15% the RSS check needs to see a version kept alive)
ROWS = 80_000
QUERIES = ["statin therapy and cardiovascular risk", "vitamin D deficiency in children", "tumor suppressor genes",
           "antibiotic resistance mechanisms", "insulin sensitivity after exercise", "BRCA1 mutations",
           "sleep deprivation and memory", "gut microbiome composition"]
MODES = ["exact", "binary", "binary+rescore"]


@dataclass(frozen=True)
class Answered:
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    version: str | None


def client(port: int, stop: threading.Event, out: list[Answered], seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        body = json.dumps({"query": rng.choice(QUERIES), "k": rng.choice([5, 10, 20]), "mode": rng.choice(MODES)})
        started = time.time()
        try:
            conn.request("POST", "/search", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            out.append(Answered(started, time.time(), resp.status, payload.get("version")))
        except (OSError, http.client.HTTPException, ValueError):
            out.append(Answered(started, time.time(), 0, None))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()


def get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def settled_rss(pid: int) -> int:
    """The median of a few samples over half a second (requests come and go)."""
    samples = []
    for _ in range(5):
        samples.append(psutil.Process(pid).memory_info().rss)
        time.sleep(0.1)
    return int(statistics.median(samples))


@pytest.mark.parametrize("seconds", [12, pytest.param(30, marks=pytest.mark.slow)], ids=["12s", "30s"])
def test_no_failed_request_through_promotion_rollback_and_a_corrupted_version(tmp_path, encoder, seconds):
    storage = Storage(str(tmp_path / "root"))
    vectors, ids = random_corpus(ROWS)
    for version in ("v1", "v2", "bad"):
        publish_version(storage, version, encoder, vectors, ids)
    del vectors
    corrupt(storage, "bad")
    promote(storage, INDEX, "live", "v1", None)

    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", storage.url, INDEX, "--alias", "live", "--port", str(port),
             "--poll-interval", "0.2", "--allow-host", "Search.Internal:8080"], cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: get(port, "/ready")[0] == 200, "the service to become ready")
        # a name rebound to loopback is refused, the one --allow-host gave (a proxy's) answered
        assert get(port, "/ready", "attacker.example")[0] == 421 and get(port, "/ready", "search.internal")[0] == 200
        report = run_load(storage, port, server.pid, seconds)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    answered: list[Answered] = report.pop("_answers")
    print("\nload test:", json.dumps({k: v for k, v in report.items() if k != "timeline"}))
    log = log_path.read_text()
    # uvicorn shuts down gracefully, then re-raises the signal it caught so the process ends as SIGTERM says
    assert server.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log[-3000:]

    failed = [a for a in answered if a.status != 200]
    assert report["requests"] > 100 and failed == [], failed[:5]
    assert {a.version for a in answered} == {"v1", "v2"}  # the corrupted version never answered
    timeline = report["timeline"]
    assert [s["version"] for s in timeline] == ["v1", "v2", "v1"] and report["swaps"] == 3
    outside = [a for a in answered if not any(s["version"] == a.version and s["since"] <= a.ended and
                                              (s["until"] is None or s["until"] >= a.started) for s in timeline)]
    assert outside == [], outside[:5]
    assert report["failed_loads_checksum"] == 1 and "bad refused (checksum)" in log
    assert report["releases"] == 2 and log.count("released idx/live version") == 2
    # the check can see a version kept alive: its files alone are more than the 10% allowed
    assert report["version_bytes"] > 0.15 * report["rss_mb"]["one_version"] * 2**20
    for phase in ("after_promotion", "after_rollback", "after_corrupted"):
        assert report["rss_mb"][phase] <= 1.10 * report["rss_mb"]["one_version"], report["rss_mb"]


def run_load(storage: Storage, port: int, pid: int, seconds: float) -> dict:
    stop, answers = threading.Event(), [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=client, args=(port, stop, answers[i], i)) for i in range(CLIENTS)]
    started = time.time()
    for t in threads:
        t.start()

    def version() -> dict:
        return json.loads(get(port, "/version")[1])

    def swapped_to(name: str) -> bool:
        v = version()
        return v["version"] == name and not v["releasing"]

    rss, peak = {}, [0]
    sampling = threading.Event()

    def sample_peak() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], psutil.Process(pid).memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_peak)
    try:
        time.sleep(2)  # the load is on and every thread it needs exists
        rss["one_version"] = settled_rss(pid)
        sampler.start()
        promote(storage, INDEX, "live", "v2", "v1")
        wait_for(lambda: swapped_to("v2"), "the swap to v2 and v1's release")
        time.sleep(0.5)
        rss["after_promotion"] = settled_rss(pid)
        rollback(storage, INDEX, "live", "v2")
        wait_for(lambda: swapped_to("v1"), "the rollback to v1 and v2's release")
        time.sleep(0.5)
        rss["after_rollback"] = settled_rss(pid)
        promote(storage, INDEX, "live", "bad", "v1")
        wait_for(lambda: (version()["last_refusal"] or {}).get("version") == "bad", "the corrupted version's refusal")
        rss["after_corrupted"] = settled_rss(pid)
        time.sleep(max(0.0, started + seconds - time.time()))
    finally:
        stop.set()
        sampling.set()
        for t in threads:
            t.join(60)
    elapsed = time.time() - started
    assert read_alias(storage, INDEX, "live").version == "bad"  # the alias moved; the service did not follow it
    final = version()
    metrics = get(port, "/metrics")[1].decode()

    def metric(line: str) -> float:
        return float(next(x for x in metrics.splitlines() if x.startswith(line + " ")).split()[-1])

    answered = [a for per_client in answers for a in per_client]
    latencies = sorted((a.ended - a.started) * 1000 for a in answered)
    return {"clients": CLIENTS, "seconds": round(elapsed, 1), "requests": len(answered),
            "failures": sum(a.status != 200 for a in answered), "requests_per_s": round(len(answered) / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2], 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
            "answered_by": {v: sum(a.version == v for a in answered) for v in ("v1", "v2", "bad")},
            "swaps": int(metric("embedpipe_serve_swaps_total")),
            "failed_loads_checksum": int(metric('embedpipe_serve_failed_loads_total{check="checksum"}')),
            "releases": int(metric("embedpipe_serve_versions_released_total")),
            "timeline": final["timeline"], "version_bytes": final["bytes"],
            "rss_mb": {k: round(v / 2**20, 1) for k, v in {**rss, "peak_during_swaps": peak[0]}.items()},
            "_answers": answered}
