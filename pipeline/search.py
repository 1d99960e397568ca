"""Search every index variant with queries encoded by the model that built it; collapse chunks to documents.

A search *mode* is a variant name, optionally with a suffix:
    <variant>            the variant's own scoring (binary: Hamming candidates re-ranked by the float query
                         against the sign bits, which needs nothing but the codes)
    <variant>+rescore    the top k x rescore_factor candidates re-scored with the stored fp16 vectors
    <binary>+hamming     plain symmetric Hamming distance (reported to show why it is not the default)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl

from pipeline.encoder import Encoder, encoder_for_card
from pipeline.errors import InputError, ModelError, SnapshotError
from pipeline.evaluation import Qrels, Run, evaluate_run, overlap_at_k, top_k
from pipeline.representations import Int8Ranges, asymmetric_binary_scores, matryoshka, pack_signs, rescore
from pipeline.snapshot import Snapshot
from pipeline.variants import VariantSpec

MAX_CHUNKS_FETCHED_PER_DOC = 10  # bounds the over-fetch used to fill k distinct documents
RERANK_BLOCK_BYTES = 8 << 20  # what one block of queries gathers to re-rank (fastest at 1-8 MiB: caches)
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


def check_query(encoder: Encoder, query: str) -> QueryCheck:
    """Refuse an empty query (it would still "match" something); measure it against the model's token limit."""
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"query {query!r} is empty: expected some text to search for")
    ids = encoder.tokenizer(encoder.card.query_prefix + query, verbose=False)["input_ids"]
    return QueryCheck(len(ids), encoder.card.max_tokens)


