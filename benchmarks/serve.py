"""`embedpipe serve` against the same searches in-process: latency p50/p99 and requests per second, on the demo
snapshot and on full SciFact, for `exact`, `binary+rescore` and `ivfpq+rescore`.

Each dataset's snapshot comes from the real `reindex` flow under OUT/store with a fixed run id, and is reused when
a committed version of that run is already there (full SciFact: the same config, root and run id as
benchmarks/representations.py, so serve.py reuses what representations.py left there). Alias `bench` points at it, and
`embedpipe serve` (its own process) serves it. Per mode, the golden-set queries (judged ones; k = 10):
  in-process   Searcher.search([query], 10, mode), one query at a time, in this process (model encoding included;
               on a thread other than the main one, as the service's searches run: see measure())
  http x1      POST /search with the same queries, one client, keep-alive
  http x8      the same queries spread over 8 concurrent keep-alive clients; the queries that wait while a forward
               pass runs share the next one (`--query-batch`, 64)
  x8 unbatched the same, served by a second `embedpipe serve --query-batch 1` (one query per pass, as before
               batching); the batching gain is http x8's requests per second over this one's
  mixed        http x8 and x8 unbatched with each query's mode and k drawn (seeded) from the modes above and
               k = 5, 10, 20, as a service's clients send them: a pass shares its forward pass but searches once per
               (mode, k) among its queries
Each setting runs the query list `--passes` times after one warm-up pass; in-process and http x1 take turns query by
query (a neighbour's load on the machine then falls on both alike), and their requests per second are 1 / mean
latency. The HTTP overhead is the ratio of http x1 to in-process: p50 latency, and requests per second. Writes
OUT/serve.{json,md}.
--smoke: a 40-document cut of the demo sample (small enough for the flow to embed without Ray), one pass.

Usage: .venv/bin/python benchmarks/serve.py [--only demo|scifact] [--passes N] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, parse_args, sample_subset, write_report  # noqa: E402

DATASETS = {"demo": ("configs/demo.yaml", "bench-serve-demo"), "scifact": ("configs/scifact-full.yaml", "bench-minilm")}
MODES = ["exact", "binary+rescore", "ivfpq+rescore"]
CLIENTS, K, ALIAS = 8, 10, "bench"
MIXED_KS = (5, 10, 20)


def snapshot_of(name: str, config: str, run_id: str, args: argparse.Namespace) -> tuple[str, str]:
    """(index name, version) of a committed snapshot of this run: reused if there, else built by `embedpipe run` in
    a process of its own (Prefect's server and Ray stay out of the process that measures)."""
    from pipeline.config_loader import load_config
    from pipeline.snapshots.snapshot import committed_versions
    from pipeline.storage.backend import Storage

    overrides = {"storage.root": str(args.out / "store"), "publish.alias": None}
    if args.smoke:
        overrides["corpus.source"] = str(sample_subset(args.out / "smoke-corpus", docs=40, queries=10))
    cfg = load_config(config, overrides)
    root = Storage(cfg.storage.root)
    done = [v for v, snap in committed_versions(root, cfg.index_name) if snap and snap.manifest["run_id"] == run_id
            and set(snap.variants) >= {m.partition("+")[0] for m in MODES}]
    if done:
        print(f"{name}: reusing {cfg.index_name} {done[-1]} (run {run_id})", flush=True)
        return cfg.index_name, done[-1]
    sets = [x for key, value in overrides.items() for x in ("--set", f"{key}={json.dumps(value)}")]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", config, *sets, "--run-id", run_id, "--json"],
                          cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return cfg.index_name, json.loads(proc.stdout)["version"]


def point_alias(root: str, index: str, version: str) -> None:
    from pipeline.snapshots.aliases import promote, read_alias
    from pipeline.storage.backend import Storage

    storage = Storage(root)
    seen = read_alias(storage, index, ALIAS).version
    if seen != version:
        promote(storage, index, ALIAS, version, seen, by="benchmarks/serve.py")


def golden_queries(root: str, index: str, version: str) -> list[str]:
    from pipeline.corpus.readers import read_qrels, read_queries
    from pipeline.snapshots.snapshot import Snapshot
    from pipeline.storage.backend import Storage

    evaluation = Snapshot.of(Storage(root), index, version).manifest["evaluation"]
    queries = read_queries(evaluation["queries"])
    return [queries[q] for q in read_qrels(evaluation["qrels"]) if q in queries]


def figures(latencies_s: list[float], wall_s: float) -> dict:
    ms = sorted(x * 1000 for x in latencies_s)
    return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 3),
            "requests_per_s": round(len(ms) / wall_s, 1)}


