"""Search FAISS indexes with queries encoded by the model that built them; collapse chunks to documents."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl

from pipeline.encoder import Encoder
from pipeline.errors import ModelError, SnapshotError
from pipeline.evaluation import Qrels, evaluate_run, overlap_at_k
from pipeline.snapshot import Snapshot

MAX_CHUNKS_FETCHED_PER_DOC = 10  # bounds the over-fetch used to fill k distinct documents


@dataclass(frozen=True)
class Hit:
    doc_id: str
    title: str
    score: float
    chunk_id: str
    start: int
    end: int


class Searcher:
    def __init__(self, indexes: Mapping[str, faiss.Index], ids: pl.DataFrame, encoder: Encoder,
                 max_chunks_per_doc: int = 1) -> None:
        for name, index in indexes.items():
            if index.d != encoder.card.dims:
                raise ModelError(f"index {name!r} holds {index.d}-dim vectors but model {encoder.card.name} gives "
                                 f"{encoder.card.dims}; expected the model the index was built with")
            if index.ntotal != ids.height:
                raise SnapshotError(f"index {name!r} has {index.ntotal} vectors but the id table has {ids.height}")
        self.indexes, self.encoder = dict(indexes), encoder
        self.rows = ids.select("doc_id", "title", "chunk_id", "start", "end").rows()
        self.fetch_factor = max(1, min(max_chunks_per_doc, MAX_CHUNKS_FETCHED_PER_DOC))

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, encoder: Encoder | None = None) -> Searcher:
        card = snapshot.model_card
        if encoder is None:
            encoder = Encoder.for_card(card)
        elif encoder.card.fingerprint != card.fingerprint:
            raise ModelError(f"snapshot {snapshot.version} was built with {card.name} ({card.fingerprint}); "
                             f"refusing to search it with {encoder.card.name} ({encoder.card.fingerprint})")
        indexes = {v: snapshot.index(v) for v in snapshot.variants}
        return cls(indexes, snapshot.ids, encoder, snapshot.manifest["counts"]["max_chunks_per_doc"])

    def search_vectors(self, vectors: np.ndarray, k: int, variant: str) -> list[list[Hit]]:
        if variant not in self.indexes:
            raise SnapshotError(f"no index variant {variant!r}; available: {sorted(self.indexes)}")
        index = self.indexes[variant]
        fetch = min(index.ntotal, k * self.fetch_factor)
        scores, rows = index.search(np.ascontiguousarray(vectors, dtype=np.float32), fetch)
        results = []
        for q_scores, q_rows in zip(scores, rows, strict=True):
            best: dict[str, Hit] = {}
            for score, row in zip(q_scores, q_rows, strict=True):
                if row < 0:
                    continue  # FAISS pads with -1 when fewer results exist
                doc_id, title, chunk_id, start, end = self.rows[row]
                if doc_id not in best:  # results come best first, so the first chunk is the doc's best
                    best[doc_id] = Hit(doc_id, title, float(score), chunk_id, start, end)
            results.append(list(best.values())[:k])
        return results

    def search(self, queries: list[str], k: int = 10, variant: str = "exact") -> list[list[Hit]]:
        return self.search_vectors(self.encoder.encode(queries, kind="query"), k, variant)

    def evaluate(self, queries: Mapping[str, str], qrels: Qrels, k: int = 100) -> dict[str, dict[str, float]]:
        """Per variant: nDCG@10, MAP@10, Recall@10/100, MRR@10 and, beside exact, Recall@10 against exact."""
        qids = [q for q in qrels if q in queries]
        if not qids:
            raise SnapshotError("none of the judged query ids are in the queries file; expected overlapping ids")
        vectors = self.encoder.encode([queries[q] for q in qids], kind="query")
        runs = {}
        for variant in self.indexes:
            hits = self.search_vectors(vectors, k, variant)
            runs[variant] = {q: {h.doc_id: h.score for h in hs} for q, hs in zip(qids, hits, strict=True)}
        report = {}
        for variant, run in runs.items():
            report[variant] = {m: round(v, 5) for m, v in evaluate_run(qrels, run).items()}
            report[variant]["queries"] = len(qids)
            if variant != "exact" and "exact" in runs:
                report[variant]["recall@10_vs_exact"] = round(overlap_at_k(run, runs["exact"], 10), 5)
        return report