@dataclass(frozen=True)
class Variant:
    """A loaded index with what its query side needs: int8 ranges, binary codes."""

    spec: VariantSpec
    index: object
    int8: Int8Ranges | None = None
    codes: np.ndarray | None = None

    @classmethod
    def load(cls, name: str, index, params: dict) -> Variant:
        spec = VariantSpec.parse(name)
        int8 = codes = None
        if spec.kind.startswith("int8"):
            int8 = Int8Ranges.from_dict(params.get("int8_ranges"), f"variant {name}")
            sq = faiss.downcast_index(faiss.extract_index_ivf(index) if spec.kind == "int8-ivf" else index).sq
            if not np.allclose(Int8Ranges.from_index(sq).vmin, int8.vmin):
                raise SnapshotError(f"variant {name}: the manifest's int8 ranges differ from the index's own")
        if spec.binary:
            if spec.kind == "binary-ivf":
                index.make_direct_map()
            codes = index.reconstruct_n(0, index.ntotal)
        return cls(spec, index, int8, codes)

    @property
    def dims(self) -> int:
        return self.index.d

    def candidates(self, q: np.ndarray, fetch: int, hamming_only: bool = False,
                   keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), best first, for full-dim float queries `q`; binary candidates re-ranked by the float
        query are cut to the best `keep` (default all)."""
        x = matryoshka(q, self.spec.dims)
        if self.int8 is not None:
            x = self.int8.round_trip(x)  # the query quantised with the recorded ranges, like the vectors
        if not self.spec.binary:
            return self.index.search(x, fetch)
        dist, rows = self.index.search(pack_signs(x), fetch)
        if hamming_only:
            return (1 - 2 * dist / self.dims).astype(np.float32), rows
        # bytes per candidate: its codes, their flat lookup offsets (int64) and the looked-up floats
        return rerank(rows, lambda sl, r: asymmetric_binary_scores(x[sl], self.codes[r]), self.codes.shape[1] * 13,
                      keep)


def rerank(rows: np.ndarray, score: Callable[[slice, np.ndarray], np.ndarray], bytes_per_candidate: int,
           keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate rows (queries x candidates) with `score(query_slice, rows)`, a block of queries at a time
    (blocks sized so a block's gathered data stays under RERANK_BLOCK_BYTES); each query's best `keep` (default
    all), best first, ties in candidate order; -1 rows stay last."""
    valid = rows >= 0
    safe = np.where(valid, rows, 0)  # scored like row 0, then set to -inf
    block = max(1, RERANK_BLOCK_BYTES // max(1, rows.shape[1] * bytes_per_candidate))
    scores = np.empty(rows.shape, dtype=np.float32)
    for s in range(0, len(rows), block):
        scores[s:s + block] = score(slice(s, s + block), safe[s:s + block])
    # BLAS sums the last (rows % 4) of a matrix-vector product another way, so a score can depend in its last bit on
    # how many rows share the call: a query with -1 rows (an IVF probe found fewer) is scored on its valid rows alone,
    # as the one-query-at-a-time loop did, so ties and near-ties rank the same.
    for i in np.flatnonzero(~valid.all(axis=1)):
        scores[i, valid[i]] = score(slice(i, i + 1), rows[i:i + 1, valid[i]])[0]
    scores[~valid] = -np.inf
    order = _best_first(scores, rows.shape[1] if keep is None else keep)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def _best_first(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of each row's n highest scores: the first n of a stable descending sort, without sorting it all."""
    neg = -scores
    if n >= scores.shape[1]:
        return np.argsort(neg, axis=1, kind="stable")
    inside = neg <= np.partition(neg, n - 1, axis=1)[:, n - 1:n]  # >= n per row: the n best and ties with the nth
    pos = np.argsort(~inside, axis=1, kind="stable")[:, :int(inside.sum(1).max())]  # those, in candidate order
    sub = np.where(np.take_along_axis(inside, pos, 1), np.take_along_axis(neg, pos, 1), np.inf)
    return np.take_along_axis(pos, np.argsort(sub, axis=1, kind="stable")[:, :n], 1)


def _lists(scores: np.ndarray, rows: np.ndarray) -> Iterator[tuple[list[float], list[int]]]:
    """Each query's (scores, rows) as Python lists, without the -1 padding."""
    for ss, rr, n in zip(scores.tolist(), rows.tolist(), (rows >= 0).sum(1).tolist(), strict=True):
        yield ss[:n], rr[:n]


@contextmanager
def _one_faiss_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread in the calling thread (OpenMP's thread count is a per-thread setting)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class Searcher:
    def __init__(self, variants: Mapping[str, Variant], ids: pl.DataFrame, encoder: Encoder,
                 max_chunks_per_doc: int = 1, fp16: np.ndarray | None = None, rescore_factor: int = 10) -> None:
        dims = encoder.card.dims
        for name, v in variants.items():
            if v.dims != (v.spec.dims or dims):
                raise ModelError(f"index {name!r} holds {v.dims}-dim vectors but model {encoder.card.name} gives "
                                 f"{dims}; expected the model the index was built with")
            if v.index.ntotal != ids.height:
                raise SnapshotError(f"index {name!r} has {v.index.ntotal} vectors but the id table has {ids.height}")
        if fp16 is not None and fp16.shape != (ids.height, dims):
            raise SnapshotError(f"rescoring store has shape {fp16.shape}; expected ({ids.height}, {dims})")
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
    def from_snapshot(cls, snapshot: Snapshot, encoder: Encoder | None = None) -> Searcher:
        card = snapshot.model_card
        if encoder is None:
            encoder = encoder_for_card(card)
        elif encoder.card.fingerprint != card.fingerprint:
            raise ModelError(f"snapshot {snapshot.version} was built with {card.name} ({card.fingerprint}); "
                             f"refusing to search it with {encoder.card.name} ({encoder.card.fingerprint})")
        indexes = {v: snapshot.index(v) for v in snapshot.variants}
        return cls.build(indexes, snapshot.manifest["index"], snapshot.ids, encoder,
                         snapshot.manifest["counts"]["max_chunks_per_doc"], snapshot.rescore_store())

    @classmethod
    def build(cls, indexes: Mapping[str, object], index_params: dict, ids: pl.DataFrame, encoder: Encoder,
              max_chunks_per_doc: int, fp16: np.ndarray | None) -> Searcher:
        """From indexes and the manifest's "index" section (a loaded snapshot, or indexes just built)."""
        variants = {name: Variant.load(name, ix, index_params["variants"][name]) for name, ix in indexes.items()}
        factor = (index_params.get("rescore") or {}).get("factor", 10)
        return cls(variants, ids, encoder, max_chunks_per_doc, fp16, factor)

    def modes(self) -> list[str]:
        """Every search mode worth reporting for this snapshot's variants."""
        out = []
        for name, v in self.variants.items():
            out += [f"{name}+hamming"] if v.spec.binary else []
            out.append(name)
            lossless = v.spec.kind == "exact" and v.spec.dims is None
            out += [f"{name}+rescore"] if self.store is not None and not lossless else []
        return out

    def search_vectors(self, vectors: np.ndarray, k: int, mode: str = "exact") -> list[list[Hit]]:
        ranked = _lists(*self._ranked(vectors, k, mode))
        return [[self._hit(s, r) for s, r in zip(ss, rr, strict=True)] for ss, rr in ranked]

    def _hit(self, score: float, row: int) -> Hit:
        doc_id, title, chunk_id, start, end = self.rows[row]
        return Hit(doc_id, title, score, chunk_id, start, end)

    def _ranked(self, vectors: np.ndarray, k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) per query: the best chunk of each of up to k documents, best first, rows -1 after."""
        name, _, suffix = mode.partition("+")
        if name not in self.variants or suffix not in ("", "rescore", "hamming"):
            raise SnapshotError(f"no search mode {mode!r}; available: {self.modes()}")
        variant = self.variants[name]
        if suffix == "hamming" and not variant.spec.binary:
            raise SnapshotError(f"mode {mode!r}: +hamming applies to binary variants only")
        if suffix == "rescore" and self.store is None:
            raise SnapshotError(f"mode {mode!r}: this snapshot stores no fp16 vectors to rescore with")
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        widen = self.rescore_factor if suffix == "rescore" or (variant.spec.binary and not suffix) else 1
        fetch = min(variant.index.ntotal, k * self.fetch_factor * widen)
        # FAISS's Hamming search (also binary-ivf's coarse step) forks and joins its OpenMP team per 32 queries:
        # with few codes each join waits longer than the work, worst when another process holds a core and
        # the join waits on a descheduled thread. 300 SciFact queries on binary, machine shared with a benchmark:
        # 0.23 s on 2 threads, 0.011 s on one (under a light load: 0.007 vs 0.010). Float indexes gain from threads.
        small_binary = variant.spec.binary and variant.index.ntotal < BINARY_ONE_THREAD_BELOW
        # Valid rows come first (FAISS pads with -1), so the best k x max_chunks rows hold k documents if any do.
        keep = k * self.max_chunks
        with _one_faiss_thread() if small_binary else nullcontext():
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

    def search(self, queries: list[str], k: int = 10, mode: str = "exact") -> list[list[Hit]]:
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise InputError(f"query {query!r} is empty: expected some text to search for")
        return self.search_vectors(self.encoder.encode(queries, kind="query"), k, mode)

    def evaluate(self, queries: Mapping[str, str], qrels: Qrels, k: int = 100, modes: list[str] | None = None,
                 runs: dict[str, Run] | None = None) -> dict[str, dict[str, float]]:
        """Per mode: nDCG@10, MAP@10, Recall@10/100, MRR@10, ms/query; beside `exact`, Recall@10 against it
        and nDCG@10 retention. `runs`, when given, receives each mode's run (for drift statistics)."""
        qids = [q for q in qrels if q in queries]
        if not qids:
            raise SnapshotError("none of the judged query ids are in the queries file; expected overlapping ids")
        vectors = self.encoder.encode([queries[q] for q in qids], kind="query")
        runs, report = {} if runs is None else runs, {}
        for mode in modes or self.modes():
            start = time.perf_counter()
            scores, rows = self._ranked(vectors, k, mode)
            ms = (time.perf_counter() - start) * 1000 / len(qids)
            # The run straight from the arrays: no Hit objects, whose numbers would trigger full GC passes
            # over the model's objects (~0.25 s each on SciFact).
            runs[mode] = {q: {self.doc_ids[r]: s for s, r in zip(ss, rr, strict=True)}
                          for q, (ss, rr) in zip(qids, _lists(scores, rows), strict=True)}
            report[mode] = {m: round(v, 5) for m, v in evaluate_run(qrels, runs[mode]).items()}
            report[mode] |= {"queries": len(qids), "ms_per_query": round(ms, 3)}
        if "exact" in runs:
            exact_top = top_k(runs["exact"], 10)  # cut once, not per mode
            for mode, run in runs.items():
                if mode != "exact":
                    report[mode]["recall@10_vs_exact"] = round(overlap_at_k(run, exact_top, 10), 5)
                    report[mode]["ndcg@10_retention"] = round(report[mode]["ndcg@10"] / report["exact"]["ndcg@10"], 5) \
                        if report["exact"]["ndcg@10"] else 0.0
        return report