def batching(many: list[float], wall: float, serial: list[float], serial_wall: float) -> dict:
    """http x8's figures on the batching service and on the unbatched one, and the gain of the first."""
    batched, one_by_one = figures(many, wall), figures(serial, serial_wall)
    return {f"http_x{CLIENTS}": batched, f"http_x{CLIENTS}_unbatched": one_by_one,
            "batching_gain": round(batched["requests_per_s"] / one_by_one["requests_per_s"], 2)}


def searcher_for(root: str, index: str, version: str):
    from pipeline.quality.search import Searcher
    from pipeline.snapshots.snapshot import Snapshot
    from pipeline.storage.backend import Storage

    return Searcher.from_snapshot(Snapshot.of(Storage(root), index, version))


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)


def post_search(conn: http.client.HTTPConnection, query: str, mode: str, k: int = K) -> None:
    conn.request("POST", "/search", json.dumps({"query": query, "k": k, "mode": mode}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    if resp.status != 200 or len(payload["hits"]) != k:
        raise RuntimeError(f"{resp.status}: {str(payload)[:300]}")


def paired_run(port: int, searcher, queries: list[str], mode: str) -> tuple[list[float], list[float]]:
    """Each query in-process and then over HTTP (one client), one after the other: a neighbour's load on the
    machine falls on both alike. (in-process latencies, http latencies) in s."""
    local, remote, conn = [], [], connect(port)
    for q in queries:
        t = time.perf_counter()
        hits = searcher.search([q], K, mode)[0]
        local.append(time.perf_counter() - t)
        assert len(hits) == K, (mode, q)
        t = time.perf_counter()
        post_search(conn, q, mode)
        remote.append(time.perf_counter() - t)
    conn.close()
    return local, remote


def concurrent_run(port: int, requests: list[tuple[str, str, int]], clients: int) -> tuple[list[float], float]:
    """Every (query, mode, k) once, spread over `clients` keep-alive connections: (latencies in s, wall s)."""
    shares = [requests[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        conn = connect(port)
        for q, mode, k in shares[i]:
            t = time.perf_counter()
            post_search(conn, q, mode, k)
            latencies[i].append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if sum(map(len, latencies)) != len(requests):
        raise RuntimeError("a client failed; see its traceback above")
    return [x for per in latencies for x in per], wall


def measure(port: int, unbatched: int, searcher, queries: list[str], passes: int) -> dict[str, dict]:
    """Per mode, after a warm-up pass of each: in-process and http x1 paired query by query, then http x8 on the
    batching service and on the unbatched one (`unbatched`, its port), pass after pass.

    The in-process searches run on one thread that is not the main thread, as the service's do: on 2 vCPUs a
    search from the main thread, alternating torch's and FAISS's OpenMP runtimes (two libgomp copies), stalled
    while both kept their threads spinning (p50 265 ms against 8 ms from another thread of the same process,
    interleaved; OMP_WAIT_POLICY=PASSIVE removes it), which would flatter the HTTP side."""
    out = {}
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="in-process")
    for mode in MODES:
        requests = [(q, mode, K) for q in queries]
        worker.submit(paired_run, port, searcher, queries, mode).result()
        concurrent_run(port, requests, CLIENTS)
        concurrent_run(unbatched, requests, CLIENTS)
        local, remote, many, wall, serial, serial_wall = [], [], [], 0.0, [], 0.0
        for _ in range(passes):
            a, b = worker.submit(paired_run, port, searcher, queries, mode).result()
            c, w = concurrent_run(port, requests, CLIENTS)
            d, v = concurrent_run(unbatched, requests, CLIENTS)
            local, remote, many, wall = local + a, remote + b, many + c, wall + w
            serial, serial_wall = serial + d, serial_wall + v
        # one request at a time: requests per second = 1 / mean latency
        a, b = figures(local, sum(local)), figures(remote, sum(remote))
        out[mode] = {"in_process": a, "http_x1": b, **batching(many, wall, serial, serial_wall),
                     "overhead_p50": round(b["p50_ms"] / a["p50_ms"], 2),
                     "throughput_ratio_x1": round(b["requests_per_s"] / a["requests_per_s"], 2)}
        print(f"{mode}: {json.dumps(out[mode])}", flush=True)
    worker.shutdown()
    return out


def measure_mixed(port: int, unbatched: int, queries: list[str], passes: int) -> dict[str, dict | float]:
    """http x8 on the batching service and on the unbatched one, each query's mode and k drawn from MODES and
    MIXED_KS (seeded), after a warm-up pass of each."""
    rng = random.Random(0)
    requests = [(q, rng.choice(MODES), rng.choice(MIXED_KS)) for q in queries]
    concurrent_run(port, requests, CLIENTS)
    concurrent_run(unbatched, requests, CLIENTS)
    many, wall, serial, serial_wall = [], 0.0, [], 0.0
    for _ in range(passes):
        c, w = concurrent_run(port, requests, CLIENTS)
        d, v = concurrent_run(unbatched, requests, CLIENTS)
        many, wall, serial, serial_wall = many + c, wall + w, serial + d, serial_wall + v
    out = batching(many, wall, serial, serial_wall)
    print(f"mixed: {json.dumps(out)}", flush=True)
    return out


@contextlib.contextmanager
def served(root: str, index: str, args: argparse.Namespace, query_batch: int = 64) -> Iterator[int]:
    """`embedpipe serve` in its own process, on a free loopback port, once ready."""
    from flows.local_server import free_port

    port = free_port()
    with (args.out / f"serve-{index}-batch{query_batch}.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", root, index, "--alias", ALIAS, "--port",
                                   str(port), "--poll-interval", "5", "--log-level", "warning", "--query-batch",
                                   str(query_batch)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedpipe serve did not become ready; see {log.name}")
            time.sleep(0.2)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    from pipeline.snapshots.snapshot import Snapshot
    from pipeline.storage.backend import Storage

    config, run_id = DATASETS[name]
    root = str(args.out / "store")
    index, version = snapshot_of(name, config, run_id, args)
    point_alias(root, index, version)
    queries = golden_queries(root, index, version)
    passes = 1 if args.smoke else args.passes
    searcher = searcher_for(root, index, version)
    with served(root, index, args) as port, served(root, index, args, query_batch=1) as unbatched:
        load_before = os.getloadavg()[0]
        modes = measure(port, unbatched, searcher, queries, passes)
        mixed = measure_mixed(port, unbatched, queries, passes)
        load_after = os.getloadavg()[0]
    manifest = Snapshot.of(Storage(root), index, version).manifest
    return {"config": config, "index": index, "version": version, "vectors": manifest["counts"]["vectors"],
            "queries": len(queries), "passes": passes, "modes": modes, "mixed": mixed,
            "load_average_1m": [round(load_before, 2), round(load_after, 2)]}  # the machine is shared


def markdown(report: dict) -> str:
    out = [f"# `embedpipe serve`: HTTP against in-process (k = {K})", "",
           f"Latency in ms (p50 / p99) and requests per second; http x{CLIENTS}: {CLIENTS} concurrent clients, "
           "queries batched per forward pass; unbatched: one query per pass (`--query-batch 1`). Overhead: http x1 "
           f"over in-process (p50). Gain: http x{CLIENTS}'s requests per second over unbatched's.", ""]
    for name, d in report["datasets"].items():
        out += [f"## {name}: {d['vectors']:,} vectors, {d['queries']} queries x {d['passes']} passes "
                f"(`{d['config']}`)", "",
                f"Load average (1 min) before and after: {d['load_average_1m'][0]} and {d['load_average_1m'][1]}.", "",
                f"| mode | in-process p50 / p99 | req/s | http x1 p50 / p99 | req/s | overhead (p50) | "
                f"http x{CLIENTS} p50 / p99 | req/s | unbatched x{CLIENTS} p50 / p99 | req/s | gain |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, m in d["modes"].items():
            a, b, c, u = m["in_process"], m["http_x1"], m[f"http_x{CLIENTS}"], m[f"http_x{CLIENTS}_unbatched"]
            out.append(f"| {mode} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | {a['requests_per_s']:.0f} | "
                       f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {b['requests_per_s']:.0f} | "
                       f"{m['overhead_p50']:.2f}x | "
                       f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f} | {c['requests_per_s']:.0f} | "
                       f"{u['p50_ms']:.2f} / {u['p99_ms']:.2f} | {u['requests_per_s']:.0f} | "
                       f"{m['batching_gain']:.2f}x |")
        mixed = d["mixed"]
        c, u = mixed[f"http_x{CLIENTS}"], mixed[f"http_x{CLIENTS}_unbatched"]
        out += ["", f"Mixed (each query's mode drawn from the three above and k from {', '.join(map(str, MIXED_KS))}): "
                f"http x{CLIENTS} {c['requests_per_s']:.0f} req/s (p50 {c['p50_ms']:.2f} ms), unbatched "
                f"{u['requests_per_s']:.0f} req/s (p50 {u['p50_ms']:.2f} ms), gain {mixed['batching_gain']:.2f}x.", ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(DATASETS))
    parser.add_argument("--passes", type=int, default=3, help="times each setting runs the query list")
    args = parse_args(parser)
    names = ["demo"] if args.smoke else [n for n in DATASETS if args.only in (None, n)]
    report = {"clients": CLIENTS, "k": K, "modes": MODES,
              "datasets": {("smoke" if args.smoke else n): run_dataset(n, args) for n in names}}
    write_report(args, "serve", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
