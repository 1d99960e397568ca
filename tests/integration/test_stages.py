"""The build's steps as plain functions, in this process (no Prefect, no Ray): read pieces and prepare shards ->
embed_shard -> train, fill per shard and assemble the version's files."""

import json
from dataclasses import asdict

import numpy as np
import polars as pl
import pytest

from pipeline.config import ModelConfig
from pipeline.config_loader import parse_config
from pipeline.errors import InputError, SnapshotError
from pipeline.jobs.build import build_indexes, staged_snapshot
from pipeline.jobs.executor import LocalExecutor
from pipeline.jobs.indexing import load_vectors
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import ShardInput, prepare
from pipeline.jobs.run_folder import remove_work
from pipeline.jobs.shards import ShardResult, embed_shard, is_committed
from pipeline.models.encoder import cached_encoder, load_encoder
from pipeline.quality.search import Searcher
from pipeline.snapshots.publishing import claim
from pipeline.storage.backend import Storage
from tests.conftest import write_jsonl

LOCAL = LocalExecutor()
FULL = BuildPlan(ShardInput(None), None, "full build: test")


def config(source, root, model: dict | None = None, **run):
    return parse_config({"index_name": "t", "corpus": {"source": str(source)}, "storage": {"root": str(root)},
                         "chunking": {"max_tokens": 32, "overlap": 8}, "run": {"shards": 3, **run},
                         "model": model or {}, "index": {"variants": ["exact", "ivfpq", "int8", "binary"]}})


def quarantine(root, run_id: str) -> pl.DataFrame:
    return pl.read_parquet(root / f"runs/{run_id}/quarantine/*.parquet")


def prepared_run(cfg, storage, run_id, encoder):
    return prepare(cfg, storage, run_id, ShardInput(None), encoder.card, LOCAL)


@pytest.mark.parametrize("model", [{}, {"name": "wordllama-l2-supercat", "package": "wordllama"}],
                         ids=["minilm", "wordllama"])
def test_prepare_embed_and_index_in_process(tmp_path, sample_docs, model):
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:12] + [{"_id": "bad"}])
    cfg, storage = config(corpus, tmp_path / "store", model), Storage(str(tmp_path / "store"))
    encoder = cached_encoder(cfg.model)
    prepared = prepared_run(cfg, storage, "run1", encoder)
    assert prepared.counts["read"] == 13 and prepared.counts["quarantined"] == 1
    assert prepared.counts["chunks"] > 12 and prepared.shards == [s for s in range(3) if prepared.shard_rows[s]]
    assert quarantine(tmp_path / "store", "run1")["doc_id"].to_list() == ["bad"]
    with pytest.raises(SnapshotError, match="no _SUCCESS marker"):
        load_vectors(storage, "run1", prepared.shards)
    results = [embed_shard(storage, "run1", s, encoder) for s in prepared.shards]
    assert sum(r.chunks for r in results) == prepared.counts["chunks"] and not any(r.skipped for r in results)
    assert all(is_committed(storage, "run1", s) for s in prepared.shards)
    assert embed_shard(storage, "run1", prepared.shards[0], encoder).skipped  # idempotent
    embedded, vectors = load_vectors(storage, "run1", prepared.shards)
    claim(storage, "t", "v1", "run1")
    target = storage.child("snapshots/t/v1")
    staged = build_indexes(cfg, storage, prepared, target, FULL, encoder.card.dims, LOCAL)
    snap = staged_snapshot(target, staged, encoder.card, prepared)
    assert set(snap.verify()) >= {"ids.parquet", "vectors.f16.npy", "index/exact.faiss", "index/ivfpq.faiss",
                                  "index/ivfpq.ivfdata", "index/ivfpq.trained.faiss"}
    ids = snap.ids
    assert {snap.index(v).ntotal for v in snap.variants} == {ids.height} == {prepared.counts["chunks"]}
    assert ids["row"].to_list() == list(range(ids.height)) and ids["title"].null_count() == 0
    assert ids.select("bucket", "chunk_id").equals(ids.select("bucket", "chunk_id").sort("bucket", "chunk_id"))
    assert ids.drop("row").equals(embedded)  # the snapshot's rows are the run's rows, in snapshot order
    assert np.array_equal(snap.rescore_store(), vectors.astype(np.float16))
    assert np.array_equal(snap.index("exact").reconstruct_n(0, ids.height), vectors)
    ivfpq = snap.variant_params("ivfpq")
    assert ivfpq["factory"].startswith("IVF") and ivfpq["seed"] == 0
    assert snap.manifest["index"]["rescore"]["factor"] == 10  # planned: a small corpus re-scores k x 10
    explicit = cfg.model_copy(update={"index": cfg.index.model_copy(update={"rescore_factor": 3})})
    assert build_indexes(explicit, storage, prepared, storage.child("snapshots/t/v2"), FULL, encoder.card.dims,
                         LOCAL).params["rescore"]["factor"] == 3  # a configured depth wins
    hits = Searcher.from_snapshot(snap, encoder).search_vectors(vectors[:3], 3, "ivfpq+rescore")
    assert [h[0].chunk_id for h in hits] == ids["chunk_id"].to_list()[:3]  # a stored vector finds itself


