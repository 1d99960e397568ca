"""Scale: the whole reindex flow on synthetic documents (wordllama) at N and 10 x N documents, every stage on Ray
workers; what grows with the corpus and what must not.

1. Sizes: for each --docs, a fresh storage root and one `embedpipe run --json` process (the driver), evaluated on a
   golden set of 100 documents asked for by their first words: seconds per stage, the driver's peak RSS (it reports
   its own), the workers' peaks (reading and preparing; embedding), bytes and files written, and the embedding rate
   per part (early parts of each shard against late ones: a lookup that grows with the cache slows the late ones).
2. A growing cache: --cache-runs runs of --docs[0] new documents each into one root, so each run's lookups face a
   cache holding every earlier run's vectors: the embedding rate per part, run after run.
3. Preparing on 1 and on 2 worker CPUs (reading pieces and preparing shards only, Ray started beforehand): the
   documents per second of each.

Targets: the driver's peak RSS at 10 x N <= 1.25 x at N and under 1 GB; wall time at 10 x N <= 11 x at N; the
embedding rate per part flat within a run and across runs; preparing with 2 CPUs >= 1.7 x with 1.
Writes benchmarks/out/scale.{json,md}.

Usage (from the repository root):
    .venv/bin/python benchmarks/scale.py                                   # 100k and 1M documents (~1.5 h, 2 CPUs)
    .venv/bin/python benchmarks/scale.py --sections prepare                # part 3 alone (~5 minutes)
    .venv/bin/python benchmarks/scale.py --smoke --out /tmp/x              # 1,000 and 4,000 documents
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, parse_args, prefect_server, synthetic_corpus, write_report  # noqa: E402

SECTIONS = ("sizes", "cache", "prepare")
SMOKE = {"docs": [1000, 4000], "shards": 4, "cache_runs": 2, "prepare_docs": 3000, "prepare_pieces": 4}
MEAN_WORDS = 40  # short documents: one chunk each, mostly
GOLDEN_QUERIES, QUERY_WORDS = 100, 8


def config(path: Path, corpus: Path, root: Path, shards: int, piece_bytes: int, golden: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "index_name": "scale", "corpus": {"source": str(corpus)}, **({"evaluation": golden} if golden else {}),
        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
        "chunking": {"max_tokens": 256, "overlap": 32}, "index": {"variants": ["ivfpq"]},
        "storage": {"root": str(root)},
        "run": {"shards": shards, "actors": 2, "cpus_per_actor": 1.0, "piece_bytes": piece_bytes,
                "local_prepare_max_bytes": 0, "local_embed_max_chunks": 0,  # every stage on Ray
                "keep_work": True}}))  # what a run writes, and its shards' markers, are measured after it
    return path


def corpus_file(folder: Path, docs: int, seed: int, first_id: int = 0) -> Path:
    path = folder / f"corpus-{docs}-{seed}.jsonl"
    if not path.exists():
        synthetic_corpus(path, docs, seed, mean_words=MEAN_WORDS, first_id=first_id)
    return path


def golden_set(folder: Path, corpus: Path, docs: int, queries: int = GOLDEN_QUERIES) -> dict:
    """A golden set for the synthetic corpus: `queries` documents spread over it, each asked for by its first
    words, and judged relevant to that query. The build evaluates on it, so the sizes show the evaluation stage's
    cost (and where it runs) as the corpus grows."""
    step = max(1, docs // queries)
    asked = []
    with corpus.open() as fh:
        for i, line in enumerate(fh):
            if i % step == 0 and len(asked) < queries:
                doc = json.loads(line)
                asked.append((f"q{len(asked)}", doc["_id"], " ".join(doc["text"].split()[:QUERY_WORDS])))
    queries_path, qrels_path = folder / f"golden-{docs}.jsonl", folder / f"golden-{docs}.tsv"
    queries_path.write_text("".join(json.dumps({"_id": q, "text": text}) + "\n" for q, _, text in asked))
    qrels_path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d, _ in asked))
    return {"queries": str(queries_path), "qrels": str(qrels_path)}


def written(root: Path) -> dict:
    out = {}
    for top in ("runs", "cache", "snapshots"):
        files = [p for p in (root / top).rglob("*") if p.is_file()]
        out[top] = {"files": len(files), "mib": round(sum(p.stat().st_size for p in files) / 2**20, 1)}
    return out


def part_rates(root: Path, run_id: str) -> dict:
    """Chunks embedded per second of each part (from the shard markers), early half of each shard's parts against
    the late half."""
    early, late = [], []
    for marker in (root / "runs" / run_id / "shards").glob("*/_SUCCESS"):
        parts = [rows / max(seconds, 1e-9) for rows, seconds in json.loads(marker.read_text()).get("parts", [])
                 if rows]
        half = len(parts) // 2
        early += parts[:max(half, 1)] if parts else []
        late += parts[half:] if len(parts) > 1 else []
    med = {k: round(statistics.median(v), 1) if v else None for k, v in (("early", early), ("late", late))}
    return med | {"parts": len(early) + len(late), "late_over_early": round(med["late"] / med["early"], 3)
                  if med["early"] and med["late"] else None}


def run_flow(cfg: Path, env: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(cfg), "--json", "--no-example"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=4 * 3600)
    wall = round(time.perf_counter() - start, 1)
    if out.returncode:
        raise RuntimeError(f"{cfg}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout), wall


def prepare_only(cpus: int, cfg_path: Path, report: Path) -> None:
    """Child process: start a local Ray with `cpus` CPUs (a smoke run joins RAY_ADDRESS's), then time the
    read-and-prepare steps alone."""
    from operators.cluster import ensure_ray, shutdown_ray
    from operators.executor import RayExecutor
    from pipeline.config_loader import load_config
    from pipeline.jobs.prepare import ShardInput, prepare
    from pipeline.models.encoder import load_encoder
    from pipeline.storage.backend import Storage

    cfg = load_config(cfg_path)
    card = load_encoder(cfg.model).card
    ensure_ray(num_cpus=cpus)
    start = time.perf_counter()
    prepared = prepare(cfg, Storage.of(cfg.storage), f"prepare-{cpus}", ShardInput(None), card, RayExecutor())
    seconds = time.perf_counter() - start
    shutdown_ray()
    report.write_text(json.dumps({"cpus": cpus, "seconds": round(seconds, 2), "docs": prepared.counts["accepted"],
                                  "pieces": prepared.counts["pieces"],
                                  "docs_per_s": round(prepared.counts["accepted"] / seconds, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--cache-runs", type=int, default=3)
    parser.add_argument("--prepare-docs", type=int, default=200_000)
    parser.add_argument("--prepare-pieces", type=int, default=32, help="pieces the prepare corpus is cut into")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="parts to run")
    parser.add_argument("--prepare-only", type=int, help=argparse.SUPPRESS)  # internal: CPUs of the child
    parser.add_argument("--prepare-config", type=Path, help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)
    if args.prepare_only:
        prepare_only(args.prepare_only, args.prepare_config, args.out / f"scale.prepare-{args.prepare_only}.json")
        return 0
    work = args.out / "scale"
    work.mkdir(parents=True, exist_ok=True)
    sizes, runs, prep = [], [], []
    with prefect_server(work / "prefect-home") as api:
        env = {**os.environ, "PREFECT_API_URL": api}
        if not args.smoke:  # the targets are for a local Ray sized to this machine; a smoke run may join a cluster
            env.pop("RAY_ADDRESS", None)
        for docs in args.docs if "sizes" in args.sections else []:
            corpus = corpus_file(work, docs, seed=0)
            root = work / f"root-{docs}"
            subprocess.run(["rm", "-rf", str(root)], check=True)
            piece = max(1 << 16, corpus.stat().st_size // 16)  # about 16 pieces whatever the size
            golden = golden_set(work, corpus, docs)
            summary, wall = run_flow(config(work / f"scale-{docs}.yaml", corpus, root, args.shards, piece, golden),
                                     env)
            c = summary["counts"]
            sizes.append({"docs": docs, "chunks": c["chunks"], "pieces": c["pieces"], "wall_s": wall,
                          "stages_s": summary["timings_s"], "driver_peak_rss_mb": c["driver_peak_rss_mb"],
                          "worker_peak_rss_mb": {"prepare": c["prepare_peak_rss_mb"],
                                                 "embed": c["worker_peak_rss_mb"]},
                          "written": written(root), "embed_rate_per_part": part_rates(root, summary["run_id"]),
                          "ndcg@10": summary["evaluation"]["modes"]["ivfpq"]["ndcg@10"]})
            print(json.dumps(sizes[-1]), flush=True)
        cache_root = work / "root-cache"
        if "cache" in args.sections:
            subprocess.run(["rm", "-rf", str(cache_root)], check=True)
        for k in range(args.cache_runs if "cache" in args.sections else 0):
            n = args.docs[0]
            corpus = corpus_file(work, n, seed=100 + k, first_id=(k + 1) * 10 * n)  # new documents every run
            cfg = config(work / f"cache-{k}.yaml", corpus, cache_root, args.shards, 1 << 16)
            summary, wall = run_flow(cfg, env)
            runs.append({"run": k + 1, "embedded": summary["counts"]["embedded"],
                         "embed_s": summary["timings_s"]["embed"],
                         "embed_rate_per_part": part_rates(cache_root, summary["run_id"]),
                         "cache_files": sum(1 for p in (cache_root / "cache").rglob("*.parquet"))})
            print(json.dumps(runs[-1]), flush=True)
    if "prepare" in args.sections:
        prepare_corpus = corpus_file(work, args.prepare_docs, seed=7)
        # several pieces per worker CPU, as a deployment would cut them, so the last round is not one piece alone
        piece = max(1 << 16, -(-prepare_corpus.stat().st_size // args.prepare_pieces))
        for cpus in (1, 2):
            root = work / f"root-prepare-{cpus}"
            subprocess.run(["rm", "-rf", str(root)], check=True)
            cfg = config(work / f"prepare-{cpus}.yaml", prepare_corpus, root, args.shards, piece)
            subprocess.run([sys.executable, __file__, "--prepare-only", str(cpus), "--prepare-config", str(cfg),
                            "--out", str(args.out)], env=env, check=True, timeout=3 * 3600)
            prep.append(json.loads((args.out / f"scale.prepare-{cpus}.json").read_text()))
    report = {"sizes": sizes, "cache_runs": runs, "prepare": prep, "ratios": {}, "targets": {}}
    r, t = report["ratios"], report["targets"]
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        r |= {"docs": round(big["docs"] / small["docs"], 2), "wall": round(big["wall_s"] / small["wall_s"], 3),
              "driver_peak_rss": round(big["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3)}
        t |= {"driver_rss_ratio_le_1.25": r["driver_peak_rss"] <= 1.25,
              "driver_rss_under_1gb": big["driver_peak_rss_mb"] < 1024,
              "wall_ratio_le_1.1x_docs": r["wall"] <= 1.1 * r["docs"]}
    rates = [c["embed_rate_per_part"]["early"] for c in runs if c["embed_rate_per_part"]["early"]]
    if len(rates) > 1:
        r["embed_rate_last_run_over_first"] = round(rates[-1] / rates[0], 3)
    if prep:
        r["prepare_2_over_1_cpu"] = round(prep[1]["docs_per_s"] / prep[0]["docs_per_s"], 3)
        t["prepare_2cpu_ge_1.7x"] = r["prepare_2_over_1_cpu"] >= 1.7
    write_report(args, "scale", report, markdown(report))
    return 0


def markdown(r: dict) -> str:
    stages = list(r["sizes"][0]["stages_s"]) if r["sizes"] else []
    lines = ["# Scale: the reindex flow at growing corpus sizes (wordllama, every stage on Ray)", "",
             "| docs | chunks | pieces | wall s | " + " | ".join(f"{s} s" for s in stages) +
             " | driver peak RSS MB | worker peak RSS MB (prepare / embed) | written (runs, cache, snapshots) MiB |"
             " ivfpq nDCG@10 |", "|---" * (8 + len(stages)) + "|"]
    for s in r["sizes"]:
        w = s["written"]
        lines.append(f"| {s['docs']:,} | {s['chunks']:,} | {s['pieces']} | {s['wall_s']} | " +
                     " | ".join(str(s["stages_s"].get(k, "")) for k in stages) +
                     f" | {s['driver_peak_rss_mb']} | {s['worker_peak_rss_mb']['prepare']} / "
                     f"{s['worker_peak_rss_mb']['embed']} | {w['runs']['mib']} ({w['runs']['files']} files), "
                     f"{w['cache']['mib']} ({w['cache']['files']}), "
                     f"{w['snapshots']['mib']} ({w['snapshots']['files']}) | {s.get('ndcg@10', '')} |")
    lines += ["", "Embedding rate per part (chunks/s, median), early parts of each shard vs late ones:", "",
              "| docs | early | late | late / early |", "|---|---|---|---|"]
    lines += [f"| {s['docs']:,} | {s['embed_rate_per_part']['early']} | {s['embed_rate_per_part']['late']} | "
              f"{s['embed_rate_per_part']['late_over_early']} |" for s in r["sizes"]]
    lines += ["", "A growing cache (each run adds new documents to one root):", "",
              "| run | embedded | embed s | rate per part (early median) | cache files |", "|---|---|---|---|---|"]
    lines += [f"| {c['run']} | {c['embedded']:,} | {c['embed_s']} | {c['embed_rate_per_part']['early']} | "
              f"{c['cache_files']} |" for c in r["cache_runs"]]
    lines += ["", "| prepare (read pieces + prepare shards) | docs/s |", "|---|---|"]
    lines += [f"| {p['cpus']} worker CPU(s), {p['docs']:,} docs in {p['pieces']} pieces | {p['docs_per_s']} |"
              for p in r["prepare"]]
    ratios, targets = r["ratios"], r["targets"]
    lines += ["", "Ratios: " + ", ".join(f"{k} {v}" for k, v in ratios.items()) + ".", "",
              "Targets: " + ", ".join(f"{k}: {v}" for k, v in targets.items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
