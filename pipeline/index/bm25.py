"""The bm25 variant: Lucene's BM25 over chunks (the same rows as the FAISS indexes), built per shard and reduced
with corpus-wide statistics, saved in bm25s' own file format and searched through bm25s.

    score(q, d) = sum over the terms t of q found in d of  idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))                       (bm25s' "lucene" method)

N, avgdl and df are corpus-wide. Each shard counts its own (`ShardStatistics`: chunks, tokens, df per term);
the reduce step sums them (`CorpusStatistics.merge`) and scores each shard's postings with the sums
(`score_postings`); `write_bm25` lays the scored postings out as one term-major (CSC) matrix in FAISS
row order, a shard at a time, out of core. The scores equal those of one bm25s index built from every text at once
(tests/unit/test_bm25.py), and the files are a pure function of the chunks' terms: sharding, batching and
incremental runs give the same bytes. A reader without embedpipe loads them with `bm25s.BM25.load(folder, mmap=True)`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import bm25s
import numpy as np
import polars as pl

from pipeline.config import BM25, Bm25Config
from pipeline.errors import IndexBuildError, SnapshotError
from pipeline.index.analyzer import Analyzer
from pipeline.storage.layout import BM25_FILES, BM25_FOLDER, bm25_file

METHOD = "lucene"
MERGE_BATCH = 32  # shards' statistics summed at a time


@dataclass(frozen=True)
class ShardStatistics:
    """What one shard contributes to the corpus-wide statistics."""

    chunks: int
    tokens: int  # the sum of its chunks' lengths in terms
    df: pl.DataFrame  # term, df: in how many of its chunks each term occurs

    @classmethod
    def of(cls, terms: pl.Series, tf: pl.Series) -> ShardStatistics:
        """From a shard's chunks: each one's distinct terms (list[str]) and their counts (list[int])."""
        df = terms.explode().drop_nulls().value_counts(name="df").rename({terms.name: "term"})
        tokens = tf.list.sum().cast(pl.Int64).sum()  # counts are UInt32, whose sum wraps past 2^32 terms a shard
        return cls(len(terms), int(tokens or 0), df.with_columns(pl.col("df").cast(pl.Int64)))

    def to_dict(self) -> dict:
        return {"chunks": self.chunks, "tokens": self.tokens}


@dataclass(frozen=True)
class CorpusStatistics:
    chunks: int  # N
    tokens: int
    vocab: pl.DataFrame  # term (sorted), col (its column in the matrix), df, idf (float32)

    @classmethod
    def merge(cls, shards: Iterable[ShardStatistics]) -> CorpusStatistics:
        """The reduce step: sums of the shards' counts; terms sorted, so the columns do not depend on sharding. The
        shards are summed a batch at a time, so the sum holds the vocabulary, not every shard's share of it."""
        n = tokens = 0
        df = pl.DataFrame(schema={"term": pl.String, "df": pl.Int64})
        shards = iter(shards)
        while batch := list(itertools.islice(shards, MERGE_BATCH)):
            n, tokens = n + sum(s.chunks for s in batch), tokens + sum(s.tokens for s in batch)
            df = pl.concat([df, *(s.df for s in batch)]).group_by("term").agg(pl.col("df").sum())
        df = df.sort("term")
        # idf in double precision per term, then float32: exactly as bm25s computes it
        idf = np.array([math.log(1 + (n - d + 0.5) / (d + 0.5)) for d in df["df"].to_list()], dtype=np.float32)
        vocab = df.with_row_index("col").with_columns(pl.col("col").cast(pl.Int64), pl.Series("idf", idf))
        return cls(n, tokens, vocab.select("term", "col", "df", "idf"))

    @property
    def avg_length(self) -> float:
        return self.tokens / self.chunks if self.chunks else 0.0


@dataclass(frozen=True)
class Bm25Params:
    k1: float = 1.2
    b: float = 0.75

    @classmethod
    def of(cls, cfg: Bm25Config) -> Bm25Params:
        return cls(cfg.k1, cfg.b)

    def to_dict(self) -> dict:
        return {"method": METHOD, "k1": self.k1, "b": self.b}


@dataclass(frozen=True)
class Postings:
    """Scored (row, column) cells of the matrix: a shard's share, before assembly."""

    rows: np.ndarray  # int64, FAISS rows
    cols: np.ndarray  # int64, vocabulary columns
    scores: np.ndarray  # float32