@pytest.mark.parametrize("variants,store,source", [(["ivfpq", "int8"], True, "the fp16 store"),
                                                   (["binary", "int8", "exact"], False, "exact"),
                                                   (["ivfpq", "int8"], False, "int8, reconstructed"),
                                                   (["ivfpq", "binary"], False, None)])
def test_the_index_stage_sums_the_drift_figures_of_the_vectors_the_version_reads_back(tmp_path, sample_docs, encoder,
                                                                                      variants, store, source):
    """Each shard sums its vectors as the version will read them back (drift.vectors_source), so evaluating the
    version reads only its sampled rows; added up, the shards' sums give what a pass over every row gives."""
    from pipeline.quality.drift import VectorMoments
    from pipeline.quality.measure import snapshot_vectors

    cfg = config(write_jsonl(tmp_path / "c.jsonl", sample_docs[:12]), tmp_path / "store")
    cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"variants": variants, "store_fp16": store})})
    storage = Storage(str(tmp_path / "store"))
    prepared = prepared_run(cfg, storage, "run1", encoder)
    for s in prepared.shards:
        embed_shard(storage, "run1", s, encoder)
    assert len(prepared.shards) == 3
    target = storage.child("snapshots/t/v1")
    staged = build_indexes(cfg, storage, prepared, target, FULL, encoder.card.dims, LOCAL)
    if source is None:  # nothing reads back: no drift statistics of vectors, as before
        assert staged.moments is None
        return
    read_back = np.asarray(snapshot_vectors(staged_snapshot(target, staged, encoder.card, prepared)))
    passed = VectorMoments.of(read_back)  # float64 sums: only their order differs, so they agree to ~1e-15
    assert staged.moments.rows == passed.rows == prepared.counts["chunks"]
    for got, want in [(staged.moments.total, passed.total), (staged.moments.squares, passed.squares),
                      (staged.moments.norms, passed.norms)]:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)  # fp32 or int8 in place of fp16 is ~1e-4 off
    assert asdict(staged.moments.geometry()) == pytest.approx(asdict(passed.geometry()), abs=1e-6)


def test_evaluation_and_a_later_measuring_take_the_figures_over_every_vector_without_a_pass(tmp_path, sample_docs,
                                                                                           encoder):
    """A build evaluates its version with the index stage's sums (the same drift summary as a pass over the fp16
    store), and a later measuring of the committed version (monitor, migration) takes them from its manifest."""
    from pipeline.jobs.build import evaluate
    from pipeline.quality.golden import GoldenSet
    from pipeline.quality.measure import measure
    from pipeline.snapshots.publishing import commit
    from pipeline.snapshots.snapshot import Snapshot

    docs = sample_docs[:12]
    cfg, storage = config(write_jsonl(tmp_path / "c.jsonl", docs), tmp_path / "store"), Storage(str(tmp_path / "store"))
    prepared = prepared_run(cfg, storage, "run1", encoder)
    for s in prepared.shards:
        embed_shard(storage, "run1", s, encoder)
    claim(storage, "t", "v1", "run1")
    staged = build_indexes(cfg, storage, prepared, storage.child("snapshots/t/v1"), FULL, encoder.card.dims, LOCAL)
    snap = staged_snapshot(storage.child("snapshots/t/v1"), staged, encoder.card, prepared)
    golden = GoldenSet({d["_id"]: d["title"] for d in docs[:4]}, {d["_id"]: {d["_id"]: 1} for d in docs[:4]}, "q", "r")
    summed = evaluate(snap, golden, encoder, 10, "exact", staged.moments).evaluation
    passed = evaluate(snap, golden, encoder, 10, "exact").evaluation
    assert summed["drift"]["vectors"]["rows"] == prepared.counts["chunks"]
    assert summed["drift"] == passed["drift"]
    commit(storage, "t", "v1", staged.files, {"index": staged.params, "counts": prepared.counts, "evaluation": summed,
                                              "corpus": prepared.corpus, "model": snap.manifest["model"]})
    committed = Snapshot.of(storage, "t", "v1")
    assert measure(committed, golden, 10, "exact", Searcher.from_snapshot(committed, encoder)).stats == \
        {k: v for k, v in summed["drift"].items() if k != "mode"}
    recorded = dict(committed.manifest)  # figures over every row the build recorded are taken as they are:
    recorded["evaluation"] = {"drift": {"vectors": {**summed["drift"]["vectors"], "mean_norm": 0.5}}}
    again = measure(Snapshot(committed.storage, recorded), golden, 10, "exact", Searcher.from_snapshot(committed,
                                                                                                       encoder))
    assert again.stats["vectors"] == {**summed["drift"]["vectors"], "mean_norm": 0.5}  # the store was not read


