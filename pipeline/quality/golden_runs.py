"""A version's golden-set results, kept in its folder beside the indexes: each search mode's ranking of every judged
query, and the judgments with whether the index holds each judged document.

With two versions' files the gate can compare them on the judgments both can find (snapshots/gate.py). When judged
documents leave the corpus, every metric falls whatever the search; dropping those documents from the judgments and
from both rankings leaves the question the gate means to ask: does the new version search as well? Both files are
sized by the golden set (queries x k x modes), not by the corpus.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

import polars as pl

from pipeline.config import GateConfig
from pipeline.quality.metrics import Qrels, Run, evaluate_run, top_k
from pipeline.snapshots.gate import SharedJudgments
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.tables import parquet_bytes


def golden_files(runs: Mapping[str, Run], qrels: Qrels, queries: Iterable[str], held: AbstractSet[str],
                 k: int) -> dict[str, bytes]:
    """The two files (layout.GOLDEN_RUNS, layout.GOLDEN_JUDGMENTS) of an index holding the documents `held`.
    Rankings keep each query's order (trec_eval's: score, then doc id), not its scores, so a metric recomputed from
    them is the one the build recorded."""
    rows = [(mode, q, rank, d) for mode, run in runs.items() for q, docs in top_k(run, k).items()
            for rank, d in enumerate(docs)]
    ranked = pl.DataFrame(rows, schema={"mode": pl.Utf8, "query_id": pl.Utf8, "rank": pl.Int32, "doc_id": pl.Utf8},
                          orient="row")
    asked = set(queries)
    judged = [(q, d, grade, d in held) for q, docs in qrels.items() if q in asked for d, grade in docs.items()]
    judgments = pl.DataFrame(judged, schema={"query_id": pl.Utf8, "doc_id": pl.Utf8, "grade": pl.Int32,
                                             "held": pl.Boolean}, orient="row")
    return {layout.GOLDEN_RUNS: parquet_bytes(ranked), layout.GOLDEN_JUDGMENTS: parquet_bytes(judgments)}


def shared_judgments(root: Storage, index: str, candidate: str, live: str | None,
                     gate: GateConfig) -> SharedJudgments | None:
    """The gate's metric of both versions on the judgments both can find; None when there is nothing to settle
    that way: nothing is live, both hold the same judged documents, or either version lacks its golden files (built
    without a golden set, or before they were kept) or the gate's mode, or was judged on other judgments. A version
    that is not committed is promote's to refuse, with its own error."""
    versions = (candidate, live)
    if live is None or not all(root.exists(f"{layout.snapshot_prefix(index, v)}/{layout.MANIFEST}") for v in versions):
        return None
    snaps = [Snapshot.of(root, index, v) for v in versions]
    if any(layout.GOLDEN_RUNS not in s.manifest["files"] for s in snaps):
        return None
    judged = [_read(s, layout.GOLDEN_JUDGMENTS).sort("query_id", "doc_id") for s in snaps]
    if not judged[0].drop("held").equals(judged[1].drop("held")) or judged[0]["held"].equals(judged[1]["held"]):
        return None
    held, other = judged[0]["held"], judged[1]["held"]
    both = held & other
    lost = set(judged[0].filter(~both)["doc_id"])
    one_side = set(judged[0].filter(held ^ other)["doc_id"])  # those neither holds were never in either ranking
    kept = judged[0].filter(both)
    qrels: dict[str, dict[str, int]] = {}
    for q, d, grade in kept.select("query_id", "doc_id", "grade").iter_rows():
        qrels.setdefault(q, {})[d] = grade
    runs = [_run(s, gate.mode, lost) for s in snaps]
    if any(run is None for run in runs):
        return None
    cand, before = (evaluate_run(qrels, run)[gate.metric] for run in runs)
    return SharedJudgments(round(cand, 5), round(before, 5), kept.filter(pl.col("grade") > 0).height,
                           len(one_side))


def _read(snapshot: Snapshot, name: str) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(snapshot.read_verified(name)))


def _run(snapshot: Snapshot, mode: str, lost: set[str]) -> dict[str, dict[str, float]] | None:
    """`mode`'s ranking without the `lost` documents (those below move up), scored by rank for trec_eval; None if
    the version was not evaluated in `mode`."""
    ranked = _read(snapshot, layout.GOLDEN_RUNS).filter(pl.col("mode") == mode)
    if ranked.is_empty():
        return None
    run: dict[str, dict[str, float]] = {}
    kept = ranked.filter(~pl.col("doc_id").is_in(list(lost)))
    for q, rank, d in kept.select("query_id", "rank", "doc_id").iter_rows():
        run.setdefault(q, {})[d] = -float(rank)
    return run
