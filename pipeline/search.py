"""Search every index variant with queries encoded by the model that built it; collapse chunks to documents.

A search *mode* is a variant name, optionally with a suffix:
    <variant>            the variant's own scoring (binary: Hamming candidates re-ranked by the float query
                         against the sign bits, which needs nothing but the codes)
    <variant>+rescore    the top k x rescore_factor candidates re-scored with the stored fp16 vectors
    <binary>+hamming     plain symmetric Hamming distance (reported to show why it is not the default)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl

from pipeline.encoder import Encoder, encoder_for_card
from pipeline.errors import ModelError, SnapshotError
from pipeline.evaluation import Qrels, Run, evaluate_run, overlap_at_k
from pipeline.representations import Int8Ranges, asymmetric_binary_scores, matryoshka, pack_signs, rescore
from pipeline.snapshot import Snapshot
from pipeline.variants import VariantSpec

MAX_CHUNKS_FETCHED_PER_DOC = 10  # bounds the over-fetch used to fill k distinct documents


@dataclass(frozen=True)
class Hit:
    doc_id: str
    title: str
    score: float
    chunk_id: str
    start: int
    end: int


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

    def candidates(self, q: np.ndarray, fetch: int, hamming_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), best first, for full-dim float queries `q`."""
        x = matryoshka(q, self.spec.dims)
        if self.int8 is not None:
            x = self.int8.round_trip(x)  # the query quantised with the recorded ranges, like the vectors
        if not self.spec.binary:
            return self.index.search(x, fetch)
        dist, rows = self.index.search(pack_signs(x), fetch)
        if hamming_only:
            return (1 - 2 * dist / self.dims).astype(np.float32), rows
        return rerank(rows, lambda i, r: asymmetric_binary_scores(x[i], self.codes[r]))


def rerank(rows: np.ndarray, score) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each query's candidate rows with `score(query_index, rows)`, best first; -1 rows stay last."""
    scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    for i, r in enumerate(rows):
        ok = r >= 0
        scores[i, ok] = score(i, r[ok])
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


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
        self.variants, self.encoder, self.fp16, self.rescore_factor = dict(variants), encoder, fp16, rescore_factor
        self.rows = ids.select("doc_id", "title", "chunk_id", "start", "end").rows()
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
            out += [f"{name}+rescore"] if self.fp16 is not None and not lossless else []
        return out

    def search_vectors(self, vectors: np.ndarray, k: int, mode: str = "exact") -> list[list[Hit]]:
        name, _, suffix = mode.partition("+")
        if name not in self.variants or suffix not in ("", "rescore", "hamming"):
            raise SnapshotError(f"no search mode {mode!r}; available: {self.modes()}")
        variant = self.variants[name]
        if suffix == "hamming" and not variant.spec.binary:
            raise SnapshotError(f"mode {mode!r}: +hamming applies to binary variants only")
        if suffix == "rescore" and self.fp16 is None:
            raise SnapshotError(f"mode {mode!r}: this snapshot stores no fp16 vectors to rescore with")
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        widen = self.rescore_factor if suffix == "rescore" or (variant.spec.binary and not suffix) else 1
        fetch = min(variant.index.ntotal, k * self.fetch_factor * widen)
        # Rescoring re-ranks the candidates anyway, so binary candidates skip the asymmetric re-rank.
        scores, rows = variant.candidates(q, fetch, hamming_only=suffix in ("hamming", "rescore"))
        if suffix == "rescore":
            scores, rows = rerank(rows, lambda i, r: rescore(q[i], r, self.fp16))
        return [self._collapse(s, r, k) for s, r in zip(scores, rows, strict=True)]

    def _collapse(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[Hit]:
        best: dict[str, Hit] = {}
        for score, row in zip(scores, rows, strict=True):
            if row < 0:
                continue  # FAISS pads with -1 when fewer results exist
            doc_id, title, chunk_id, start, end = self.rows[row]
            if doc_id not in best:  # results come best first, so the first chunk is the doc's best
                best[doc_id] = Hit(doc_id, title, float(score), chunk_id, start, end)
                if len(best) == k:
                    break
        return list(best.values())

    def search(self, queries: list[str], k: int = 10, mode: str = "exact") -> list[list[Hit]]:
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
            hits = self.search_vectors(vectors, k, mode)
            ms = (time.perf_counter() - start) * 1000 / len(qids)
            runs[mode] = {q: {h.doc_id: h.score for h in hs} for q, hs in zip(qids, hits, strict=True)}
            report[mode] = {m: round(v, 5) for m, v in evaluate_run(qrels, runs[mode]).items()}
            report[mode] |= {"queries": len(qids), "ms_per_query": round(ms, 3)}
        if "exact" in runs:
            for mode, run in runs.items():
                if mode != "exact":
                    report[mode]["recall@10_vs_exact"] = round(overlap_at_k(run, runs["exact"], 10), 5)
                    report[mode]["ndcg@10_retention"] = round(report[mode]["ndcg@10"] / report["exact"]["ndcg@10"], 5) \
                        if report["exact"]["ndcg@10"] else 0.0
        return report