def test_corpus_with_no_good_record_is_a_clear_error(tmp_path, encoder):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a"}, "not json"])
    cfg = config(corpus, tmp_path / "store")
    with pytest.raises(InputError, match=r"no document accepted \(2 read, 2 quarantined; reasons in .*quarantine"):
        prepared_run(cfg, Storage(str(tmp_path / "store")), "r", encoder)
    assert quarantine(tmp_path / "store", "r").height == 2


def test_a_model_giving_nan_vectors_fails_its_shard_naming_the_document_and_caches_nothing(tmp_path, sample_docs,
                                                                                           encoder):
    """A half-precision kernel can overflow to infinity or NaN: such vectors would be cached and indexed (FAISS
    takes them silently); the shard fails instead, naming the document, and nothing reaches the cache."""
    from pipeline.errors import ModelError

    class Overflows:
        def __init__(self, inner, bad: str) -> None:
            self.inner, self.bad = inner, bad
            self.card, self.tokenizer, self.kernel_plan = inner.card, inner.tokenizer, inner.kernel_plan

        @property
        def tokens_encoded(self) -> int:
            return self.inner.tokens_encoded

        def encode(self, texts, kind="passage"):
            out = self.inner.encode(texts, kind)
            out[[i for i, t in enumerate(texts) if self.bad in t]] = np.nan
            return out

    docs = sample_docs[:6]
    cfg = config(write_jsonl(tmp_path / "c.jsonl", docs), tmp_path / "store", shards=1)
    storage = Storage(str(tmp_path / "store"))
    prepared = prepared_run(cfg, storage, "r", encoder)
    with pytest.raises(ModelError, match=rf"gave \d+ vectors with NaN or infinity in shard 0 \(first: document "
                                         rf"'{docs[2]['_id']}'\); expected finite vectors"):
        embed_shard(storage, "r", 0, Overflows(encoder, docs[2]["text"][:30]))
    assert not is_committed(storage, "r", 0) and not storage.list("cache")
    assert embed_shard(storage, "r", 0, encoder).embedded == prepared.counts["chunks"]


def test_second_run_reuses_every_vector_and_an_edit_reembeds_only_its_chunks(tmp_path, sample_docs, encoder):
    docs = [dict(d) for d in sample_docs[:10]]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    cfg, storage = config(corpus, tmp_path / "store"), Storage(str(tmp_path / "store"))

    def run(run_id: str):
        prepared = prepared_run(cfg, storage, run_id, encoder)
        results = [embed_shard(storage, run_id, s, encoder) for s in prepared.shards]
        return prepared, results, load_vectors(storage, run_id, prepared.shards)

    first, r1, (ids1, v1) = run("first")
    assert sum(r.embedded for r in r1) == first.counts["chunks"] and sum(r.cached for r in r1) == 0
    second, r2, (ids2, v2) = run("second")
    assert sum(r.embedded for r in r2) == 0 and sum(r.cached for r in r2) == second.counts["chunks"]
    assert second.counts["cached"] == second.counts["chunks"] and second.counts["to_embed"] == 0
    assert sum(r.tokens for r in r2) == 0  # zero texts embedded the second time
    assert ids1.equals(ids2) and np.array_equal(v1, v2)

    docs[3]["text"] += " An added closing sentence changes the last chunk of this document."
    write_jsonl(corpus, docs)
    third, r3, (ids3, _) = run("third")
    changed = set(ids3["chunk_hash"]) - set(ids1["chunk_hash"])
    assert 1 <= sum(r.embedded for r in r3) == len(changed)  # only the edited document's changed chunks
    assert {c.split("#")[0] for c in ids3.filter(pl.col("chunk_hash").is_in(changed))["chunk_id"]} == {docs[3]["_id"]}


