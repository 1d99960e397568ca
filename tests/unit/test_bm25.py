"""The bm25 variant: built per shard and reduced with corpus-wide statistics, it scores exactly as one bm25s index
built from every text at once; its files are the same bytes however the chunks are sharded, and plain
`bm25s.BM25.load` reads them."""

from __future__ import annotations

import gzip
import json

import bm25s
import numpy as np
import polars as pl
import pytest
import Stemmer

from pipeline.config import Bm25Config
from pipeline.config_loader import parse_config
from pipeline.errors import ConfigError, SnapshotError
from pipeline.index.analyzer import Analyzer
from pipeline.index.bm25 import Bm25Index, Bm25Params, CorpusStatistics, ShardStatistics, score_postings
from pipeline.storage.layout import BM25_FOLDER
from tests.conftest import SAMPLE

QUERIES = ["statins and heart disease", "stem cells in mice", "the of and a", "zzzunknownzzz cancer cancer",
           "Vitamin D deficiency in children"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with gzip.open(SAMPLE / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh][:300]
    return [f"{d['title']} {d['text']}" for d in docs] + ["", "the and of"]  # a chunk with no terms at all


def build(texts: list[str], shards: int) -> Bm25Index:
    """The pipeline's way: each shard counts its terms and statistics, a reduce merges them, each shard's postings
    are scored with the merged statistics, one matrix is assembled in row order."""
    analyzer, params = Analyzer(), Bm25Params()
    terms, tf = analyzer.counts(texts)
    owner = np.random.default_rng(shards).integers(0, shards, len(texts))  # rows scattered over the shards
    frames = [pl.DataFrame({"row": np.flatnonzero(owner == s), "terms": [terms[i] for i in np.flatnonzero(owner == s)],
                            "tf": [tf[i] for i in np.flatnonzero(owner == s)]},
                           schema={"row": pl.Int64, "terms": pl.List(pl.String), "tf": pl.List(pl.UInt32)})
              for s in range(shards)]
    stats = CorpusStatistics.merge(ShardStatistics.of(f["terms"], f["tf"]) for f in frames)
    return Bm25Index.assemble([score_postings(f, stats, params) for f in frames], stats, params, analyzer)


def test_per_shard_build_scores_exactly_as_one_global_bm25s_index(texts):
    ours = build(texts, shards=4)
    reference = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    reference.index(bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False),
                    show_progress=False)
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


def test_sharding_does_not_change_a_single_byte_of_the_files(texts):
    files = build(texts, shards=1).files()
    for shards in (3, 7):
        assert build(texts, shards).files() == files


def test_plain_bm25s_loads_the_files_memory_mapped_and_ranks_alike(texts, tmp_path):
    ours = build(texts, shards=3)
    for name, data in ours.files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    loaded = bm25s.BM25.load(tmp_path / BM25_FOLDER, mmap=True)
    assert isinstance(loaded.scores["data"], np.memmap) and loaded.scores["num_docs"] == len(texts)
    queries = [q for q in QUERIES if ours.analyzer.terms([q])[0]]
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                            show_progress=False)
    docs, scores = loaded.retrieve(tokens, k=5, show_progress=False)
    ours_scores, ours_rows = ours.search(ours.analyzer.terms(queries), 5)
    assert np.array_equal(scores, np.where(ours_rows >= 0, ours_scores, 0))
    # read back through embedpipe too: the same arrays, the analyzer rebuilt from the manifest entry
    sizes = {name: len(data) for name, data in ours.files().items()}
    again = Bm25Index.from_files(tmp_path.joinpath, ours.manifest_params(sizes, _stats(texts)), "t")
    assert isinstance(again.data, np.memmap) and np.array_equal(again.data, ours.data)
    assert again.vocab == ours.vocab and again.analyzer == ours.analyzer


def _stats(texts: list[str]) -> CorpusStatistics:
    terms, tf = Analyzer().counts(texts)
    frame = pl.DataFrame({"terms": terms, "tf": tf}, schema={"terms": pl.List(pl.String), "tf": pl.List(pl.UInt32)})
    return CorpusStatistics.merge([ShardStatistics.of(frame["terms"], frame["tf"])])


def test_search_returns_matching_chunks_only_best_first_ties_by_row():
    index = build(["heart disease", "heart disease", "disease of the heart and lungs", "lungs", "nothing here"], 2)
    scores, rows = index.search([index.analyzer.terms(["heart"])[0], [], index.analyzer.terms(["kidney"])[0]], 4)
    assert rows[0].tolist() == [0, 1, 2, -1]  # 0 and 1 tie: by row; 3 and 4 hold no query term
    assert scores[0, 0] == scores[0, 1] > scores[0, 2] > 0 and np.isneginf(scores[0, 3])
    assert (rows[1:] == -1).all()  # an empty query, an unknown term: nothing


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
