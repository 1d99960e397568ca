"""Retention of the kernel plan's precision: nDCG@10 of exact search on full SciFact with the precision the plan
chose on this machine against fp32, the largest cosine deviation of any vector, and the speed of each.

Whole documents (title + text, truncated at the model's 256 tokens), as the published all-MiniLM-L6-v2 score
(nDCG@10 = 0.645) was measured; corpus and queries encoded in the same precision, as embedpipe's searches do.
Target: retention >= 99.9% of fp32's nDCG@10. Writes benchmarks/out/precision.{json,md}.
--smoke: 100 documents of the demo sample and their queries.

Usage: .venv/bin/python benchmarks/precision.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SCIFACT, parse_args, sample_subset, write_report  # noqa: E402


def main() -> int:
    args = parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    from pipeline.config import ModelConfig
    from pipeline.corpus.readers import read_qrels, read_queries
    from pipeline.models.encoder import load_encoder
    from pipeline.quality.metrics import evaluate_run

    folder = sample_subset(args.out / "sample", 100, 20) if args.smoke else SCIFACT
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    texts, ids = [f"{d.get('title', '')} {d['text']}".strip() for d in docs], [d["_id"] for d in docs]
    qrels = read_qrels(str(folder / "qrels" / "test.tsv"))
    queries = {q: t for q, t in read_queries(str(folder / "queries.jsonl")).items() if q in qrels}

    runs = {}
    for name, cfg in (("fp32", ModelConfig(precision="fp32")), ("plan", ModelConfig())):
        encoder = load_encoder(cfg)
        start = time.perf_counter()
        corpus = encoder.encode(texts)
        seconds = time.perf_counter() - start
        q = encoder.encode(list(queries.values()), kind="query")
        scores = q @ corpus.T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = {qid: {ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(queries)}
        runs[name] = {"plan": encoder.kernel_plan, "corpus": corpus, "queries": q, "seconds": seconds,
                      "metrics": evaluate_run(qrels, run)}
    fp32, plan = runs["fp32"], runs["plan"]
    cos_docs = np.sum(fp32["corpus"] * plan["corpus"], axis=1)
    cos_queries = np.sum(fp32["queries"] * plan["queries"], axis=1)
    retention = plan["metrics"]["ndcg@10"] / fp32["metrics"]["ndcg@10"]
    report = {"docs": len(texts), "queries": len(queries), "kernel_plan": plan["plan"].to_dict(),
              "fp32_kernel": fp32["plan"].to_dict(),
              "ndcg@10": {"fp32": fp32["metrics"]["ndcg@10"], "plan": plan["metrics"]["ndcg@10"]},
              "retention": round(retention, 5), "min_cosine_docs": float(cos_docs.min()),
              "min_cosine_queries": float(cos_queries.min()),
              "texts_per_s": {"fp32": round(len(texts) / fp32["seconds"], 1),
                              "plan": round(len(texts) / plan["seconds"], 1)}}
    speedup = report["texts_per_s"]["plan"] / report["texts_per_s"]["fp32"]
    md = "\n".join([
        f"# Precision retention: {len(texts):,} SciFact documents, {len(queries)} queries, all-MiniLM-L6-v2", "",
        f"Kernel plan on this machine: **{plan['plan'].summary()}**; fp32 reference: {fp32['plan'].label}.", "",
        "| | fp32 | plan |", "|---|---|---|",
        f"| kernel | {fp32['plan'].kernel.name} | {plan['plan'].kernel.name} |",
        f"| nDCG@10 (exact) | {fp32['metrics']['ndcg@10']:.5f} | {plan['metrics']['ndcg@10']:.5f} |",
        f"| corpus texts/s | {report['texts_per_s']['fp32']} | {report['texts_per_s']['plan']} |", "",
        f"Retention **{retention:.2%}** (target >= 99.9%); speed {speedup:.2f}x fp32; smallest cosine to the fp32 "
        f"vector: documents {cos_docs.min():.6f}, queries {cos_queries.min():.6f}.", ""])
    write_report(args, "precision", report, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