def score_postings(chunks: pl.DataFrame, stats: CorpusStatistics, params: Bm25Params) -> Postings:
    """`chunks` (row, terms, tf: one chunk each) scored with the corpus-wide statistics. The arithmetic follows
    bm25s step by step (double precision, then float32), so the scores are bit for bit bm25s' own."""
    length = chunks["tf"].list.sum().fill_null(0).alias("length")
    cells = (chunks.select("row", "terms", "tf", length).explode(["terms", "tf"]).drop_nulls("terms")
             .join(stats.vocab.select(pl.col("term").alias("terms"), "col", "idf"), on="terms", how="left"))
    if cells["col"].null_count():
        missing = cells.filter(pl.col("col").is_null()).row(0, named=True)
        raise IndexBuildError(f"term {missing['terms']!r} of row {missing['row']} is not in the merged statistics; "
                              "expected every shard's terms to be counted in them")
    tf = cells["tf"].to_numpy().astype(np.float32).astype(np.float64)
    lengths = cells["length"].to_numpy().astype(np.float64)
    tfc = tf / (params.k1 * ((1 - params.b) + params.b * lengths / stats.avg_length) + tf)
    scores = (cells["idf"].to_numpy().astype(np.float64) * tfc).astype(np.float32)
    return Postings(cells["row"].to_numpy().astype(np.int64), cells["col"].to_numpy().astype(np.int64), scores)


def _top(scores: np.ndarray, fetch: int) -> np.ndarray:
    """Rows of the `fetch` best positive scores, best first, ties by row."""
    rows = np.flatnonzero(scores > 0)
    if len(rows) > fetch:
        kth = np.partition(scores[rows], len(rows) - fetch)[len(rows) - fetch]
        rows = rows[scores[rows] >= kth]
    return rows[np.lexsort((rows, -scores[rows]))][:fetch]


def write_bm25(folder: Path, shards: Iterable[Postings], stats: CorpusStatistics, params: Bm25Params) -> int:
    """bm25s' five files under `folder` (at their snapshot-relative names), from the shards' scored postings in row
    order (every row of a shard after every row of the shards before it); returns the number of cells.

    The matrix is written out of core, holding the vocabulary and one shard: a shard's df of a term is the number
    of its cells in that term's column, so the merged df gives every column's place in the files before any cell is
    read, and each shard's cells go straight to their columns' next free places in the files, mapped into memory
    for that shard only (what it wrote stays in the page cache, which the kernel writes back and frees as it needs,
    not in the process's memory)."""
    paths = {part: folder / bm25_file(part) for part in BM25_FILES}
    paths["data"].parent.mkdir(parents=True, exist_ok=True)
    indptr = np.zeros(stats.vocab.height + 1, dtype=np.int64)
    np.cumsum(stats.vocab["df"].to_numpy(), out=indptr[1:])
    cells = int(indptr[-1])
    np.save(paths["indptr"], indptr, allow_pickle=False)
    if cells == 0:  # a memory map cannot be empty
        np.save(paths["data"], np.empty(0, np.float32), allow_pickle=False)
        np.save(paths["indices"], np.empty(0, np.int32), allow_pickle=False)
    else:
        for part, dtype in (("data", np.float32), ("indices", np.int32)):  # sized, then filled a shard at a time
            np.lib.format.open_memmap(paths[part], mode="w+", dtype=dtype, shape=(cells,)).flush()
        free = indptr[:-1].copy()  # each column's next free place
        last = -1
        for shard in shards:
            if len(shard.rows) and (start := int(shard.rows.min())) <= last:
                raise IndexBuildError(f"bm25: a shard's rows start at {start}, not after the last shard's {last}; "
                                      "expected the shards in row order")
            last = max(last, int(shard.rows.max(initial=-1)))
            order = np.lexsort((shard.rows, shard.cols))  # column by column, rows ascending
            cols, counts = np.unique(shard.cols[order], return_counts=True)
            if (overfull := free[cols] + counts > indptr[cols + 1]).any():
                raise IndexBuildError(f"bm25: the shards hold more cells than the merged statistics count for "
                                      f"{int(overfull.sum())} terms; expected the statistics of the same chunks")
            # a cell's place: its column's next free place plus its rank within the shard's cells of that column
            first = np.cumsum(counts) - counts
            places = np.arange(len(order)) + np.repeat(free[cols] - first, counts)
            data, indices = (np.load(paths[part], mmap_mode="r+") for part in ("data", "indices"))
            data[places], indices[places] = shard.scores[order], shard.rows[order]
            del data, indices
            free[cols] += counts
        if not np.array_equal(free, indptr[1:]):
            raise IndexBuildError(f"bm25: {int(np.sum(free != indptr[1:]))} terms have fewer cells than the merged "
                                  "statistics count; expected the statistics of the same chunks")
    vocab = dict(zip(stats.vocab["term"].to_list(), stats.vocab["col"].to_list(), strict=True))
    paths["vocab"].write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    bm25s_params = {"k1": params.k1, "b": params.b, "delta": 0.5, "method": METHOD, "idf_method": METHOD,
                    "dtype": "float32", "int_dtype": "int32", "num_docs": stats.chunks, "version": version("bm25s"),
                    "backend": "numpy"}
    paths["params"].write_text(json.dumps(bm25s_params, indent=4), encoding="utf-8")
    return cells


