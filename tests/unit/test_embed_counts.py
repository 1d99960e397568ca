"""The embed stage's counts, summed from its shards' results: what the manifest's lineage says computed the
passages' vectors."""

from pipeline.jobs.embedder import EmbedCounts
from pipeline.jobs.shards import ShardResult

NOW, EARLIER = "bf16-onednn on AMD EPYC (cpu, 2 threads)", "bf16-onednn on AMD EPYC (cpu, 1 thread)"


def test_a_shard_whose_vectors_all_came_from_the_cache_names_no_kernel():
    """A rebuild whose every vector the cache held was recorded as embedded by the flow's 2-thread kernel; those
    vectors were computed by earlier runs (their versions name what computed them)."""
    results = [ShardResult(0, 10, 300, 1.5, False, embedded=4, cached=6, kernel=NOW),
               ShardResult(1, 8, 0, 0.1, False, embedded=0, cached=8, kernel=NOW),
               ShardResult(2, 7, 210, 1.0, True, embedded=7, kernel=EARLIER)]  # committed by an earlier attempt
    counts = EmbedCounts.of(results, "flow process")
    assert counts.kernels == {NOW: 1, EARLIER: 1}
    assert (counts.embedded, counts.reused_from_cache, counts.shards_skipped) == (4, 14, 1)
