"""Peak memory of an embedding worker (and of the driver) for a synthetic corpus of N and 10 x N documents.

The pipeline streams: the driver reads, chunks and writes the corpus `run.read_batch` records at a time
(one input part per shard and batch), and each Ray actor embeds its shards part by part. So with the
batch fixed, 10x the documents means 10x the parts, not bigger parts, and a worker's peak resident memory
should stay flat (target: within 20%). Each size runs in its own process (a fresh driver) with fresh
actors and a fresh storage root; the worker figure is the largest peak RSS (VmHWM) any actor reported
(pipeline/jobs/shards.py), next to that of a probe actor that only imported what an EmbedActor imports and
loaded the model (the floor under it). The model is the wordllama static model, so the run takes
minutes, not hours; the code path is the one MiniLM takes. Writes benchmarks/out/worker_memory.{json,md}.
--smoke: 40 and 120 documents (factor 3) in read batches of 20, words from the demo sample; exit 0 whatever
the ratio.

Usage: .venv/bin/python benchmarks/worker_memory.py [--docs 2000 --factor 10 --read-batch 1000] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import SAMPLE, SCIFACT, parse_args, synthetic_corpus, write_report  # noqa: E402

SMOKE = {"docs": 40, "factor": 3, "read_batch": 20}


def loaded_model_mb(root: str, model: dict, cpus: float) -> float:
    """Peak RSS of a fresh actor that has done what an EmbedActor does before its first part (connect the
    storage, load the model): the floor under every worker's figure."""
    import ray

    @ray.remote
    class Probe:
        def __init__(self) -> None:
            import operators.embedding  # noqa: F401  (the modules an EmbedActor's worker imports: polars, pyarrow)
            from pipeline.config import ModelConfig
            from pipeline.models.encoder import load_encoder
            from pipeline.storage.backend import Storage

            self.storage, self.encoder = Storage(root), load_encoder(ModelConfig(**model))

        def peak_rss_mb(self) -> float:
            from pipeline.jobs.worker import peak_rss_mb

            return peak_rss_mb()

    probe = Probe.options(num_cpus=cpus).remote()
    try:
        return ray.get(probe.peak_rss_mb.remote())
    finally:
        ray.kill(probe)


def one(docs: int, read_batch: int, work: Path, words_from: Path) -> dict:
    """Prepare and embed `docs` documents in this process; returns the counts and peak memory."""
    from operators.cluster import ensure_ray, shutdown_ray
    from operators.embedding import RayEmbedder
    from pipeline.config import PipelineConfig
    from pipeline.jobs.executor import LocalExecutor
    from pipeline.jobs.prepare import ShardInput, prepare
    from pipeline.jobs.worker import peak_rss_mb
    from pipeline.models.encoder import load_encoder
    from pipeline.storage.backend import Storage

    corpus = work / f"corpus-{docs}.jsonl"
    synthetic_corpus(corpus, docs, seed=0, words_from=words_from, mean_words=200)
    root = work / f"store-{docs}"
    cfg = PipelineConfig.model_validate({
        "index_name": "memory", "corpus": {"source": str(corpus)},
        "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
        "chunking": {"max_tokens": 256, "overlap": 32},
        "run": {"shards": 4, "actors": 2, "cpus_per_actor": 1.0, "read_batch": read_batch},
        "storage": {"root": str(root)}})
    ensure_ray()
    storage = Storage.of(cfg.storage)
    baseline = loaded_model_mb(storage.url, cfg.model.model_dump(), cfg.run.cpus_per_actor)
    start = time.perf_counter()
    prepared = prepare(cfg, storage, "memory", ShardInput(None), load_encoder(cfg.model).card, LocalExecutor())
    results = RayEmbedder(storage, cfg.model, cfg.run).embed("memory", prepared.shards, lambda result: None)
    shutdown_ray()
    parts = max(len(list((root / "runs/memory/shards" / f"{s:05d}" / "vectors").iterdir())) for s in prepared.shards)
    return {"docs": docs, "chunks": prepared.counts["chunks"], "parts_per_shard": parts,
            "worker_peak_rss_mb": max(r.peak_rss_mb for r in results), "worker_model_loaded_mb": baseline,
            "driver_peak_rss_mb": peak_rss_mb(),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--read-batch", type=int, default=1000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size here
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)
    work = args.out / "worker_memory"
    if args.one:
        print(json.dumps(one(args.one, args.read_batch, work, SAMPLE if args.smoke else SCIFACT)))
        return 0
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []
    for docs in (args.docs, args.docs * args.factor):
        cmd = [sys.executable, __file__, "--one", str(docs), "--read-batch", str(args.read_batch),
               "--out", str(args.out), *["--smoke"] * args.smoke]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
        if proc.returncode:
            raise RuntimeError(f"{docs} docs: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    small, large = rows
    ratio = large["worker_peak_rss_mb"] / small["worker_peak_rss_mb"]
    driver_ratio = large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
    report = {"runs": rows, "worker_ratio": round(ratio, 3), "driver_ratio": round(driver_ratio, 3),
              "target": 1.2, "met": ratio <= 1.2}
    md = "\n".join([
        f"# Worker peak memory, N = {small['docs']} vs {large['docs']} documents (read_batch {args.read_batch})", "",
        "| docs | chunks | parts per shard | worker peak RSS MB | actor after model load MB | driver peak RSS MB "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['docs']} | {r['chunks']} | {r['parts_per_shard']} | {r['worker_peak_rss_mb']} | "
          f"{r['worker_model_loaded_mb']} | {r['driver_peak_rss_mb']} | {r['seconds']} |" for r in rows], "",
        f"**worker {args.factor}N / N = {ratio:.3f}** (target <= 1.2); driver {args.factor}N / N = {driver_ratio:.3f}.",
    ])
    write_report(args, "worker_memory", report, md)
    return 0 if report["met"] or args.smoke else 1


if __name__ == "__main__":
    raise SystemExit(main())
