"""Search every index variant with queries encoded by the model that built it; collapse chunks to documents.

A search *mode* is a variant name, optionally with a suffix:
    <variant>            the variant's own scoring (binary: Hamming candidates re-ranked by the float query
                         against the sign bits, which needs nothing but the codes)
    <variant>+rescore    the top k x rescore_factor candidates re-scored with the stored fp16 vectors
    <binary>+hamming     plain symmetric Hamming distance (reported to show why it is not the default)
    bm25                 the bm25 variant: the query analysed as the chunks were, Lucene BM25 scores
    hybrid:<dense mode>  the dense mode's and bm25's documents fused (pipeline/quality/fusion.py): convex
                         fusion of min-max normalised scores; hybrid-rrf:<dense mode> reciprocal-rank fusion
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.config import BM25
from pipeline.corpus.records import lone_surrogate, visible
from pipeline.errors import InputError, ModelError, SnapshotError
from pipeline.index.bm25 import Bm25Index
from pipeline.index.faiss_ops import faiss_threads
from pipeline.index.plan import RESCORE_FACTOR_PER_1M
from pipeline.index.ranking import rerank
from pipeline.index.representations import rescore
from pipeline.index.variants import Variant, VariantSpec
from pipeline.models.encoder import Encoder, encoder_for_card
from pipeline.quality.fusion import RRF, Fusion, Ranked, fuse, parse_hybrid
from pipeline.quality.metrics import Qrels, Run, by_rank, evaluate_run, overlap_at_k, top_k
from pipeline.snapshots.snapshot import Snapshot

MAX_CHUNKS_FETCHED_PER_DOC = 10  # bounds the over-fetch used to fill k distinct documents
FLOAT_STORE_MAX_BYTES = 128 << 20  # fp16 stores up to this size as float32 are converted once, not per gather
BINARY_ONE_THREAD_BELOW = 1 << 20  # binary indexes with fewer codes are searched on one thread (see _ranked)


@dataclass(frozen=True)
class Hit:
    doc_id: str
    title: str
    score: float
    chunk_id: str
    start: int
    end: int


@dataclass(frozen=True)
class QueryCheck:
    """A query's length in the model's tokens, against the most the model reads (the rest is cut off)."""

    tokens: int
    limit: int

    @property
    def truncated(self) -> bool:
        return self.tokens > self.limit

    def note(self) -> str | None:
        return (f"the query has {self.tokens:,} tokens; the model reads the first {self.limit} (truncated to "
                f"{self.limit} tokens)") if self.truncated else None


def refuse_bad_query(query: object) -> None:
    """An empty query would still "match" something; one with a lone surrogate would fail deep in the tokenizer."""
    if isinstance(query, str) and (at := lone_surrogate(query)) is not None:  # before: a surrogate is invisible
        raise InputError(f"the query is not valid Unicode: a lone surrogate at character {at}; expected text "
                         "that UTF-8 can encode")
    if not isinstance(query, str) or not visible(query):
        raise InputError(f"query {query!r} is empty: expected some text to search for")


def check_query(encoder: Encoder, query: str) -> QueryCheck:
    """Refuse a bad query; measure a good one against the model's token limit."""
    refuse_bad_query(query)
    return QueryCheck(encoder.tokenizer.count(encoder.card.query_prefix + query), encoder.card.max_tokens)


def _lists(scores: np.ndarray, rows: np.ndarray) -> Iterator[tuple[list[float], list[int]]]:
    """Each query's (scores, rows) as Python lists, without the -1 padding."""
    for ss, rr, n in zip(scores.tolist(), rows.tolist(), (rows >= 0).sum(1).tolist(), strict=True):
        yield ss[:n], rr[:n]


def evaluated_modes(variants: list[VariantSpec], rescore: bool, lexical: bool) -> list[str]:
    """The search modes a build evaluates (and a gate can judge) for its vector variants, with an fp16 store
    (`rescore`) and bm25 (`lexical`) or not: each variant's own, +rescore (unless lossless), +hamming for binary
    ones; with bm25, bm25 itself, hybrid over each dense mode (but plain Hamming), and reciprocal-rank fusion over
    the best one as a comparison."""
    out = []
    for spec in variants:
        out += [f"{spec.name}+hamming"] if spec.kind.binary else []
        out.append(spec.name)
        out += [f"{spec.name}+rescore"] if rescore and not spec.lossless else []
    if not lexical:
        return out
    dense = [m for m in out if not m.endswith("+hamming")]
    reference = "exact" if "exact" in dense else dense[0]
    return out + [BM25] + [f"hybrid:{m}" for m in dense] + [f"{RRF}:{reference}"]