def test_cached_vectors_come_as_cache_files_copied_whole_or_as_the_rows_wanted(tmp_path, sample_docs, encoder):
    """A shard that wants most of a cache file gets the file itself (a hard link: no vector decoded), one that
    wants few gets those rows; either way each chunk gets its own vector, and other chunks' rows are ignored."""
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:10])
    cfg, storage = config(corpus, tmp_path / "store", shards=1), Storage(str(tmp_path / "store"))

    def run(run_id: str, docs: list[dict]) -> tuple[pl.DataFrame, np.ndarray, list]:
        write_jsonl(corpus, docs)
        prepared = prepared_run(cfg, storage, run_id, encoder)
        [result] = [embed_shard(storage, run_id, s, encoder) for s in prepared.shards]
        assert result.cached == prepared.counts["cached"]
        folder = tmp_path / f"store/runs/{run_id}/shards/00000/vectors"
        return *load_vectors(storage, run_id, prepared.shards), sorted(folder.glob("cached-*.parquet"))

    ids, vectors, _ = run("all", sample_docs[:10])
    by_hash = dict(zip(ids["chunk_hash"], vectors, strict=True))
    [cache_file] = (tmp_path / "store/cache/embeddings").glob("*/*/*.parquet")
    edited = [dict(d) for d in sample_docs[:9]]
    edited[5]["text"] += " A sentence added at the end."
    most_ids, most, [linked] = run("most", edited)  # 8 of the 10 documents unchanged, the 10th gone
    assert linked.samefile(cache_file)
    few_ids, few, [copied] = run("few", sample_docs[:2])
    assert not copied.samefile(cache_file)
    assert set(pl.read_parquet(copied)["chunk_hash"]) == set(few_ids["chunk_hash"])
    for got_ids, got in ((most_ids, most), (few_ids, few)):
        assert got_ids.height == len(got) and got_ids["chunk_id"].is_unique().all()
        kept = [i for i, h in enumerate(got_ids["chunk_hash"]) if h in by_hash]
        assert np.array_equal(got[kept], np.stack([by_hash[got_ids["chunk_hash"][i]] for i in kept]))
    assert set(few_ids["doc_id"]) == {d["_id"] for d in sample_docs[:2]}
    assert sample_docs[9]["_id"] not in set(most_ids["doc_id"])


@pytest.mark.parametrize("read_batch", [10_000, 2], ids=["same-part", "later-part"])
def test_a_text_two_chunks_share_is_embedded_once_and_both_get_its_vector(tmp_path, sample_docs, encoder, read_batch):
    """A document whose text another one repeats (boilerplate, a copy under another id) costs no model tokens,
    whether the copy is read in the same batch (the shard's same part) or a later one."""
    def run(docs: list[dict], name: str) -> tuple[ShardResult, pl.DataFrame, np.ndarray]:
        corpus = write_jsonl(tmp_path / f"{name}.jsonl", docs)
        cfg = config(corpus, tmp_path / name, shards=1, read_batch=read_batch)
        storage = Storage(str(tmp_path / name))
        prepared = prepared_run(cfg, storage, "r", encoder)
        [result] = [embed_shard(storage, "r", s, encoder) for s in prepared.shards]
        return result, *load_vectors(storage, "r", prepared.shards)

    alone, _, _ = run(sample_docs[:4], "alone")
    result, ids, vectors = run(sample_docs[:4] + [dict(sample_docs[1], _id="copy-of-1")], "with-copy")
    assert result.tokens == alone.tokens and result.embedded == ids.height > alone.embedded
    original, copy = (ids.with_row_index().filter(pl.col("doc_id") == d).sort("chunk_index")["index"].to_numpy()
                      for d in (sample_docs[1]["_id"], "copy-of-1"))
    assert len(original) == len(copy) > 0 and np.array_equal(vectors[original], vectors[copy])


