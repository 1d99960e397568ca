"""The bm25 analysis on Ray: one task per shard (pipeline/jobs/lexical.analyze_shard reads that shard's input parts
from storage and commits its terms and statistics there), so the map step scales out with the shards; the reduce
stays in the driver. Implements the same seam as pipeline/jobs/lexical.LocalAnalyzer."""

from __future__ import annotations

import ray

from operators.cluster import ensure_ray, unwrap
from pipeline.config import Bm25Config
from pipeline.index.analyzer import Analyzer
from pipeline.jobs.lexical import AnalyzedShard, OnAnalyzed, analyze_shard
from pipeline.storage.backend import Storage


@ray.remote(num_cpus=1, max_retries=2)  # analyze_shard is idempotent: a retried shard is safe
def _analyze(root_url: str, options: dict, run_id: str, shard: int, cfg: dict) -> AnalyzedShard:
    return analyze_shard(Storage(root_url, **options), run_id, shard, Analyzer.of(Bm25Config(**cfg)))


class RayAnalyzer:
    where = "ray tasks"

    def __init__(self, storage: Storage, cfg: Bm25Config) -> None:
        self.storage, self.cfg = storage, cfg

    def analyze(self, run_id: str, shards: list[int], on_result: OnAnalyzed) -> list[AnalyzedShard]:
        if not shards:
            return []
        ensure_ray()
        pending = {_analyze.remote(self.storage.url, self.storage.options, run_id, s, self.cfg.model_dump()): s
                   for s in shards}
        results = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                pending.pop(done[0])
                results.append(ray.get(done[0]))
                on_result(results[-1])
        except ray.exceptions.RayError as exc:
            raise unwrap(exc) from exc
        return sorted(results, key=lambda r: r.shard)