def variant_of(mode: str) -> str:
    """The variant whose manifest entry reports a mode's quality: bm25 for bm25 and hybrid modes (they need it;
    the dense side's bytes are its own variant's), else the variant the mode searches."""
    return BM25 if mode == BM25 or parse_hybrid(mode) else mode.partition("+")[0]


class Queries:
    """A batch of queries as each side needs it, made once: vectors for the dense modes (encoded on first use
    unless given), terms for bm25 (analysed on first use)."""

    def __init__(self, searcher: Searcher, texts: list[str] | None = None, vectors: np.ndarray | None = None) -> None:
        self._searcher, self.texts = searcher, texts
        self._vectors = None if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32)
        self._terms: list[list[str]] | None = None

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.ascontiguousarray(self._searcher.encoder.encode(self.texts, kind="query"),
                                                 dtype=np.float32)
        return self._vectors

    @property
    def terms(self) -> list[list[str]]:
        if self._terms is None:
            if self.texts is None:
                raise SnapshotError("bm25 and hybrid modes analyse the query text; search with the texts "
                                    "(Searcher.search), not vectors alone")
            self._terms = self._searcher.lexical.analyzer.terms(self.texts)
        return self._terms


class Searcher:
    def __init__(self, variants: Mapping[str, Variant], ids: pl.DataFrame, encoder: Encoder,
                 max_chunks_per_doc: int = 1, fp16: np.ndarray | None = None,
                 rescore_factor: int = RESCORE_FACTOR_PER_1M, lexical: Bm25Index | None = None,
                 fusion: Fusion | None = None) -> None:
        dims = encoder.card.dims
        for name, v in variants.items():
            if v.dims != (v.spec.dims or dims):
                raise ModelError(f"index {name!r} holds {v.dims}-dim vectors but model {encoder.card.name} gives "
                                 f"{dims}; expected the model the index was built with")
            if v.index.ntotal != ids.height:
                raise SnapshotError(f"index {name!r} has {v.index.ntotal} vectors but the id table has {ids.height}")
        if fp16 is not None and fp16.shape != (ids.height, dims):
            raise SnapshotError(f"rescoring store has shape {fp16.shape}; expected ({ids.height}, {dims})")
        if lexical is not None and lexical.num_docs != ids.height:
            raise SnapshotError(f"the bm25 index has {lexical.num_docs} chunks but the id table has {ids.height}")
        self.lexical, self.fusion = lexical, fusion or Fusion()
        # Converting gathered fp16 candidates costs more than their products, so a small store is converted once.
        small = fp16 is not None and 2 * fp16.nbytes <= FLOAT_STORE_MAX_BYTES
        self.store = fp16.astype(np.float32) if small else fp16  # the rescoring vectors
        self.variants, self.encoder, self.rescore_factor = dict(variants), encoder, rescore_factor
        self.rows = ids.select("doc_id", "title", "chunk_id", "start", "end").rows()
        self.doc_ids = ids["doc_id"].to_list()
        self.doc_codes = ids["doc_id"].rank("dense").to_numpy().astype(np.int64)  # row -> document number
        self.max_chunks = int(np.bincount(self.doc_codes).max()) if ids.height else 1  # chunks of the largest doc
        self.fetch_factor = max(1, min(max_chunks_per_doc, MAX_CHUNKS_FETCHED_PER_DOC))

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, encoder: Encoder | None = None, fusion: Fusion | None = None
                      ) -> Searcher:
        """`fusion`: hybrid search with other settings than those the manifest records (e.g. a tuned weight)."""
        card = snapshot.model_card
        if encoder is None:
            encoder = encoder_for_card(card, snapshot.query_kernel)
        elif not encoder.card.same_model(card):
            raise ModelError(f"snapshot {snapshot.version} was built with {card.name} ({card.fingerprint}); "
                             f"refusing to search it with {encoder.card.name} ({encoder.card.fingerprint})")
        indexes = {v: snapshot.index(v) for v in snapshot.vector_variants}
        return cls.build(indexes, snapshot.manifest["index"], snapshot.ids, encoder,
                         snapshot.manifest["counts"]["max_chunks_per_doc"], snapshot.rescore_store(), snapshot.bm25(),
                         fusion)

    @classmethod
    def build(cls, indexes: Mapping[str, object], index_params: dict, ids: pl.DataFrame, encoder: Encoder,
              max_chunks_per_doc: int, fp16: np.ndarray | None, lexical: Bm25Index | None = None,
              fusion: Fusion | None = None) -> Searcher:
        """From indexes and the manifest's "index" section (a loaded snapshot, or indexes just built)."""
        variants = {name: Variant.load(name, ix, index_params["variants"][name]) for name, ix in indexes.items()}
        factor = (index_params.get("rescore") or {}).get("factor", RESCORE_FACTOR_PER_1M)
        return cls(variants, ids, encoder, max_chunks_per_doc, fp16, factor, lexical,
                   fusion or Fusion.from_dict(index_params.get("fusion")))

    def modes(self) -> list[str]:
        """Every search mode worth reporting for this snapshot's variants (evaluated_modes)."""
        return evaluated_modes([v.spec for v in self.variants.values()], self.store is not None,
                               self.lexical is not None)

    def search_vectors(self, vectors: np.ndarray, k: int, mode: str = "exact") -> list[list[Hit]]:
        """Dense modes, for queries already encoded (bm25 and hybrid modes need the texts: `search`)."""
        return self._hits(self._ranked(Queries(self, vectors=vectors), k, mode))

    def _hits(self, ranked: Ranked) -> list[list[Hit]]:
        return [[self._hit(s, r) for s, r in zip(ss, rr, strict=True)] for ss, rr in _lists(*ranked)]

    def _hit(self, score: float, row: int) -> Hit:
        doc_id, title, chunk_id, start, end = self.rows[row]
        return Hit(doc_id, title, score, chunk_id, start, end)

    def _ranked(self, queries: Queries, k: int, mode: str, memo: dict | None = None) -> Ranked:
        """(scores, rows) per query: the best chunk of each of up to k documents, best first, rows -1 after.
        `memo` keeps each (mode, k)'s ranking and seconds, so hybrid modes reuse the sides already ranked; a
        hybrid mode's seconds are its fusion's plus both sides'."""
        memo = {} if memo is None else memo
        if (mode, k) in memo:
            return memo[mode, k][0]
        start = time.perf_counter()
        if hybrid := parse_hybrid(mode):
            how, dense = hybrid
            self._check_lexical(mode)
            if dense == BM25 or parse_hybrid(dense):
                raise SnapshotError(f"mode {mode!r}: expected a dense mode after {how}:, e.g. {how}:exact")
            depth = max(k, self.fusion.depth)
            sides = [self._ranked(queries, depth, side, memo) for side in (dense, BM25)]
            start = time.perf_counter()
            ranked = fuse(*sides, self.doc_codes, k, how, self.fusion)
            seconds = time.perf_counter() - start + memo[dense, depth][1] + memo[BM25, depth][1]
        elif mode == BM25:
            self._check_lexical(mode)
            terms = queries.terms
            start = time.perf_counter()  # like query encoding, query analysis is not search time
            fetch = min(self.lexical.num_docs, k * self.max_chunks)  # every chunk of k documents: exact collapse
            ranked = self._collapse(*self.lexical.search(terms, fetch), k)
            seconds = time.perf_counter() - start
        else:
            ranked = self._ranked_dense(queries, k, mode)
            seconds = time.perf_counter() - start
        memo[mode, k] = (ranked, seconds)
        return ranked

    def _check_lexical(self, mode: str) -> None:
        if self.lexical is None:
            raise SnapshotError(f"mode {mode!r}: this snapshot has no bm25 variant; available: {self.modes()}")

    def _ranked_dense(self, queries: Queries, k: int, mode: str) -> Ranked:
        name, _, suffix = mode.partition("+")
        if name not in self.variants or suffix not in ("", "rescore", "hamming"):
            raise SnapshotError(f"no search mode {mode!r}; available: {self.modes()}")
        variant = self.variants[name]
        if suffix == "hamming" and not variant.spec.kind.binary:
            raise SnapshotError(f"mode {mode!r}: +hamming applies to binary variants only")
        if suffix == "rescore" and self.store is None:
            raise SnapshotError(f"mode {mode!r}: this snapshot stores no fp16 vectors to rescore with")
        q = queries.vectors
        widen = self.rescore_factor if suffix == "rescore" or (variant.spec.kind.binary and not suffix) else 1
        fetch = min(variant.index.ntotal, k * self.fetch_factor * widen)
        # FAISS's Hamming search (also binary-ivf's coarse step) forks and joins its OpenMP team per 32 queries:
        # with few codes each join waits longer than the work, worst when another process holds a core and
        # the join waits on a descheduled thread. 300 SciFact queries on binary, machine shared with a benchmark:
        # 0.23 s on 2 threads, 0.011 s on one (under a light load: 0.007 vs 0.010). Float indexes gain from threads.
        small_binary = variant.spec.kind.binary and variant.index.ntotal < BINARY_ONE_THREAD_BELOW
        # Valid rows come first (FAISS pads with -1), so the best k x max_chunks rows hold k documents if any do.
        keep = k * self.max_chunks
        with faiss_threads(1 if small_binary else None):
            # Rescoring re-ranks the candidates anyway, so binary candidates skip the asymmetric re-rank.
            scores, rows = variant.candidates(q, fetch, suffix in ("hamming", "rescore"), keep)
        if suffix == "rescore":
            bytes_per_candidate = q.shape[1] * (4 if self.store.dtype == np.float32 else 6)  # + fp16 before conversion
            scores, rows = rerank(rows, lambda sl, r: rescore(q[sl], r, self.store), bytes_per_candidate, keep)
        return self._collapse(scores[:, :keep], rows[:, :keep], k)

    def _collapse(self, scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Keep each document's first (best) chunk and each query's first k documents; rows -1 pad the rest."""
        valid = rows >= 0
        codes = np.where(valid, self.doc_codes[rows], -1)
        order = np.argsort(codes, axis=1, kind="stable")  # each document's rows together, in rank order
        grouped = np.take_along_axis(codes, order, 1)
        repeat = np.zeros(rows.shape, dtype=bool)
        repeat[:, 1:] = grouped[:, 1:] == grouped[:, :-1]
        first = np.empty_like(repeat)
        np.put_along_axis(first, order, ~repeat, 1)
        first &= valid
        pick = np.argsort(~first, axis=1, kind="stable")[:, :k]  # each document's first row, in rank order
        kept = np.take_along_axis(first, pick, 1)
        return (np.where(kept, np.take_along_axis(scores, pick, 1), -np.inf),
                np.where(kept, np.take_along_axis(rows, pick, 1), -1))

    def search(self, queries: list[str], k: int = 10, mode: str = "exact",
               vectors: np.ndarray | None = None) -> list[list[Hit]]:
        """Hits per query; `vectors`, where given, are the queries already encoded (`encode`: a service encodes
        several requests' queries in one pass)."""
        for query in queries:
            refuse_bad_query(query)
        return self._hits(self._ranked(Queries(self, texts=list(queries), vectors=vectors), k, mode))

    def encode(self, queries: list[str]) -> np.ndarray:
        """The queries' vectors, as the dense modes search with them."""
        return Queries(self, texts=list(queries)).vectors

    def rankings(self, texts: list[str], k: int, modes: list[str]) -> dict[str, Ranked]:
        """Each mode's (scores, rows) for `texts`, the sides of hybrid modes ranked once (weight tuning)."""
        batch, memo = Queries(self, texts=texts), {}
        return {mode: self._ranked(batch, k, mode, memo) for mode in modes}

    def run_of(self, qids: list[str], ranked: Ranked) -> Run:
        """query id -> doc id -> score. Straight from the arrays: no Hit objects, whose numbers would trigger full
        GC passes over the model's objects (~0.25 s each on SciFact)."""
        return {q: {self.doc_ids[r]: s for s, r in zip(ss, rr, strict=True)}
                for q, (ss, rr) in zip(qids, _lists(*ranked), strict=True)}

    def evaluate(self, queries: Mapping[str, str], qrels: Qrels, k: int = 100, modes: list[str] | None = None,
                 runs: dict[str, Run] | None = None) -> dict[str, dict[str, float]]:
        """Per mode: nDCG@10, MAP@10, Recall@10/100, MRR@10, ms/query; beside `exact`, Recall@10 against it
        and nDCG@10 retention. `runs`, when given, receives each mode's run (for drift statistics)."""
        qids = [q for q in qrels if q in queries]
        if not qids:
            raise SnapshotError("none of the judged query ids are in the queries file; expected overlapping ids")
        modes = modes or self.modes()
        batch, memo = Queries(self, texts=[queries[q] for q in qids]), {}
        if any(m != BM25 for m in modes):
            _ = batch.vectors  # encoded before timing: a query's encoding is not search time
        runs, report = {} if runs is None else runs, {}
        for mode in modes:
            scores, rows = self._ranked(batch, k, mode, memo)
            ms = memo[mode, k][1] * 1000 / len(qids)
            runs[mode] = self.run_of(qids, (scores, rows))
            report[mode] = {m: round(v, 5) for m, v in evaluate_run(qrels, by_rank(runs[mode])).items()}
            report[mode] |= {"queries": len(qids), "ms_per_query": round(ms, 3)}
        if "exact" in runs:
            exact_top = top_k(runs["exact"], 10)  # cut once, not per mode
            for mode, run in runs.items():
                if mode != "exact":
                    report[mode]["recall@10_vs_exact"] = round(overlap_at_k(run, exact_top, 10), 5)
                    report[mode]["ndcg@10_retention"] = round(report[mode]["ndcg@10"] / report["exact"]["ndcg@10"], 5) \
                        if report["exact"]["ndcg@10"] else 0.0
        return report
