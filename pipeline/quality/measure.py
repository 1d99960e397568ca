"""Measure a committed snapshot on a golden set: every search mode's metrics, and the drift summary of one
mode (vector geometry, golden-query score distributions, relevant/non-relevant gap).

Migration and monitoring both measure through here, from the published files, with the model recorded in
the snapshot's manifest (Searcher.from_snapshot checks its weights and dims), so blue, green and a
monitored version are measured by one piece of code on the same queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import BM25
from pipeline.errors import SnapshotError
from pipeline.index.variants import VariantSpec
from pipeline.models.cache import CachedQueries
from pipeline.models.encoder import encoder_for_card
from pipeline.quality.drift import STORE, Geometry, snapshot_stats, vectors_source
from pipeline.quality.golden import GoldenSet
from pipeline.quality.metrics import METRICS, Qrels, Run
from pipeline.quality.search import Searcher, evaluated_modes
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage


def snapshot_vectors(snapshot: Snapshot) -> np.ndarray | None:
    """The snapshot's vectors in FAISS row order, from the file drift.vectors_source names: its fp16 rescoring store,
    memory-mapped (drift.vector_stats reads it block by block, or only its sampled rows: no copy of the corpus's
    vectors in memory), else reconstructed from a full-dimension float variant; None when it has neither (an
    IVF-PQ, binary or bm25 index alone)."""
    source = vectors_source(bool(snapshot.manifest["index"].get("rescore")), snapshot.variants)
    if source == STORE:
        return snapshot.rescore_store()
    if source is not None:
        index = snapshot.index(source)
        return index.reconstruct_n(0, index.ntotal)
    return None


@dataclass(frozen=True)
class Measurement:
    index_name: str
    version: str
    model: str
    dims: int
    mode: str  # the search mode `run` and `stats` describe
    modes: dict[str, dict[str, float]]  # every search mode's golden-set metrics (Searcher.evaluate)
    run: Run  # query id -> doc id -> score, for `mode`
    stats: dict  # drift.snapshot_stats of `mode`
    golden_sha256: str = ""  # the golden set's (GoldenSet.digest), and the depth its runs were cut to
    k: int | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """The golden-set metrics of `mode` (no timings or counts)."""
        return {m: v for m, v in self.modes[self.mode].items() if m in METRICS}

    def evaluation(self) -> dict:
        """In the manifest's "evaluation" shape, for the quality gate: every mode's metrics, `mode`'s drift, and what
        they were measured on."""
        return {"golden_sha256": self.golden_sha256, "k": self.k, "modes": self.modes,
                "drift": {"mode": self.mode, **self.stats}}


def check_mode(snapshot: Snapshot, mode: str) -> None:
    """Refuse a mode the snapshot cannot answer, from its manifest alone (the modes `Searcher.modes` would list), so
    the error comes before its indexes are loaded or a worker is started for it."""
    modes = evaluated_modes([VariantSpec.parse(v) for v in snapshot.vector_variants],
                            bool(snapshot.manifest["index"].get("rescore")), BM25 in snapshot.variants)
    if mode not in modes:
        raise SnapshotError(f"{snapshot.manifest['index_name']} {snapshot.version} has no search mode {mode!r}; "
                            f"it has {modes}")


def measure_snapshot(snapshot: Snapshot, golden: GoldenSet, k: int, mode: str, root: Storage) -> Measurement:
    """`measure` as an executor's step, with the snapshot's own model and query kernel; `root`: the storage root
    whose query cache spares encoding the golden set again."""
    encoder = CachedQueries(encoder_for_card(snapshot.model_card, snapshot.query_kernel), root)
    return measure(snapshot, golden, k, mode, Searcher.from_snapshot(snapshot, encoder))


def measure(snapshot: Snapshot, golden: GoldenSet, k: int, mode: str, searcher: Searcher | None = None,
            sample: int = 1000, seed: int = 0) -> Measurement:
    """Evaluate every search mode of `snapshot` on `golden` (k results per query) and summarise `mode`; the figures
    over all of its vectors are those its build recorded, when it did (Geometry.of_summary)."""
    check_mode(snapshot, mode)
    searcher = searcher or Searcher.from_snapshot(snapshot)
    runs: dict[str, Run] = {}
    modes = searcher.evaluate(golden.queries, golden.qrels, k, runs=runs)
    card = snapshot.model_card
    recorded = ((snapshot.manifest.get("evaluation") or {}).get("drift") or {}).get("vectors")
    stats = drift_stats(snapshot, runs[mode], modes[mode], golden.qrels, sample, seed, Geometry.of_summary(recorded))
    return Measurement(snapshot.manifest["index_name"], snapshot.version, card.name, card.dims, mode, modes,
                       runs[mode], stats, golden.digest, k)


def drift_stats(snapshot: Snapshot, run: Run, metrics: dict[str, float], qrels: Qrels, sample: int = 1000,
                seed: int = 0, geometry: Geometry | None = None) -> dict:
    """drift.snapshot_stats of one search mode: its golden run and metrics, the snapshot's vectors (only the
    sampled ones read when `geometry` gives the figures over all of them; none where it keeps none)."""
    return snapshot_stats(snapshot_vectors(snapshot), run, model=snapshot.model_card.name, version=snapshot.version,
                          corpus=(snapshot.manifest.get("corpus") or {}).get("fingerprint"),
                          metrics={m: v for m, v in metrics.items() if m in METRICS}, qrels=qrels, sample=sample,
                          seed=seed, geometry=geometry)
