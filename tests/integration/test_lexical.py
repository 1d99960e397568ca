"""The bm25 stages as plain functions on a local root (no Prefect, no Ray): prepare -> embed -> index -> analyse
each shard -> reduce. An incremental run, whose kept chunks carry no text, gives the same bm25 files as a full
rebuild of the edited corpus; without the term cache it says to rebuild in full."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.config_loader import parse_config
from pipeline.errors import SnapshotError
from pipeline.jobs.build import build_indexes, with_bm25
from pipeline.jobs.executor import LocalExecutor
from pipeline.jobs.lexical import analyze_shard, build_bm25
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import ShardInput, prepare
from pipeline.jobs.shards import embed_shard
from pipeline.snapshots.publishing import commit
from pipeline.storage.backend import Storage
from pipeline.storage.layout import BM25_FOLDER, IDS
from tests.conftest import write_jsonl

LOCAL = LocalExecutor()


def config(source, root, **bm25):
    return parse_config({"index_name": "t", "corpus": {"source": str(source)}, "storage": {"root": str(root)},
                         "chunking": {"max_tokens": 64, "overlap": 8}, "run": {"shards": 3},
                         "index": {"variants": ["exact", "bm25"], "bm25": bm25}})


def build(cfg, storage: Storage, run_id: str, encoder, live: Storage | None = None):
    """One build's steps, in this process: its version folder (uncommitted) and the bm25 stage's result."""
    prepared = prepare(cfg, storage, run_id, ShardInput(live), encoder.card, LOCAL)
    for shard in prepared.shards:
        embed_shard(storage, run_id, shard, encoder)
    target = storage.child(f"snapshots/t/{run_id}")
    staged = build_indexes(cfg, storage, prepared, target, BuildPlan(ShardInput(live), None, "test"),
                           encoder.card.dims, LOCAL)
    bm25 = build_bm25(cfg, storage, prepared, target, LOCAL)
    return prepared, target, bm25, with_bm25(cfg, staged, bm25.staged)


def bm25_files(target: Storage) -> dict[str, bytes]:
    return {name: target.read_bytes(f"{BM25_FOLDER}/{name}") for name in target.list(BM25_FOLDER)}


def ids(target: Storage) -> pl.DataFrame:
    return pl.read_parquet(target.path(IDS))


def test_incremental_bm25_equals_a_full_rebuild_and_needs_the_term_cache(tmp_path, sample_docs, encoder):
    docs = [dict(d) for d in sample_docs[:40]]
    storage = Storage(str(tmp_path / "store"))
    cfg = config(write_jsonl(tmp_path / "v1.jsonl", docs), tmp_path / "store")
    first, v1, built1, staged1 = build(cfg, storage, "r1", encoder)
    assert built1.counts["bm25_analysed"] == first.counts["chunks"] and built1.counts["bm25_terms_from_cache"] == 0
    commit(storage, "t", "r1", staged1.files, {"index": staged1.params})  # live: what later builds compare with

    edited = [{**d, "text": d["text"] + " An erratum about statins."} if i == 3 else d
              for i, d in enumerate(docs) if i != 5] + [sample_docs[40]]
    cfg2 = config(write_jsonl(tmp_path / "v2.jsonl", edited), tmp_path / "store")
    second, v2, built2, _ = build(cfg2, storage, "r2", encoder, live=v1)
    assert second.counts["chunks_kept"] > 0 and second.counts["docs_deleted"] == 1
    new_chunks = set(ids(v2)["chunk_hash"]) - set(ids(v1)["chunk_hash"])
    assert built2.counts["bm25_analysed"] == len(new_chunks)  # only new text went through the analyzer
    assert built2.counts["bm25_terms_from_cache"] == second.counts["chunks"] - len(new_chunks)  # the rest: cached

    fresh = Storage(str(tmp_path / "fresh"))
    _, rebuilt, built3, _ = build(config(tmp_path / "v2.jsonl", tmp_path / "fresh"), fresh, "full", encoder)
    assert ids(rebuilt).equals(ids(v2))  # the same chunks in the same rows
    assert bm25_files(v2) == bm25_files(rebuilt)  # every score, term and row: the same bytes
    assert built2.staged.params["statistics"] == built3.staged.params["statistics"]

    storage.delete("cache/terms", recursive=True)  # the term cache lost: kept chunks have no text to analyse
    with pytest.raises(SnapshotError, match=r"have no terms in cache/terms/.*run a full reindex \(--full\)"):
        build(cfg2, storage, "r3", encoder, live=v1)


def test_a_shard_is_analysed_once_per_run_and_the_reduce_needs_every_shard(tmp_path, sample_docs, encoder):
    cfg = config(write_jsonl(tmp_path / "c.jsonl", sample_docs[:12]), tmp_path / "store")
    storage = Storage(str(tmp_path / "store"))
    prepared, target, built, _ = build(cfg, storage, "r", encoder)
    again = [analyze_shard(cfg, storage, "r", s) for s in prepared.shards]
    assert all(r.skipped for r in again) and sum(r.chunks for r in again) == prepared.counts["chunks"]
    resumed = build_bm25(cfg, storage, prepared, target, LOCAL)  # a resumed run: nothing analysed again
    assert resumed.counts["bm25_analysed"] == 0 and resumed.staged.params == built.staged.params
    with pytest.raises(SnapshotError, match="start a new run id for other bm25 settings"):
        analyze_shard(config(tmp_path / "c.jsonl", tmp_path / "store", stemmer=None), storage, "r",
                      prepared.shards[0])
    storage.delete(f"runs/r/shards/{prepared.shards[0]:05d}/_TERMS")
    storage.delete(f"runs/r/shards/{prepared.shards[0]:05d}/chunks", recursive=True)
    with pytest.raises(SnapshotError, match="has no chunk parts"):
        build_bm25(cfg, storage, prepared, target, LOCAL)


def test_cache_gc_keeps_the_terms_committed_snapshots_need(tmp_path, sample_docs, encoder):
    from pipeline.snapshots.publishing import claim, commit
    from pipeline.snapshots.retention import collect_cache

    storage = Storage(str(tmp_path / "store"))
    kept = config(write_jsonl(tmp_path / "kept.jsonl", sample_docs[:6]), tmp_path / "store")
    gone = config(write_jsonl(tmp_path / "gone.jsonl", sample_docs[6:10]), tmp_path / "store")
    claim(storage, "t", "kept", "kept")
    prepared, _, _, staged = build(kept, storage, "kept", encoder)
    model = encoder.card.to_dict() | {"fingerprint": encoder.card.fingerprint}
    commit(storage, "t", "kept", staged.files, {"index": staged.params, "counts": prepared.counts, "model": model})
    build(gone, storage, "gone", encoder)  # analysed and cached, never published
    terms = {r.kind: r for r in collect_cache(storage, dry_run=True)}["terms"]
    assert terms.kept == prepared.counts["chunks"] and terms.dropped > 0
    done = {r.kind: r for r in collect_cache(storage)}["terms"]
    assert (done.kept, done.dropped) == (terms.kept, terms.dropped)
    again = build(kept, storage, "again", encoder)[2]
    assert again.counts["bm25_terms_from_cache"] == prepared.counts["chunks"]  # the snapshot's terms stayed
    assert build(gone, storage, "gone-again", encoder)[2].counts["bm25_terms_from_cache"] == 0