def manifest_entry(params: Bm25Params, analyzer: Analyzer, stats: CorpusStatistics, cells: int,
                   sizes: dict[str, int]) -> dict:
    """The variant's entry in the manifest's "index" section (`sizes`: its files' bytes by name)."""
    size = sum(sizes[bm25_file(p)] for p in BM25_FILES)
    return {"kind": BM25, "unit": "chunk", "folder": BM25_FOLDER, "files": [bm25_file(p) for p in BM25_FILES],
            "scoring": params.to_dict(), "analyzer": analyzer.describe(),
            "statistics": {"chunks": stats.chunks, "avg_length": round(stats.avg_length, 4),
                           "terms": stats.vocab.height, "postings": cells},
            "bytes_per_vector": round(size / max(stats.chunks, 1)),
            "reader": f"bm25s.BM25.load('<version>/{BM25_FOLDER}', mmap=True); queries analysed as 'analyzer' says"}


@dataclass(frozen=True)
class Bm25Index:
    """A term-major (CSC) matrix of precomputed BM25 scores, rows = chunks in FAISS row order, as bm25s holds it;
    read from the files `write_bm25` wrote."""

    data: np.ndarray  # float32, the scores, column by column
    indices: np.ndarray  # int32, each score's row
    indptr: np.ndarray  # int64, column boundaries (len(vocab) + 1)
    vocab: dict[str, int]  # term -> column
    num_docs: int
    params: Bm25Params
    analyzer: Analyzer

    @classmethod
    def from_files(cls, path: Callable[[str], Path], params: dict, where: str) -> Bm25Index:
        """From a snapshot's files (`path`: snapshot-relative name -> a verified local file) and manifest entry.
        Arrays are memory-mapped, with allow_pickle=False."""
        def array(part: str) -> np.ndarray:
            return np.load(path(bm25_file(part)), mmap_mode="r", allow_pickle=False)

        def read(name: str) -> bytes:
            return path(name).read_bytes()

        saved = json.loads(read(bm25_file("params")))
        scoring = params.get("scoring") or {}
        if saved.get("method") != METHOD or scoring.get("method") != METHOD:
            raise SnapshotError(f"{where}: BM25 method {saved.get('method')!r}, expected {METHOD!r}")
        index = cls(array("data"), array("indices"), array("indptr"), json.loads(read(bm25_file("vocab"))),
                    int(saved["num_docs"]), Bm25Params(float(saved["k1"]), float(saved["b"])),
                    Analyzer.from_dict(params.get("analyzer") or {}, where))
        if (index.params.k1, index.params.b) != (scoring.get("k1"), scoring.get("b")):
            raise SnapshotError(f"{where}: its files say k1={index.params.k1}, b={index.params.b}; the manifest "
                                f"says {scoring}")
        if len(index.indptr) != len(index.vocab) + 1 or not len(index.data) == len(index.indices) == index.indptr[-1]:
            raise SnapshotError(f"{where}: inconsistent arrays ({len(index.vocab)} terms, {len(index.indptr)} column "
                                f"pointers, {len(index.data)} scores, {len(index.indices)} rows)")
        return index

    # --- search ------------------------------------------------------------------------------------------------

    def _scorer(self) -> bm25s.BM25:
        """bm25s' retriever over these arrays (what bm25s.BM25.load builds from the files)."""
        scorer = bm25s.BM25(k1=self.params.k1, b=self.params.b, method=METHOD)
        scorer.scores = {"data": self.data, "indices": self.indices, "indptr": self.indptr, "num_docs": self.num_docs}
        scorer.vocab_dict, scorer.nonoccurrence_array = self.vocab, None
        return scorer

    def search(self, queries: list[list[str]], fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the best `fetch` chunks per analysed query, best first; rows -1 (scores -inf) pad
        where fewer chunks hold any query term."""
        fetch = max(1, min(fetch, self.num_docs))
        scores = np.full((len(queries), fetch), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), fetch), -1, dtype=np.int64)
        scorer = self._scorer()
        for i, terms in enumerate(queries):
            ids = [self.vocab[t] for t in terms if t in self.vocab]  # a repeated term counts again, as in bm25s
            if not ids:
                continue
            s = scorer.get_scores_from_ids(ids)
            top = _top(s, fetch)
            scores[i, :len(top)], rows[i, :len(top)] = s[top], top
        return scores, rows