def test_pieces_and_small_batches_give_the_same_run_and_find_duplicates_across_pieces(tmp_path, sample_docs, encoder):
    """One piece read 10,000 records at a time, or byte-range pieces of ~2 KB read 4 records at a time: the same
    chunks and vectors; a later copy of an id, in another piece, is quarantined where it stands."""
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:10] + [dict(sample_docs[1], text="a late duplicate")])
    results = {}
    for name, run in (("whole", {}), ("pieces", {"read_batch": 4, "piece_bytes": 1 << 16})):
        cfg = config(corpus, tmp_path / f"store-{name}", shards=2, **run)
        if name == "pieces":  # below the config's floor, so that this small file is cut into several pieces
            cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"piece_bytes": 2048})})
        storage = Storage(str(tmp_path / f"store-{name}"))
        prepared = prepared_run(cfg, storage, "r", encoder)
        assert prepared.counts["quarantined"] == 1 and prepared.counts["accepted"] == 10
        assert prepared.counts["pieces"] == (1 if name == "whole" else len(storage.list("runs/r/pieces")))
        assert name == "whole" or prepared.counts["pieces"] > 1  # the case this test is for: a file in pieces
        for s in prepared.shards:
            embed_shard(storage, "r", s, encoder)
        results[name] = (prepared.corpus["fingerprint"], *load_vectors(storage, "r", prepared.shards))
        dupes = quarantine(tmp_path / f"store-{name}", "r")
        assert dupes["reason"].str.starts_with("duplicate id").all() and dupes["doc_id"].to_list() == [
            sample_docs[1]["_id"]]
        if name == "pieces":  # quarantined by its shard, which has the id alone: JSON, under the id field
            assert dupes["raw"].to_list() == [json.dumps({"_id": sample_docs[1]["_id"]}, separators=(",", ":"))]
    assert results["pieces"][0] == results["whole"][0] and results["pieces"][1].equals(results["whole"][1])
    assert np.abs(results["pieces"][2] - results["whole"][2]).max() < 1e-5  # batches differ: float rounding


def test_small_files_read_together_or_one_piece_each_give_the_same_run_and_counts_per_file(tmp_path, sample_docs,
                                                                                           encoder):
    """The same documents in 5 files (a later copy of an id in the fourth): read as one piece, or as a piece per
    file, give the same chunks, fingerprint and per-file counts; a rerun of the run id with pieces planned
    otherwise is refused rather than mixing two plans' parts."""
    docs = sample_docs[:10] + [dict(sample_docs[1], text="a late duplicate")]
    for i, part in enumerate([docs[:3], docs[3:5], docs[5:8], [docs[10], *docs[8:10]], []]):
        write_jsonl(tmp_path / f"c-{i}.jsonl", part)
    results = {}
    for name, piece_files in (("together", 256), ("apart", 1)):
        root = tmp_path / f"store-{name}"
        cfg, storage = config(tmp_path / "c-*.jsonl", root, shards=2, piece_files=piece_files), Storage(str(root))
        prepared = prepared_run(cfg, storage, "r", encoder)
        assert prepared.counts["pieces"] == (1 if name == "together" else 5)
        assert prepared.counts["quarantined"] == 1 and prepared.counts["accepted"] == 10
        for s in prepared.shards:
            embed_shard(storage, "r", s, encoder)
        files = pl.read_parquet(root / "runs/r/files.parquet").select("read", "accepted", "quarantined").rows()
        assert files == [(3, 3, 0), (2, 2, 0), (3, 3, 0), (3, 2, 1), (0, 0, 0)]
        results[name] = (prepared.corpus["fingerprint"], *load_vectors(storage, "r", prepared.shards))
        with pytest.raises(InputError, match=rf"settings that decide what its read pieces and shards hold changed "
                                             rf"since its first attempt \(run.piece_files {piece_files} -> 3\)"):
            prepared_run(config(tmp_path / "c-*.jsonl", root, shards=2, piece_files=3), storage, "r", encoder)
    assert results["apart"][0] == results["together"][0] and results["apart"][1].equals(results["together"][1])
    assert np.abs(results["apart"][2] - results["together"][2]).max() < 1e-5


def test_a_file_written_after_the_run_listed_the_corpus_is_refused_before_anything_is_read(tmp_path, sample_docs,
                                                                                         encoder):
    """The flow lists the corpus when it starts, and prepare lists it again: a file written in between would be
    left unread on a decision made before it changed (its new stamp then recorded, so no later run would read it
    either). Refused, nothing read; and a resume with another batch size is refused too (an unfinished piece's
    parts of the old size would stay beside the new ones)."""
    from pipeline.corpus.pieces import listing_digest
    from pipeline.corpus.readers import list_corpus
    from pipeline.jobs.prepare import make_chunker
    from pipeline.jobs.run_folder import check_run_unchanged, prepared_settings

    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:6])
    cfg, storage = config(corpus, tmp_path / "store"), Storage(str(tmp_path / "store"))
    check_run_unchanged(storage, "r", listing_digest(list_corpus(cfg.corpus)),  # as the flow does when it starts
                        prepared_settings(cfg, make_chunker(cfg).params, ShardInput(None), encoder.card))
    write_jsonl(corpus, sample_docs[:7])
    with pytest.raises(InputError, match="run r: the corpus's files changed since the run began"):
        prepared_run(cfg, storage, "r", encoder)
    assert storage.list("runs/r") == ["run.json"]
    assert prepared_run(cfg, storage, "r2", encoder).counts["accepted"] == 7
    smaller = cfg.model_copy(update={"run": cfg.run.model_copy(update={"read_batch": 2})})
    with pytest.raises(InputError, match=r"\(run.read_batch 10000 -> 2\)"):
        prepared_run(smaller, storage, "r2", encoder)
    # nor against another live version (an alias moved between attempts: kept rows would point into the wrong one)
    moved = prepared_settings(cfg, make_chunker(cfg).params, ShardInput(storage.child("snapshots/t/v2")), encoder.card)
    with pytest.raises(InputError, match=r"\(live version None -> v2\)"):
        check_run_unchanged(storage, "r2", listing_digest(list_corpus(cfg.corpus)), moved)


