"""The bm25 variant: built per shard and reduced with corpus-wide statistics, it scores exactly as one bm25s index
built from every text at once; its files are the same bytes however the chunks are sharded, and plain
`bm25s.BM25.load` reads them."""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import bm25s
import numpy as np
import polars as pl
import pytest
import Stemmer

from pipeline.config import Bm25Config
from pipeline.config_loader import parse_config
from pipeline.errors import ConfigError, IndexBuildError, SnapshotError
from pipeline.index.analyzer import Analyzer
from pipeline.index.bm25 import (
    Bm25Index,
    Bm25Params,
    CorpusStatistics,
    ShardStatistics,
    manifest_entry,
    score_postings,
    write_bm25,
)
from pipeline.storage.layout import BM25_FILES, BM25_FOLDER, bm25_file
from tests.conftest import SAMPLE

QUERIES = ["statins and heart disease", "stem cells in mice", "the of and a", "zzzunknownzzz cancer cancer",
           "Vitamin D deficiency in children"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with gzip.open(SAMPLE / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh][:300]
    return [f"{d['title']} {d['text']}" for d in docs] + ["", "the and of"]  # a chunk with no terms at all


def build(texts: list[str], shards: int, folder: Path) -> Bm25Index:
    """The pipeline's way: each shard counts its terms and statistics, a reduce merges them, each shard's postings
    are scored with the merged statistics and written into the matrix a shard at a time (files under `folder`), and the
    files are read back as a snapshot's are."""
    analyzer, params = Analyzer(), Bm25Params()
    terms, tf = analyzer.counts(texts)
    # shards are runs of rows in order, as the index stage lays them out (jobs/indexing.py row_layout); random sizes
    owner = np.sort(np.random.default_rng(shards).integers(0, shards, len(texts)))
    frames = [pl.DataFrame({"row": np.flatnonzero(owner == s), "terms": [terms[i] for i in np.flatnonzero(owner == s)],
                            "tf": [tf[i] for i in np.flatnonzero(owner == s)]},
                           schema={"row": pl.Int64, "terms": pl.List(pl.String), "tf": pl.List(pl.UInt32)})
              for s in range(shards)]
    stats = CorpusStatistics.merge(ShardStatistics.of(f["terms"], f["tf"]) for f in frames)
    cells = write_bm25(folder, (score_postings(f, stats, params) for f in frames), stats, params)
    sizes = {bm25_file(p): folder.joinpath(bm25_file(p)).stat().st_size for p in BM25_FILES}
    return Bm25Index.from_files(folder.joinpath, manifest_entry(params, analyzer, stats, cells, sizes), "test")


def nfkc(texts: list[str]) -> list[str]:
    """As the manifest's analyzer says a reader without embedpipe prepares texts for bm25s.tokenize."""
    return [unicodedata.normalize("NFKC", t) for t in texts]


def files(folder: Path) -> dict[str, bytes]:
    return {bm25_file(p): folder.joinpath(bm25_file(p)).read_bytes() for p in BM25_FILES}


def test_per_shard_build_scores_exactly_as_one_global_bm25s_index(texts, tmp_path):
    ours = build(texts, 4, tmp_path)
    reference = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    reference.index(bm25s.tokenize(nfkc(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"),
                                   show_progress=False), show_progress=False)
    scorer = ours._scorer()
    for query in QUERIES:
        terms = ours.analyzer.terms([query])[0]
        known = [t for t in terms if t in ours.vocab]
        assert [t for t in terms if t in reference.vocab_dict] == known
        got = scorer.get_scores_from_ids([ours.vocab[t] for t in known]) if known else np.zeros(len(texts))
        want = reference.get_scores(terms) if terms else np.zeros(len(texts))
        assert np.array_equal(got, want), query  # bit for bit, not just close
    # the whole matrix, cell by cell, under bm25s' own column numbering
    cols = [ours.vocab[t] for t in sorted(ours.vocab)]
    theirs = [reference.vocab_dict[t] for t in sorted(ours.vocab)]

    def dense(data, indices, indptr, order) -> np.ndarray:
        m = np.zeros((len(texts), len(order)), dtype=np.float32)
        for j, c in enumerate(order):
            m[indices[indptr[c]:indptr[c + 1]], j] = data[indptr[c]:indptr[c + 1]]
        return m

    s = reference.scores
    assert np.array_equal(dense(ours.data, ours.indices, ours.indptr, cols),
                          dense(s["data"], s["indices"], s["indptr"], theirs))


def test_sharding_does_not_change_a_single_byte_of_the_files(texts, tmp_path):
    build(texts, 1, tmp_path / "1")
    for shards in (3, 7):
        build(texts, shards, tmp_path / str(shards))
        assert files(tmp_path / str(shards)) == files(tmp_path / "1")


def test_plain_bm25s_loads_the_files_memory_mapped_and_ranks_alike(texts, tmp_path):
    ours = build(texts, 3, tmp_path)
    loaded = bm25s.BM25.load(tmp_path / BM25_FOLDER, mmap=True)
    assert isinstance(loaded.scores["data"], np.memmap) and loaded.scores["num_docs"] == len(texts)
    queries = [q for q in QUERIES if ours.analyzer.terms([q])[0]]
    tokens = bm25s.tokenize(nfkc(queries), stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                            show_progress=False)
    docs, scores = loaded.retrieve(tokens, k=5, show_progress=False)
    ours_scores, ours_rows = ours.search(ours.analyzer.terms(queries), 5)
    assert np.array_equal(scores, np.where(ours_rows >= 0, ours_scores, 0))
    # embedpipe reads them memory-mapped too, the analyzer rebuilt from the manifest entry
    assert isinstance(ours.data, np.memmap) and ours.analyzer == Analyzer()
    assert np.array_equal(ours.data, loaded.scores["data"]) and ours.vocab == loaded.vocab_dict


def test_search_returns_matching_chunks_only_best_first_ties_by_row(tmp_path):
    index = build(["heart disease", "heart disease", "disease of the heart and lungs", "lungs", "nothing here"], 2,
                  tmp_path)
    scores, rows = index.search([index.analyzer.terms(["heart"])[0], [], index.analyzer.terms(["kidney"])[0]], 4)
    assert rows[0].tolist() == [0, 1, 2, -1]  # 0 and 1 tie: by row; 3 and 4 hold no query term
    assert scores[0, 0] == scores[0, 1] > scores[0, 2] > 0 and np.isneginf(scores[0, 3])
    assert (rows[1:] == -1).all()  # an empty query, an unknown term: nothing


def test_the_matrix_is_refused_when_shards_come_out_of_row_order_or_disagree_with_the_statistics(tmp_path):
    """The writer places each shard's cells by the merged df alone, so it checks what that relies on."""
    analyzer, params = Analyzer(), Bm25Params()
    terms, tf = analyzer.counts(["heart disease", "lungs and heart", "kidney stones", "heart"])
    frames = [pl.DataFrame({"row": rows, "terms": [terms[i] for i in rows], "tf": [tf[i] for i in rows]},
                           schema={"row": pl.Int64, "terms": pl.List(pl.String), "tf": pl.List(pl.UInt32)})
              for rows in ([0, 1], [2, 3])]
    stats = CorpusStatistics.merge(ShardStatistics.of(f["terms"], f["tf"]) for f in frames)
    scored = [score_postings(f, stats, params) for f in frames]
    assert write_bm25(tmp_path / "ok", scored, stats, params) == 7  # one cell per (chunk, distinct term)
    with pytest.raises(IndexBuildError, match="not after the last shard's 3; expected the shards in row order"):
        write_bm25(tmp_path / "reversed", scored[::-1], stats, params)
    with pytest.raises(IndexBuildError, match="fewer cells than the merged statistics count"):
        write_bm25(tmp_path / "lost", scored[:1], stats, params)  # a shard's cells missing
    extra = score_postings(frames[1].with_columns(pl.col("row") + 2), stats, params)  # kidney, stone, heart again
    with pytest.raises(IndexBuildError, match="more cells than the merged statistics count for 3 terms"):
        write_bm25(tmp_path / "extra", [*scored, extra], stats, params)


def test_a_shards_statistics_count_past_2_to_the_32_terms_and_a_stale_term_is_named_with_its_row():
    schema = {"row": pl.Int64, "terms": pl.List(pl.String), "tf": pl.List(pl.UInt32)}
    big = pl.DataFrame({"row": [0, 1], "terms": [["a"], ["b"]], "tf": [[3_000_000_000], [3_000_000_000]]}, schema)
    assert ShardStatistics.of(big["terms"], big["tf"]).tokens == 6_000_000_000  # UInt32 wrapped to 1,705,032,704
    known = pl.DataFrame({"row": [0], "terms": [["heart"]], "tf": [[1]]}, schema)
    stats = CorpusStatistics.merge([ShardStatistics.of(known["terms"], known["tf"])])
    stale = pl.DataFrame({"row": [0, 7], "terms": [["heart"], ["kidney"]], "tf": [[1], [2]]}, schema)
    with pytest.raises(IndexBuildError, match="term 'kidney' of row 7 is not in the merged statistics"):
        score_postings(stale, stats, Bm25Params())


def test_analyzer_stems_drops_stop_words_and_is_recorded_whole():
    analyzer = Analyzer.of(Bm25Config())
    assert analyzer.terms(["The studies of running mice", "a"]) == [["studi", "run", "mice"], []]
    assert analyzer.counts(["cells cell CELL of"]) == ([["cell"]], [[3]])
    recorded = analyzer.describe()
    assert recorded["stopwords"] == "en" and recorded["stemmer"] == "english" and recorded["libraries"]["bm25s"]
    assert Analyzer.from_dict(recorded, "t") == analyzer
    assert Analyzer(stemmer=None).fingerprint != analyzer.fingerprint
    with pytest.raises(SnapshotError, match="stop word list differs"):
        Analyzer.from_dict({**recorded, "stopwords_sha256": "0" * 64}, "t")
    with pytest.raises(ConfigError, match="index.bm25.stemmer 'klingon': expected a Snowball language"):
        Analyzer.of(Bm25Config(stemmer="klingon"))


def test_a_word_matches_its_query_however_its_accents_or_width_were_encoded():
    """An accent stored as its own combining mark (NFD: macOS, some PDF extractors) split the word, since \\w does not
    match the mark; a full-width word was another term. NFKC first: one term either way. A manifest from before it
    analyses queries as its chunks were (no normalisation)."""
    analyzer = Analyzer(stemmer=None, stopwords="none")
    decomposed, typed = unicodedata.normalize("NFD", "résumé café"), "résumé café"
    assert decomposed != typed and analyzer.terms([decomposed, typed]) == [["résumé", "café"]] * 2
    assert analyzer.terms(["Ａｓｐｉｒｉｎ"]) == [["aspirin"]]
    old = {k: v for k, v in analyzer.describe().items() if k != "normalize"}
    assert Analyzer.from_dict(old, "t").terms([decomposed]) == [["re", "sume", "cafe"]]
    assert Analyzer.from_dict(old, "t").fingerprint != analyzer.fingerprint


def test_config_accepts_bm25_beside_vector_variants_only():
    base = {"index_name": "x", "corpus": {"source": "a"}}
    cfg = parse_config({**base, "index": {"variants": ["exact", "bm25"], "fusion": {"weight": 0.3}}}).index
    assert cfg.lexical and cfg.vector_variants == ["exact"] and cfg.fusion.weight == 0.3 and cfg.bm25.k1 == 1.2
    with pytest.raises(ConfigError, match="at least one vector variant beside bm25"):
        parse_config({**base, "index": {"variants": ["bm25"]}})
    with pytest.raises(ConfigError, match=r"index\.fusion\.weight"):
        parse_config({**base, "index": {"variants": ["exact", "bm25"], "fusion": {"weight": 1.5}}})
    with pytest.raises(ConfigError, match=r"index\.variants\.1"):
        parse_config({**base, "index": {"variants": ["exact", "bm25@64"]}})
