"""Retention of the kernel plan's precision: nDCG@10 of exact search on full SciFact with the precision the plan
chose on this machine against fp32, the largest cosine deviation of any vector, and the speed of each.

Whole documents (title + text, truncated at the model's 256 tokens), as the published all-MiniLM-L6-v2 score
(nDCG@10 = 0.645) was measured; corpus and queries encoded in the same precision, as embedpipe's searches do.
Target: retention >= 99.9% of fp32's nDCG@10, set beside how far the judged queries' sampling alone could move it (a
paired bootstrap) and what chance alone does to it (fp32's vectors moved in random directions as far as the plan's
precision moved them), and the retention with one side (queries or corpus) in the plan's precision and the other in
fp32. And without judgments, on every query of the set (SciFact: 1,109, train and
test): how many of fp32's top 10 documents the plan's search keeps, which tells precision from near ties on more
queries than nDCG's 300. Writes benchmarks/out/precision.{json,md}.
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

NOISE_SEEDS = 20  # random moves of the fp32 vectors that the plan's retention is set beside
BOOTSTRAP = 10_000  # resamples of the judged queries for the retention's interval


def main() -> int:
    args = parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    from pipeline.config import ModelConfig
    from pipeline.corpus.readers import read_qrels, read_queries
    from pipeline.models.encoder import load_encoder
    from pipeline.quality.metrics import evaluate_run, per_query

    folder = sample_subset(args.out / "sample", 100, 20) if args.smoke else SCIFACT
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    texts, ids = [f"{d.get('title', '')} {d['text']}".strip() for d in docs], [d["_id"] for d in docs]
    qrels = read_qrels(str(folder / "qrels" / "test.tsv"))
    every_query = read_queries(str(folder / "queries.jsonl"))
    queries = {q: t for q, t in every_query.items() if q in qrels}
    judged = np.array([qid in qrels for qid in every_query])

    def run_of(q: np.ndarray, corpus: np.ndarray) -> dict[str, dict[str, float]]:
        scores = q @ corpus.T
        top = np.argsort(-scores, axis=1)[:, :100]
        return {qid: {ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(queries)}

    def ndcg(q: np.ndarray, corpus: np.ndarray) -> float:
        return evaluate_run(qrels, run_of(q, corpus))["ndcg@10"]

    def ndcg_each(q: np.ndarray, corpus: np.ndarray) -> np.ndarray:
        scored = per_query(qrels, run_of(q, corpus), "ndcg@10")
        return np.array([scored.get(qid, 0.0) for qid in queries])

    def top10(q: np.ndarray, corpus: np.ndarray) -> np.ndarray:
        return np.argpartition(-(q @ corpus.T), 10, axis=1)[:, :10]

    runs = {}
    for name, cfg in (("fp32", ModelConfig(precision="fp32")), ("plan", ModelConfig())):
        encoder = load_encoder(cfg)
        start = time.perf_counter()
        corpus = encoder.encode(texts)
        seconds = time.perf_counter() - start
        q = encoder.encode(list(every_query.values()), kind="query")
        runs[name] = {"plan": encoder.kernel_plan, "corpus": corpus, "queries": q[judged], "every_query": q,
                      "seconds": seconds, "ndcg@10": ndcg(q[judged], corpus)}
    fp32, plan = runs["fp32"], runs["plan"]
    cos_docs = np.sum(fp32["corpus"] * plan["corpus"], axis=1)
    cos_every = np.sum(fp32["every_query"] * plan["every_query"], axis=1)
    cos_queries = cos_every[judged]
    retention = plan["ndcg@10"] / fp32["ndcg@10"]
    # How far the query sample alone could move that figure: the same queries resampled in pairs (plan, fp32)
    each = {name: ndcg_each(run["queries"], run["corpus"]) for name, run in runs.items()}
    picks = np.random.default_rng(0).integers(0, len(queries), (BOOTSTRAP, len(queries)))
    resampled = each["plan"][picks].mean(axis=1) / each["fp32"][picks].mean(axis=1)
    changed = each["plan"] - each["fp32"]
    # One side at a time, the other kept in fp32: which side's rounding moves the score
    one_side = {"plan_queries_fp32_corpus": ndcg(plan["queries"], fp32["corpus"]) / fp32["ndcg@10"],
                "fp32_queries_plan_corpus": ndcg(fp32["queries"], plan["corpus"]) / fp32["ndcg@10"]}
    # What chance alone does to the score: the fp32 vectors moved in random directions by as much as the plan's
    # moved them (the same mean cosine), NOISE_SEEDS times. A lower bound, not the expected effect: bf16's deviation
    # lies along the directions the documents vary in, and moves a ranking more than a random one of its size
    rng, dims = np.random.default_rng(0), fp32["corpus"].shape[1]
    seeds = range(3 if args.smoke else NOISE_SEEDS)

    def moved(x: np.ndarray, cosines: np.ndarray) -> np.ndarray:
        y = x + rng.normal(0, np.sqrt(2 * float(np.mean(1 - cosines)) / dims), x.shape).astype(np.float32)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    chance = np.array([ndcg(moved(fp32["queries"], cos_queries), moved(fp32["corpus"], cos_docs)) / fp32["ndcg@10"]
                       for _ in seeds])

    # Label-free, on every query: the share of fp32's top 10 documents a search keeps in its own top 10
    reference = top10(fp32["every_query"], fp32["corpus"])

    def kept(q: np.ndarray, corpus: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) for a, b in zip(top10(q, corpus), reference, strict=True)])) / 10

    top10_kept = {"plan": kept(plan["every_query"], plan["corpus"]),
                  "plan_queries_fp32_corpus": kept(plan["every_query"], fp32["corpus"]),
                  "fp32_queries_plan_corpus": kept(fp32["every_query"], plan["corpus"])}
    kept_by_chance = np.array([kept(moved(fp32["every_query"], cos_every), moved(fp32["corpus"], cos_docs))
                               for _ in seeds])
    report = {"docs": len(texts), "queries": len(queries), "kernel_plan": plan["plan"].to_dict(),
              "fp32_kernel": fp32["plan"].to_dict(),
              "ndcg@10": {"fp32": fp32["ndcg@10"], "plan": plan["ndcg@10"]},
              "retention": round(retention, 5),
              "retention_interval_95": [round(float(np.percentile(resampled, p)), 5) for p in (2.5, 97.5)],
              "queries_changed": {"up": int((changed > 1e-9).sum()), "down": int((changed < -1e-9).sum())},
              "retention_one_side": {k: round(v, 6) for k, v in one_side.items()},
              "min_cosine_docs": float(cos_docs.min()),
              "min_cosine_queries": float(cos_queries.min()),
              "retention_by_chance": {"seeds": len(chance), "mean": round(float(chance.mean()), 5),
                                      "std": round(float(chance.std()), 5), "min": round(float(chance.min()), 5),
                                      "max": round(float(chance.max()), 5),
                                      "below_target": int((chance < 0.999).sum())},
              "top10_kept": {"queries": len(every_query), **{k: round(v, 5) for k, v in top10_kept.items()},
                             "by_chance_mean": round(float(kept_by_chance.mean()), 5),
                             "by_chance_std": round(float(kept_by_chance.std()), 5)},
              "texts_per_s": {"fp32": round(len(texts) / fp32["seconds"], 1),
                              "plan": round(len(texts) / plan["seconds"], 1)}}
    speedup = report["texts_per_s"]["plan"] / report["texts_per_s"]["fp32"]
    md = "\n".join([
        f"# Precision retention: {len(texts):,} SciFact documents, {len(queries)} queries, all-MiniLM-L6-v2", "",
        f"Kernel plan on this machine: **{plan['plan'].summary()}**; fp32 reference: {fp32['plan'].label}.", "",
        "| | fp32 | plan |", "|---|---|---|",
        f"| kernel | {fp32['plan'].kernel.name} | {plan['plan'].kernel.name} |",
        f"| nDCG@10 (exact) | {fp32['ndcg@10']:.5f} | {plan['ndcg@10']:.5f} |",
        f"| corpus texts/s | {report['texts_per_s']['fp32']} | {report['texts_per_s']['plan']} |", "",
        f"Retention **{retention:.2%}** (target >= 99.9%); speed {speedup:.2f}x fp32; smallest cosine to the fp32 "
        f"vector: documents {cos_docs.min():.6f}, queries {cos_queries.min():.6f}.", "",
        f"The queries' sampling alone: 95% of {BOOTSTRAP:,} paired resamples of the {len(queries)} judged queries give "
        f"{np.percentile(resampled, 2.5):.2%} to {np.percentile(resampled, 97.5):.2%}; "
        f"{report['queries_changed']['up']} queries scored higher than in fp32, "
        f"{report['queries_changed']['down']} lower, the rest the same.", "",
        f"One side at a time: the plan's queries against fp32's corpus keep "
        f"{one_side['plan_queries_fp32_corpus']:.3%}, fp32's queries against the plan's corpus "
        f"{one_side['fp32_queries_plan_corpus']:.3%}.", "",
        f"By chance: fp32's vectors moved at random as far as the plan's moved them (same mean cosine), {len(chance)} "
        f"times, keep {chance.mean():.2%} on average (std {chance.std():.2%}, {chance.min():.2%} to "
        f"{chance.max():.2%}; {(chance < 0.999).sum()} of {len(chance)} below 99.9%): a lower bound on what a "
        f"deviation of this size does.", "",
        f"Without judgments, on all {len(every_query)} queries: the plan's search keeps {top10_kept['plan']:.2%} of "
        f"fp32's top 10 documents (its queries alone {top10_kept['plan_queries_fp32_corpus']:.2%}, its corpus alone "
        f"{top10_kept['fp32_queries_plan_corpus']:.2%}); moves of the same size at random keep "
        f"{kept_by_chance.mean():.2%} (std {kept_by_chance.std():.2%}).", ""])
    write_report(args, "precision", report, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
