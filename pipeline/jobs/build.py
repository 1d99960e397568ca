"""The build after embedding, as plain steps: indexes over the committed vectors, their evaluation on the golden
set, the snapshot's files and manifest, and the typed summary a build job returns.

    plan (jobs/plan.py) -> prepare (jobs/prepare.py) -> embed (jobs/embedder.py) -> index -> evaluate
    -> manifest + files -> publish (snapshots/snapshot.py) -> promote (snapshots/aliases.py)
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from pipeline.config import BM25, PipelineConfig
from pipeline.errors import IndexBuildError
from pipeline.index.bm25 import Bm25Index, CorpusStatistics
from pipeline.index.faiss_ops import build_ivfpq, to_bytes
from pipeline.index.variants import FULL_BUILD, IvfPqBuilder, Training, build_variants
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import PreparedRun
from pipeline.jobs.shards import INPUT_COLUMNS
from pipeline.models.card import ModelCard
from pipeline.models.encoder import Encoder
from pipeline.quality.fusion import Fusion
from pipeline.quality.golden import GoldenSet
from pipeline.quality.search import Searcher, variant_of
from pipeline.snapshots.aliases import Promotion
from pipeline.snapshots.manifest import build_manifest
from pipeline.storage.layout import IDS, RESCORE_STORE
from pipeline.storage.tables import parquet_bytes


@dataclass(frozen=True)
class BuiltIndexes:
    indexes: dict[str, object]  # variant name -> faiss.Index or faiss.IndexBinary (FAISS row i = vectors[i])
    params: dict  # the manifest's "index" section
    fp16: np.ndarray | None  # the rescoring store
    lexical: Bm25Index | None = None  # the bm25 variant (row i = FAISS row i)
    lexical_files: dict[str, bytes] = field(default_factory=dict, repr=False)


def build_indexes(cfg: PipelineConfig, vectors: np.ndarray, ivfpq_builder: IvfPqBuilder = build_ivfpq,
                  training: Training = FULL_BUILD) -> BuiltIndexes:
    """Every configured vector variant over the same vectors, their parameters, and the fp16 rescoring store
    (the bm25 variant joins them with `with_bm25`)."""
    indexes, variants = build_variants(cfg.index, vectors, cfg.run.seed, ivfpq_builder, training)
    fp16 = vectors.astype(np.float16) if cfg.index.store_fp16 else None
    params = {"metric": "inner_product", "variants": variants,
              "rescore": {"file": RESCORE_STORE, "dtype": "float16", "factor": cfg.index.rescore_factor}
              if fp16 is not None else None}
    return BuiltIndexes(indexes, params, fp16)


def with_bm25(cfg: PipelineConfig, built: BuiltIndexes, bm25: Bm25Index, stats: CorpusStatistics) -> BuiltIndexes:
    """`built` plus the bm25 variant (jobs/lexical.build_bm25's index and statistics, rows = FAISS rows): its files,
    its manifest entry, and the fusion settings hybrid search uses."""
    if not cfg.index.lexical:
        raise IndexBuildError(f"index.variants {cfg.index.variants} has no {BM25}; expected it listed to build one")
    files = bm25.files()
    params = {**built.params, "variants": {**built.params["variants"], BM25: bm25.manifest_params(files, stats)},
              "fusion": Fusion.of(cfg.index.fusion).to_dict()}
    return BuiltIndexes(built.indexes, params, built.fp16, bm25, files)


def id_table(embedded: pl.DataFrame) -> pl.DataFrame:
    """FAISS row -> chunk and document, in the row order of `embedded` (load_vectors' metadata)."""
    return embedded.with_row_index("row").select("row", *INPUT_COLUMNS)


def evaluate(built: BuiltIndexes, ids: pl.DataFrame, golden: GoldenSet | None, encoder: Encoder,
             max_chunks_per_doc: int, k: int) -> dict:
    """Every search mode on the golden set (the manifest's "evaluation" section); {} without a golden set."""
    if golden is None:
        return {}
    searcher = Searcher.build(built.indexes, built.params, ids, encoder, max_chunks_per_doc, built.fp16,
                              built.lexical)
    return {"queries": golden.queries_url, "qrels": golden.qrels_url,
            "modes": searcher.evaluate(golden.queries, golden.qrels, k)}


def snapshot_files(built: BuiltIndexes, ids: pl.DataFrame) -> dict[str, bytes]:
    files = {IDS: parquet_bytes(ids)}
    files |= {built.params["variants"][name]["file"]: to_bytes(ix) for name, ix in built.indexes.items()}
    if built.fp16 is not None:
        buf = io.BytesIO()
        np.save(buf, built.fp16, allow_pickle=False)
        files[RESCORE_STORE] = buf.getvalue()
    return files | built.lexical_files


def describe_variants(params: dict, files: dict[str, bytes], evaluation: dict) -> dict:
    """The manifest's "index" section with each variant's size on disk and measured quality per search mode,
    so a reader can pick a variant by a memory or quality budget."""
    modes = evaluation.get("modes", {})
    variants = {}
    for name, p in params["variants"].items():
        quality = {mode: metrics for mode, metrics in modes.items() if variant_of(mode) == name}
        size = sum(len(files[f]) for f in p["files"]) if "files" in p else len(files[p["file"]])
        variants[name] = {**p, "index_bytes": size, "quality": quality}
    return {**params, "variants": variants}


@dataclass(frozen=True)
class BuildSummary:
    """What a build job returns (and the CLI prints; `to_dict` is its --json form)."""

    job: str
    index_name: str
    version: str
    snapshot: str  # the published version's URL, redacted
    run_id: str
    delta: str  # the plan's one line: full, incremental or backfill, against what
    counts: dict
    evaluation: dict
    index: dict  # the manifest's "index" section
    timings_s: dict[str, float]
    promotion: Promotion | None

    def to_dict(self) -> dict:
        return {**asdict(self), "promotion": self.promotion.to_dict() if self.promotion else None}


def manifest_for(cfg: PipelineConfig, run_id: str, job: str, plan: BuildPlan, card: ModelCard,
                 prepared: PreparedRun, index: dict, counts: dict, evaluation: dict, timings: dict) -> dict:
    """The manifest of a build (lineage, model card, chunker, index, counts, corpus, quality, timings, config);
    publish adds the version, the files' sha256 and the commit time."""
    return build_manifest(cfg, run_id=run_id, model=card.to_dict() | {"fingerprint": card.fingerprint},
                          chunking=prepared.chunking, index=index, counts=counts, corpus=prepared.corpus,
                          evaluation=evaluation, timings=timings, lineage=plan.lineage(job))
