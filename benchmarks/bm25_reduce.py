"""Peak memory of the bm25 reduce (pipeline/index/bm25.py `write_bm25`) at N and 10 x N chunks, against assembling
the whole matrix in memory (every shard's postings concatenated, then sorted column by column: how the reduce
worked until 2026-12-05).

The reduce places each shard's scored postings straight into memory-mapped files, at places the merged document
frequencies give, so it holds the vocabulary and one shard: with shards of a fixed size, 10x the chunks means 10x
the shards, not a bigger peak. Synthetic chunks: --terms distinct terms each, drawn from a Zipf-like vocabulary of
--vocab terms (fixed here, so what grows is the postings alone), --shard-chunks chunks a shard. Each (size, way)
runs in a fresh process; the figures are its peak anonymous memory (RssAnon, sampled after the statistics and after
each shard: the process's own memory) and its peak RSS (ru_maxrss, which also counts the pages of files mapped
into it), beside the bytes of the files written. Target: the streaming reduce's peak anonymous memory at 10 x N
<= 1.25 x at N. Writes benchmarks/out/bm25_reduce.{json,md}.
--smoke: 2,000 and 6,000 chunks, 500 a shard; exit 0 whatever the ratio.

Usage: .venv/bin/python benchmarks/bm25_reduce.py [--chunks 100000 --factor 10] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import parse_args, write_report  # noqa: E402

SMOKE = {"chunks": 2000, "factor": 3, "shard_chunks": 500}


def shard_frame(shard: int, first_row: int, chunks: int, terms: int, vocab: int):
    """One shard's chunks as the reduce reads them (row, terms, tf), the same for a seed whichever pass asks."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(shard)
    ids = np.minimum(rng.zipf(1.3, size=(chunks, terms * 2)) - 1, vocab - 1)  # Zipf-like: a few terms everywhere
    cells = pl.DataFrame({"row": np.repeat(np.arange(first_row, first_row + chunks), terms * 2),
                          "term": ids.ravel(), "tf": rng.integers(1, 4, ids.size).astype(np.uint32)})
    cells = cells.unique(["row", "term"], keep="first", maintain_order=True)  # distinct terms per chunk, as analysed
    return (cells.with_columns(pl.format("t{}", "term").alias("terms"))
            .group_by("row", maintain_order=True).agg("terms", "tf")
            .with_columns(pl.col("row").cast(pl.Int64)))


def rss_anon_mib() -> float:
    """The process's anonymous resident memory (Linux), MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024


def run_one(chunks: int, shard_chunks: int, terms: int, vocab: int, way: str, folder: Path) -> dict:
    """In this process: merge the shards' statistics, then write the matrix `way` ("streaming" or "in memory")."""
    import numpy as np

    from pipeline.index.bm25 import Bm25Params, CorpusStatistics, ShardStatistics, score_postings, write_bm25

    starts = list(range(0, chunks, shard_chunks))
    shards = [(s, first, min(shard_chunks, chunks - first)) for s, first in enumerate(starts)]
    t0 = time.perf_counter()
    stats = CorpusStatistics.merge(ShardStatistics.of(f["terms"], f["tf"])
                                   for f in (shard_frame(s, first, n, terms, vocab) for s, first, n in shards))
    anon = [rss_anon_mib()]
    params = Bm25Params()

    def scored():  # sampled as the writer asks for the next shard: the last one's arrays are still alive then
        for s, first, n in shards:
            anon.append(rss_anon_mib())
            yield score_postings(shard_frame(s, first, n, terms, vocab), stats, params)
        anon.append(rss_anon_mib())

    t1 = time.perf_counter()
    if way == "streaming":
        cells = write_bm25(folder, scored(), stats, params)
    else:  # every shard's postings at once, sorted column by column, as the reduce did before
        parts = list(scored())
        rows, cols = np.concatenate([p.rows for p in parts]), np.concatenate([p.cols for p in parts])
        scores = np.concatenate([p.scores for p in parts])
        del parts
        order = np.lexsort((rows, cols))
        data, indices = scores[order], rows[order].astype(np.int32)
        anon.append(rss_anon_mib())
        indptr = np.zeros(stats.vocab.height + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=stats.vocab.height), out=indptr[1:])
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("data", data), ("indices", indices), ("indptr", indptr)):
            np.save(folder / f"{name}.npy", array)
        cells = len(data)
    return {"way": way, "chunks": chunks, "shards": len(shards), "cells": cells, "terms": stats.vocab.height,
            "stats_seconds": round(t1 - t0, 2), "write_seconds": round(time.perf_counter() - t1, 2),
            "anon_mib_after_statistics": round(anon[0], 1), "peak_anon_mib": round(max(anon), 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "bytes_written": sum(p.stat().st_size for p in folder.rglob("*.npy"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--shard-chunks", type=int, default=10_000)
    parser.add_argument("--terms", type=int, default=40, help="terms drawn per chunk (distinct: somewhat fewer)")
    parser.add_argument("--vocab", type=int, default=200_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one (size, way) in this process
    if "--child" in sys.argv:
        args = parser.parse_args()
        spec = json.loads(args.child)
        print(json.dumps(run_one(**{**spec, "folder": Path(spec["folder"])})))
        return 0
    args = parse_args(parser)
    if args.smoke:
        args.chunks, args.factor, args.shard_chunks = SMOKE["chunks"], SMOKE["factor"], SMOKE["shard_chunks"]
    runs = []
    for chunks in (args.chunks, args.chunks * args.factor):
        for way in ("streaming", "in memory"):
            with tempfile.TemporaryDirectory(prefix="bm25-reduce-") as tmp:
                spec = {"chunks": chunks, "shard_chunks": args.shard_chunks, "terms": args.terms, "vocab": args.vocab,
                        "way": way, "folder": tmp}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                      text=True, cwd=REPO)
                if proc.returncode:
                    raise SystemExit(f"{way} at {chunks} chunks failed:\n{proc.stderr[-3000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(runs[-1], flush=True)
    peak = {(r["way"], r["chunks"]): r["peak_anon_mib"] for r in runs}
    small, large = args.chunks, args.chunks * args.factor
    ratio = round(peak["streaming", large] / peak["streaming", small], 3)
    report = {"runs": runs, "streaming_peak_ratio": ratio, "met": ratio <= 1.25,
              "in_memory_over_streaming_at_largest": round(peak["in memory", large] / peak["streaming", large], 2)}
    md = "\n".join([
        f"# bm25 reduce: peak memory at {small:,} and {large:,} chunks ({args.shard_chunks:,} a shard, ~{args.terms} "
        f"terms each from {args.vocab:,})", "",
        "| way | chunks | shards | cells | peak anonymous MiB | after statistics MiB | peak RSS MiB | write s | "
        ".npy MiB |", "|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['way']} | {r['chunks']:,} | {r['shards']} | {r['cells']:,} | {r['peak_anon_mib']:,.0f} | "
          f"{r['anon_mib_after_statistics']:,.0f} | {r['peak_rss_mib']:,.0f} | {r['write_seconds']} | "
          f"{r['bytes_written'] / 2**20:,.0f} |" for r in runs], "",
        f"Streaming: peak anonymous memory at {large:,} / at {small:,} = **{ratio}** (target <= 1.25: "
        f"{'met' if report['met'] else 'not met'}); in memory / streaming at {large:,}: "
        f"**{report['in_memory_over_streaming_at_largest']}x**.", ""])
    write_report(args, "bm25_reduce", report, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
