"""Retrieval quality on BEIR-style judgments, computed by trec_eval (pytrec_eval bindings), as BEIR and MTEB do.

MRR@10 is trec_eval's reciprocal rank on each run cut to its top 10, which is what MRR@10 means.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import get_args

import pytrec_eval

from pipeline.config import MetricName

Run = Mapping[str, Mapping[str, float]]  # query id -> doc id -> score
Qrels = Mapping[str, Mapping[str, int]]

METRICS: tuple[str, ...] = get_args(MetricName)  # ndcg@10, map@10, recall@10, recall@100, mrr@10
_TREC = {"ndcg@10": "ndcg_cut_10", "map@10": "map_cut_10", "recall@10": "recall_10", "recall@100": "recall_100"}


def top_k(run: Run, k: int) -> dict[str, dict[str, float]]:
    """Each query's top k, in trec_eval's order: by score, ties by doc id descending."""
    return {q: dict(sorted(docs.items(), key=itemgetter(1, 0), reverse=True)[:k]) for q, docs in run.items()}


def by_rank(run: Run) -> dict[str, dict[str, float]]:
    """Each query's documents scored by their place in its ranking as served (its order: first -1, second -2...).
    trec_eval sorts by score, ties by doc id descending, in float32: tied documents (reciprocal-rank fusion, Hamming
    distances) and scores equal in float32 would otherwise be judged in another order than the one served."""
    return {q: {d: -float(rank) for rank, d in enumerate(docs, start=1)} for q, docs in run.items()}


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean of each metric over the judged queries (a judged query missing from the run scores 0)."""
    judged = {q: dict(d) for q, d in qrels.items() if any(v > 0 for v in d.values())}
    if not judged:
        return dict.fromkeys(METRICS, 0.0)
    run_f = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    per_query = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "map_cut.10", "recall.10,100"}).evaluate(run_f)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top_k(run_f, 10))
    out = {}
    for name, trec in _TREC.items():
        out[name] = sum(per_query.get(q, {}).get(trec, 0.0) for q in judged) / len(judged)
    out["mrr@10"] = sum(rr.get(q, {}).get("recip_rank", 0.0) for q in judged) / len(judged)
    return out


_MEASURES = {"ndcg@10": "ndcg_cut.10", "map@10": "map_cut.10", "recall@10": "recall.10", "recall@100": "recall.100"}


def per_query(qrels: Qrels, run: Run, metric: str) -> dict[str, float]:
    """One metric per judged query (a query missing from the run scores 0), as `evaluate_run` averages it."""
    judged = {q: dict(d) for q, d in qrels.items() if any(v > 0 for v in d.values())}
    if not judged:
        return {}
    run_f = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    if metric == "mrr@10":
        scored, key = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top_k(run_f, 10)), "recip_rank"
    else:
        scored, key = pytrec_eval.RelevanceEvaluator(judged, {_MEASURES[metric]}).evaluate(run_f), _TREC[metric]
    return {q: scored.get(q, {}).get(key, 0.0) for q in judged}


def overlap_at_k(candidate: Run, reference: Run, k: int = 10) -> float:
    """Recall@k of a run against a reference run (e.g. IVF-PQ against exact search): shared top-k / k."""
    cand, ref = top_k(candidate, k), top_k(reference, k)
    scores = [len(set(cand.get(q, {})) & set(r)) / len(r) for q, r in ref.items() if r]
    return sum(scores) / len(scores) if scores else 0.0
