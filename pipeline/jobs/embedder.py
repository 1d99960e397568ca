"""The embedding seam: an Embedder embeds a run's shards and reports each as it commits. Two engines implement it:
`LocalEmbedder` (this process, one loaded model) and operators.embedding.RayEmbedder (Ray actors); the flows pick
one in a single place (flows/engine.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from pipeline.jobs.shards import ShardResult, embed_shard
from pipeline.models.encoder import Encoder
from pipeline.storage.backend import Storage

OnResult = Callable[[ShardResult], None]


class Embedder(Protocol):
    where: str  # "flow process", "ray actors": recorded in the counts

    def embed(self, run_id: str, shards: list[int], on_result: OnResult) -> list[ShardResult]:
        """Embed and commit every shard (committed ones come back as skipped); results in shard order."""
        ...


class LocalEmbedder:
    """Shards embedded one after another in this process: for small deltas, where starting Ray and a model per
    actor costs more than the work."""

    where = "flow process"

    def __init__(self, storage: Storage, encoder: Encoder) -> None:
        self.storage, self.encoder = storage, encoder

    def embed(self, run_id: str, shards: list[int], on_result: OnResult) -> list[ShardResult]:
        results = []
        for shard in shards:
            results.append(embed_shard(self.storage, run_id, shard, self.encoder))
            on_result(results[-1])
        return results


@dataclass(frozen=True)
class EmbedCounts:
    """What the embed stage did, summed over shards (the part of the run's counts it contributes)."""

    embedded_in: str
    shards_embedded: int
    shards_skipped: int
    tokens: int
    vectors: int
    embedded: int
    reused_from_cache: int
    encode_seconds: float
    worker_peak_rss_mb: float
    kernels: dict[str, int]  # KernelPlan.label -> shards it embedded chunks of (lineage: what computed them, where)

    @classmethod
    def of(cls, results: list[ShardResult], where: str) -> EmbedCounts:
        fresh = [r for r in results if not r.skipped]
        return cls(where, len(fresh), len(results) - len(fresh), sum(r.tokens for r in results),
                   sum(r.chunks for r in results), sum(r.embedded for r in fresh), sum(r.cached for r in fresh),
                   round(sum(r.seconds for r in fresh), 2), max((r.peak_rss_mb for r in fresh), default=0.0),
                   # a shard whose vectors all came from the cache was embedded by earlier runs, whatever ran it now
                   dict(Counter(r.kernel for r in results if r.kernel and r.embedded)))

    def to_dict(self) -> dict:
        return asdict(self)