def test_a_rerun_redoes_only_unfinished_pieces_and_shards(tmp_path, sample_docs, encoder):
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:12])
    cfg, storage = config(corpus, tmp_path / "store"), Storage(str(tmp_path / "store"))
    first = prepared_run(cfg, storage, "r", encoder)
    marker = storage.read_bytes("runs/r/shards/00001/_PREPARED")
    storage.delete("runs/r/shards/00001/_PREPARED")  # as if the worker preparing shard 1 died before committing
    run = tmp_path / "store" / "runs" / "r"
    finished = {p: p.stat().st_mtime_ns for p in [*run.glob("pieces/*/_SUCCESS"), *run.glob("shards/*/_PREPARED")]}
    assert len(finished) > 2
    again = prepared_run(cfg, storage, "r", encoder)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # the finished pieces and shards were not redone
    rss = "prepare_peak_rss_mb"  # the process's peak so far: what ran in between may have raised it
    assert {k: v for k, v in again.counts.items() if k != rss} == {k: v for k, v in first.counts.items() if k != rss}
    redone, before = json.loads(storage.read_bytes("runs/r/shards/00001/_PREPARED")), json.loads(marker)
    assert {k: v for k, v in redone.items() if k != "peak_rss_mb"} == {k: v for k, v in before.items()
                                                                       if k != "peak_rss_mb"}


def test_a_finished_runs_work_goes_and_a_rerun_after_a_stopped_removal_is_still_right(tmp_path, sample_docs, encoder):
    """remove_work deletes a finished run's pieces and shards and keeps its quarantine. Stopped after any number of
    deletes (a crash), a rerun of the run id on what is left gives the same chunks and vectors: no marker outlived
    the files it vouches for."""
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_docs[:12] + [{"_id": "bad"}])
    cfg = config(corpus, tmp_path / "done")

    def run(storage: Storage) -> tuple[pl.DataFrame, np.ndarray]:
        prepared = prepared_run(cfg, storage, "r", encoder)
        for shard in prepared.shards:
            embed_shard(storage, "r", shard, encoder)
        return load_vectors(storage, "r", prepared.shards)

    done = Storage(str(tmp_path / "done"))
    rows, vectors = run(done)
    remove_work(done, "r")
    # its records: each file's counts, bad records, what it listed and the settings it read with
    assert done.list("runs/r") == ["files.parquet", "quarantine", "run.json"]
    assert quarantine(tmp_path / "done", "r")["doc_id"].to_list() == ["bad"]
    files = pl.read_parquet(tmp_path / "done/runs/r/files.parquet")
    assert files.select("read", "accepted", "quarantined").row(0) == (13, 12, 1)

    class StopsAfter(Storage):
        deletes = 0

        def delete(self, key: str, recursive: bool = False) -> None:
            if self.deletes == self.stop_at:
                raise SystemExit("stopped")
            self.deletes += 1
            super().delete(key, recursive)

    stopped_at = []
    for n in range(20):
        root = tmp_path / f"stop-{n}"
        first = Storage(str(root))
        run(first)
        stopping = StopsAfter(str(root))
        stopping.stop_at = n
        try:
            remove_work(stopping, "r")
            break  # every delete done: each stopping point was tried
        except SystemExit:
            stopped_at.append(n)
        again_rows, again_vectors = run(Storage(str(root)))
        assert again_rows.equals(rows) and np.array_equal(again_vectors, vectors), f"stopped after {n} deletes"
    assert len(stopped_at) >= 4  # the pieces, a shard's markers, the shards' files


