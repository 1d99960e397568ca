"""The bm25 stages as plain functions on a local root (no Prefect, no Ray): prepare -> analyse each shard -> reduce.
An incremental run, whose kept chunks carry no text, gives the same bm25 files as a full rebuild of the edited
corpus; without the term cache it says to rebuild in full."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.config import parse_config
from pipeline.corpus.delta import Delta
from pipeline.corpus.sharding import assign_shards
from pipeline.errors import SnapshotError
from pipeline.index.analyzer import Analyzer
from pipeline.jobs.lexical import analyze_shard, build_bm25
from pipeline.jobs.prepare import prepare
from pipeline.jobs.shards import INPUT_COLUMNS
from pipeline.storage.backend import Storage
from tests.conftest import write_jsonl


def config(source, root):
    return parse_config({"index_name": "t", "corpus": {"source": str(source)}, "storage": {"root": str(root)},
                         "chunking": {"max_tokens": 64, "overlap": 8}, "run": {"shards": 3},
                         "index": {"variants": ["exact", "bm25"]}})


def analyse(cfg, storage: Storage, run_id: str, delta: Delta | None = None):
    """Prepare and analyse a run; its id table (row, chunk inputs) as load_vectors would order it."""
    prepared = prepare(cfg, storage, run_id, delta)
    analyzer = Analyzer.of(cfg.index.bm25)
    results = [analyze_shard(storage, run_id, s, analyzer) for s in prepared.shards]
    inputs = pl.concat([pl.read_parquet(f"{storage.url}/runs/{run_id}/shards/{s:05d}/chunks/*.parquet")
                        for s in prepared.shards])
    ids = inputs.sort("chunk_id").with_row_index("row").select("row", *INPUT_COLUMNS)
    return prepared, results, ids


def test_incremental_bm25_equals_a_full_rebuild_and_needs_the_term_cache(tmp_path, sample_docs):
    docs = [dict(d) for d in sample_docs[:40]]
    cfg = config(write_jsonl(tmp_path / "v1.jsonl", docs), tmp_path / "store")
    storage = Storage(str(tmp_path / "store"))
    _, first, ids1 = analyse(cfg, storage, "r1")
    assert sum(r.analysed for r in first) == ids1.height and not any(r.cached for r in first)

    edited = [{**d, "text": d["text"] + " An erratum about statins."} if i == 3 else d
              for i, d in enumerate(docs) if i != 5] + [sample_docs[40]]
    cfg2 = config(write_jsonl(tmp_path / "v2.jsonl", edited), tmp_path / "store")
    live = assign_shards(ids1.drop("row"), cfg2.run.shards)
    prepared, second, ids2 = analyse(cfg2, storage, "r2", Delta(live))
    assert prepared.counts["chunks_kept"] > 0 and prepared.counts["docs_deleted"] == 1
    new_chunks = set(ids2["chunk_hash"]) - set(ids1["chunk_hash"])
    assert sum(r.analysed for r in second) == len(new_chunks)  # only new text went through the analyzer
    assert sum(r.cached for r in second) == ids2.height - len(new_chunks)  # the rest came from the cache
    incremental, stats = build_bm25(storage, "r2", prepared.shards, ids2, cfg2.index.bm25)

    fresh = Storage(str(tmp_path / "fresh"))
    full = config(tmp_path / "v2.jsonl", tmp_path / "fresh")
    rebuilt_prepared, _, rebuilt_ids = analyse(full, fresh, "full")
    rebuilt, rebuilt_stats = build_bm25(fresh, "full", rebuilt_prepared.shards, rebuilt_ids, full.index.bm25)
    assert rebuilt_ids.equals(ids2)  # the same chunks in the same rows
    assert incremental.files() == rebuilt.files()  # every score, term and row: the same bytes
    assert stats.chunks == rebuilt_stats.chunks == ids2.height and stats.tokens == rebuilt_stats.tokens

    storage.delete("cache/terms", recursive=True)  # the term cache lost: kept chunks have no text to analyse
    with pytest.raises(SnapshotError, match=r"have no terms in cache/terms/.*run a full reindex \(--full\)"):
        analyse(cfg2, storage, "r3", Delta(live))


def test_a_shard_is_analysed_once_per_run_and_a_resumed_run_redoes_only_what_is_missing(tmp_path, sample_docs):
    cfg = config(write_jsonl(tmp_path / "c.jsonl", sample_docs[:12]), tmp_path / "store")
    storage = Storage(str(tmp_path / "store"))
    prepared, first, ids = analyse(cfg, storage, "r")
    again = [analyze_shard(storage, "r", s, Analyzer.of(cfg.index.bm25)) for s in prepared.shards]
    assert all(r.skipped for r in again) and [r.chunks for r in again] == [r.chunks for r in first]
    with pytest.raises(SnapshotError, match="start a new run id for other bm25 settings"):
        analyze_shard(storage, "r", prepared.shards[0], Analyzer(stemmer=None))
    # a shard whose embedding never committed is prepared again: its terms go with its old inputs
    prepare(cfg, storage, "r")
    assert not storage.exists(f"runs/r/shards/{prepared.shards[0]:05d}/_TERMS")
    with pytest.raises(SnapshotError, match="no _TERMS marker"):
        build_bm25(storage, "r", prepared.shards, ids, cfg.index.bm25)
