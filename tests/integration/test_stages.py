"""The reindex stages as plain functions (no Prefect, no Ray): prepare -> embed_shard -> index."""

import numpy as np
import polars as pl
import pytest

from pipeline.config import parse_config
from pipeline.errors import InputError, SnapshotError
from pipeline.jobs.build import build_indexes, id_table
from pipeline.jobs.prepare import prepare
from pipeline.jobs.shards import embed_shard, is_committed, load_vectors
from pipeline.models.encoder import cached_encoder
from pipeline.storage.backend import Storage
from tests.conftest import write_jsonl


def config(source, root, model: dict | None = None):
    return parse_config({"index_name": "t", "corpus": {"source": str(source)}, "storage": {"root": str(root)},
                         "chunking": {"max_tokens": 32, "overlap": 8}, "run": {"shards": 3},
                         "model": model or {}, "index": {"variants": ["exact", "ivfpq", "int8", "binary"]}})


@pytest.mark.parametrize("model", [{}, {"name": "wordllama-l2-supercat", "package": "wordllama"}],
                         ids=["minilm", "wordllama"])
def test_prepare_embed_and_index_in_process(tmp_path, sample_docs, model):
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:12] + [{"_id": "bad"}])
    cfg, storage = config(corpus, tmp_path / "store", model), Storage(str(tmp_path / "store"))
    encoder = cached_encoder(cfg.model)
    prepared = prepare(cfg, storage, "run1")
    assert prepared.counts["read"] == 13 and prepared.counts["quarantined"] == 1
    assert prepared.counts["chunks"] > 12 and prepared.shards == [0, 1, 2]
    assert pl.read_parquet(tmp_path / "store/runs/run1/quarantine.parquet")["doc_id"].to_list() == ["bad"]
    with pytest.raises(SnapshotError, match="no _SUCCESS marker"):
        load_vectors(storage, "run1", prepared.shards)
    results = [embed_shard(storage, "run1", s, encoder) for s in prepared.shards]
    assert sum(r.chunks for r in results) == prepared.counts["chunks"] and not any(r.skipped for r in results)
    assert all(is_committed(storage, "run1", s) for s in prepared.shards)
    assert embed_shard(storage, "run1", 0, encoder).skipped  # idempotent: a committed shard is not redone
    embedded, vectors = load_vectors(storage, "run1", prepared.shards)
    built = build_indexes(cfg, vectors)
    ids = id_table(embedded)
    assert {ix.ntotal for ix in built.indexes.values()} == {ids.height} and ids.height == prepared.counts["chunks"]
    assert vectors.shape[1] == encoder.card.dims == built.params["variants"]["binary"]["dims"]
    assert ids["title"].null_count() == 0 and ids["row"].to_list() == list(range(ids.height))
    ivfpq = built.params["variants"]["ivfpq"]
    assert ivfpq["factory"].startswith("IVF") and ivfpq["seed"] == 0
    assert built.fp16.dtype == np.float16 and built.fp16.shape == vectors.shape


def test_corpus_with_no_good_record_is_a_clear_error(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a"}, "not json"])
    with pytest.raises(InputError, match=r"no document accepted \(2 read, 2 quarantined; reasons in .*quarantine"):
        prepare(config(corpus, tmp_path / "store"), Storage(str(tmp_path / "store")), "r")
    assert pl.read_parquet(tmp_path / "store/runs/r/quarantine.parquet").height == 2


def test_second_run_reuses_every_vector_and_an_edit_reembeds_only_its_chunks(tmp_path, sample_docs, encoder):
    docs = [dict(d) for d in sample_docs[:10]]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    cfg, storage = config(corpus, tmp_path / "store"), Storage(str(tmp_path / "store"))

    def run(run_id: str):
        prepared = prepare(cfg, storage, run_id)
        results = [embed_shard(storage, run_id, s, encoder) for s in prepared.shards]
        return prepared, results, load_vectors(storage, run_id, prepared.shards)

    first, r1, (ids1, v1) = run("first")
    assert sum(r.embedded for r in r1) == first.counts["chunks"] and sum(r.cached for r in r1) == 0
    second, r2, (ids2, v2) = run("second")
    assert sum(r.embedded for r in r2) == 0 and sum(r.cached for r in r2) == second.counts["chunks"]
    assert sum(r.tokens for r in r2) == 0  # zero texts embedded the second time
    assert ids1.equals(ids2) and np.array_equal(v1, v2)

    docs[3]["text"] += " An added closing sentence changes the last chunk of this document."
    write_jsonl(corpus, docs)
    third, r3, (ids3, _) = run("third")
    changed = set(ids3["chunk_hash"]) - set(ids1["chunk_hash"])
    assert 1 <= sum(r.embedded for r in r3) == len(changed)  # only the edited document's changed chunks
    assert {c.split("#")[0] for c in ids3.filter(pl.col("chunk_hash").is_in(changed))["chunk_id"]} == {docs[3]["_id"]}


def test_streaming_in_small_batches_gives_the_same_vectors_and_catches_late_duplicates(tmp_path, sample_docs, encoder):
    """The driver reads 4 records at a time: each shard gets several input parts, the workers embed them part
    by part, and the result equals a one-batch run's; a duplicate in a later batch is still quarantined."""
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:10] + [dict(sample_docs[1], text="a late duplicate")])
    results = {}
    for batch in (4, 10_000):
        cfg = parse_config({**config(corpus, tmp_path / f"store{batch}").model_dump(),
                            "run": {"shards": 2, "read_batch": batch}})
        storage = Storage(str(tmp_path / f"store{batch}"))
        prepared = prepare(cfg, storage, "r")
        assert prepared.counts["quarantined"] == 1 and prepared.counts["accepted"] == 10
        parts = [storage.list(f"runs/r/shards/{s:05d}/chunks") for s in prepared.shards]
        assert max(map(len, parts)) == (3 if batch == 4 else 1)
        for s in prepared.shards:
            embed_shard(storage, "r", s, encoder)
        results[batch] = (prepared.corpus["fingerprint"], *load_vectors(storage, "r", prepared.shards))
    (fp_small, ids_small, v_small), (fp_big, ids_big, v_big) = results[4], results[10_000]
    assert fp_small == fp_big and ids_small.equals(ids_big)
    assert np.abs(v_small - v_big).max() < 1e-5  # batches differ, so padding (and float rounding) does too
    quarantined = pl.read_parquet(tmp_path / "store4/runs/r/quarantine.parquet")
    assert quarantined["reason"].str.starts_with("duplicate id").all() and quarantined["position"].to_list() == [11]


def test_golden_queries_are_encoded_once_per_model(tmp_path, encoder):
    from pipeline.models.cache import CachedQueries

    queries = ["does aspirin prevent heart attacks", "what causes volcanoes", "does aspirin prevent heart attacks"]
    first = CachedQueries(encoder, Storage(str(tmp_path)))
    before = encoder.tokens_encoded
    vectors = first.encode(queries, kind="query")
    assert encoder.tokens_encoded > before  # two distinct queries encoded, the repeat taken from them
    assert np.abs(vectors - encoder.encode(queries, kind="query")).max() < 1e-5
    again = CachedQueries(encoder, Storage(str(tmp_path)))  # a later run: a new process would start like this
    before = encoder.tokens_encoded
    assert np.array_equal(again.encode(queries[::-1], kind="query"), vectors[::-1])
    assert encoder.tokens_encoded == before  # nothing encoded the second time
    assert len(again.encode(["a new query"] + queries, kind="query")) == 4 and encoder.tokens_encoded > before