def test_cache_gc_keeps_what_committed_snapshots_need(tmp_path, sample_docs, encoder):
    from pipeline.snapshots.publishing import commit
    from pipeline.snapshots.retention import collect_cache

    storage = Storage(str(tmp_path / "store"))
    kept = write_jsonl(tmp_path / "kept.jsonl", sample_docs[:6])
    gone = write_jsonl(tmp_path / "gone.jsonl", sample_docs[6:10])
    for run_id, corpus in (("kept", kept), ("gone", gone)):  # both runs fill the cache; only "kept" publishes
        cfg = config(corpus, tmp_path / "store")
        prepared = prepared_run(cfg, storage, run_id, encoder)
        for s in prepared.shards:
            embed_shard(storage, run_id, s, encoder)
        if run_id == "kept":
            claim(storage, "t", "v1", run_id)
            staged = build_indexes(cfg, storage, prepared, storage.child("snapshots/t/v1"), FULL,
                                   encoder.card.dims, LOCAL)
            commit(storage, "t", "v1", staged.files, {"index": staged.params, "counts": prepared.counts,
                                                      "model": encoder.card.to_dict() | {
                                                          "fingerprint": encoder.card.fingerprint}})
            needed = prepared.counts["chunks"]
    # what a writer killed between its temp file and the rename leaves (tests/integration/test_storage.py kills one)
    [fingerprint] = storage.list("cache/embeddings")
    partition = tmp_path / "store" / "cache" / "embeddings" / fingerprint / storage.list(f"cache/embeddings/"
                                                                                         f"{fingerprint}")[0]
    leftover = partition / f"{next(partition.iterdir()).name}.tmp-{'0' * 32}"
    leftover.write_bytes(b"a complete part, never renamed")
    [dry] = [r for r in collect_cache(storage, dry_run=True) if r.kind == "embeddings"]
    assert dry.kept == needed and dry.dropped > 0 and dry.unfinished_writes == 1 and leftover.exists()
    [done] = [r for r in collect_cache(storage) if r.kind == "embeddings"]
    assert (done.kept, done.dropped, done.unfinished_writes) == (dry.kept, dry.dropped, 1) and not leftover.exists()
    again = prepared_run(config(kept, tmp_path / "store"), storage, "again", encoder)
    assert again.counts["cached"] == again.counts["chunks"]  # everything the snapshot needs is still cached
    assert prepared_run(config(gone, tmp_path / "store"), storage, "gone-again", encoder).counts["cached"] == 0


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
    # another kernel of the same model and precision computes other vectors: it has its own cache (a build's
    # queries are encoded with its kernel, and the metrics must judge those)
    other = load_encoder(ModelConfig(precision="fp32", kernel="fp32-torch"), threads=1)  # the fixture's: fp32-onednn
    assert other.card.fingerprint == encoder.card.fingerprint
    mine = CachedQueries(other, Storage(str(tmp_path)))
    assert mine.prefix != again.prefix
    before = other.tokens_encoded
    mine.encode(queries, kind="query")
    assert other.tokens_encoded > before  # encoded by this kernel, not taken from the other's cache


KEEP, MISFIT = 1000.0, 1.0  # reuse limits that keep any training, and that keep none which fits worse at all


@pytest.mark.parametrize("variants,store,limits,sample,keeps", [
    (["exact", "fp16", "ivfpq", "int8", "int8-ivf", "binary", "binary-ivf", "exact@64"], True, (KEEP, KEEP), 50,
     True),
    (["binary", "exact"], False, (KEEP, KEEP), 0, True),
    (["exact", "ivfpq", "binary-ivf"], True, (KEEP, MISFIT), 50 + 200, False),
    (["exact", "ivfpq", "int8"], True, (MISFIT, KEEP), 50 + 200, False)], ids=[
        "live-codes", "live-codes-no-store", "binary-ivf-misfit", "training-misfit"])
def test_an_incremental_index_stage_takes_kept_rows_codes_from_live_and_writes_a_full_builds_files(
        tmp_path, sample_docs, encoder, monkeypatch, variants, store, limits, sample, keeps):
    """Kept chunks' codes come from the live version's files (flat files by row, IVF lists by list while their
    training is kept: IVF-PQ's, int8's ranges, int8-ivf's, binary-ivf's centroids), so only the redone chunks'
    vectors are read, and of the training sample only the rows a kept training's fit is measured on; every file is
    the one a build that encodes every vector writes, and the drift sums are the same. A training that no longer
    fits is trained anew on the whole sample, and its variant needs every vector."""
    from dataclasses import replace

    from pipeline.index import faiss_ops
    from pipeline.jobs import indexing
    from pipeline.jobs.plan import reusable_training
    from pipeline.snapshots.publishing import commit
    from pipeline.snapshots.snapshot import Snapshot

    monkeypatch.setattr(faiss_ops, "FIT_ROWS", 50)  # a fit measured on the first 50 of the 200 training rows
    docs = [dict(d) for d in sample_docs[:30]]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    cfg, storage = config(corpus, tmp_path / "store"), Storage(str(tmp_path / "store"))
    ivf = cfg.index.ivf.model_copy(update={"max_train_points": 200, "max_reuse_error_ratio": limits[0],
                                           "max_reuse_hamming_ratio": limits[1]})
    cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"variants": variants, "ivf": ivf,
                                                                        "store_fp16": store})})

    def built(run_id: str, version: str, plan: BuildPlan):
        prepared = prepare(cfg, storage, run_id, plan.against, encoder.card, LOCAL)
        for s in prepared.shards:
            embed_shard(storage, run_id, s, encoder)
        claim(storage, "t", version, run_id)
        return prepared, build_indexes(cfg, storage, prepared, storage.child(f"snapshots/t/{version}"), plan,
                                       encoder.card.dims, LOCAL)

    prepared, staged = built("run1", "v1", FULL)
    commit(storage, "t", "v1", staged.files, {"index": staged.params, "chunking": prepared.chunking,
                                              "model": {"fingerprint": encoder.card.fingerprint}})
    docs[3]["text"] += " An added closing sentence changes the last chunk of this document."
    write_jsonl(corpus, docs[:7] + docs[8:] + [sample_docs[30]])  # one edited, one deleted, one added
    live = Snapshot.of(storage, "t", "v1").storage
    plan = BuildPlan(ShardInput(live), "v1", "incremental: test",
                     reusable_training(storage, "t", "v1", encoder.card.fingerprint, prepared.chunking))
    read = []
    with_vectors = indexing.with_vectors
    monkeypatch.setattr(indexing, "with_vectors", lambda *a: read.append(a[-1].height) or with_vectors(*a))
    prepared2, incremental = built("run2", "v2", plan)
    kept = prepared2.counts["chunks_kept"]
    assert 0 < kept < prepared2.counts["chunks"]
    for name in {"ivfpq", "int8", "int8-ivf", "binary-ivf"} & set(variants):  # kinds that keep a training that fits
        training, limit = incremental.params["variants"][name], limits[name == "binary-ivf"]
        assert ("trained_in" in training) == (limit > 1) and training["training"].startswith(
            "reused from version v1" if limit > 1 else "trained on this build's vectors: they fit version v1")
    assert sum(read) == sample + prepared2.counts["chunks"] - (kept if keeps else 0)
    read.clear()
    full = build_indexes(cfg, storage, prepared2, storage.child("snapshots/t/v2-full"),
                         replace(plan, against=FULL.against), encoder.card.dims, LOCAL)
    assert sum(read) == sample + prepared2.counts["chunks"]
    assert incremental.files == full.files and incremental.params == full.params  # every file, byte for byte
    assert incremental.moments.rows == full.moments.rows == prepared2.counts["chunks"]
    for got, want in [(incremental.moments.total, full.moments.total), (incremental.moments.squares,
                                                                       full.moments.squares)]:
        np.testing.assert_array_equal(got, want)


def test_a_reindex_against_live_of_another_model_is_refused_and_one_computed_otherwise_rebuilds(tmp_path):
    """After `migrate` promoted another model, a nightly reindex with the config's old model would rebuild every
    document with it, and either undo the migration through the gate or be refused every night (new documents never
    served): it is refused, saying what to set. The same model computed otherwise (another precision) rebuilds."""
    from pipeline.jobs.plan import plan_build
    from pipeline.snapshots.aliases import promote
    from pipeline.snapshots.publishing import publish

    storage = Storage(str(tmp_path / "store"))
    publish(storage, "t", "v1", {"ids.parquet": b"ids"}, {"model": {"name": "all-mpnet-base-v2", "fingerprint": "m"}})
    promote(storage, "t", "live", "v1", None)
    cfg = parse_config({"index_name": "t", "corpus": {"source": "c.jsonl"}, "storage": {"root": str(tmp_path)},
                        "publish": {"alias": "live"}})
    with pytest.raises(InputError, match=r"reindex of t: the live version v1 was embedded with all-mpnet-base-v2, "
                                         r"not this config's all-MiniLM-L6-v2: a reindex keeps live's model "
                                         r"\(after a migration, set model.name: all-mpnet-base-v2 in the config\)"):
        plan_build(storage, cfg, "fingerprint", {})
    same = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "all-mpnet-base-v2"})})
    plan = plan_build(storage, same, "fingerprint", {})
    assert plan.against.live is None and "computed otherwise" in plan.why
