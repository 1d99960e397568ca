"""The reindex job's stages as plain functions: the Prefect flow wraps each in a task, tests call them directly.

read + validate -> shard -> chunk -> (embed: operators/) -> index -> evaluate -> publish
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.chunking import Chunker
from pipeline.config import PipelineConfig
from pipeline.encoder import tokenizer_for
from pipeline.errors import InputError
from pipeline.index_build import build_ivfpq, to_bytes
from pipeline.manifest import corpus_fingerprint
from pipeline.readers import corpus_url, golden_set_urls, read_corpus, require_exists
from pipeline.sharding import assign_shards
from pipeline.shards import write_shard_inputs
from pipeline.storage import Storage, redact
from pipeline.tables import parquet_bytes, write_parquet
from pipeline.variants import IvfPqBuilder, build_variants

RESCORE_FILE = "vectors.f16.npy"


@dataclass(frozen=True)
class PreparedRun:
    run_id: str
    shards: list[int]
    chunks: pl.DataFrame  # chunk metadata (no text): chunk_id, doc_id, chunk_index, start, end, n_tokens, shard
    titles: pl.DataFrame  # doc_id, title
    counts: dict[str, int]
    corpus: dict[str, str]
    chunking: dict


def check_inputs(cfg: PipelineConfig) -> None:
    """Fail fast, before any engine starts, on a corpus, golden set or model that cannot be found."""
    require_exists(corpus_url(cfg.corpus), "corpus.source")
    golden = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    for url, field in zip(golden or (), ("evaluation.queries", "evaluation.qrels"), strict=False):
        require_exists(url, field)
    tokenizer_for(cfg.model)


def make_chunker(cfg: PipelineConfig) -> Chunker:
    tokenizer, limit = tokenizer_for(cfg.model)
    return Chunker(tokenizer, cfg.chunking, limit, cfg.model.passage_prefix)


def prepare(cfg: PipelineConfig, storage: Storage, run_id: str) -> PreparedRun:
    """Read and validate the corpus, quarantine bad records, shard and chunk, and write each shard's inputs."""
    read = read_corpus(cfg.corpus)
    quarantine_key = f"runs/{run_id}/quarantine.parquet"
    write_parquet(storage, quarantine_key, read.quarantine)
    if read.docs.is_empty():
        raise InputError(f"corpus {redact(cfg.corpus.source)}: no document accepted ({read.counts['read']} read, "
                         f"{read.counts['quarantined']} quarantined; reasons in {storage.url_of(quarantine_key)})")
    chunker = make_chunker(cfg)
    docs = assign_shards(read.docs, cfg.run.shards)
    chunks = chunker.chunk(docs).join(docs.select("doc_id", "shard"), on="doc_id", how="left", maintain_order="left")
    shards = write_shard_inputs(storage, run_id, chunks)
    per_doc = chunks.group_by("doc_id").len()["len"]
    counts = {**read.counts, "chunks": chunks.height, "shards": len(shards),
              "max_chunks_per_doc": int(per_doc.max() or 0), "truncated_chunks":
              int((chunks["n_tokens"] > chunker.token_budget()).sum())}
    corpus = {"source": redact(corpus_url(cfg.corpus)), "fingerprint": corpus_fingerprint(read.docs)}
    return PreparedRun(run_id, shards, chunks.drop("text"), read.docs.select("doc_id", "title"), counts, corpus,
                       chunker.params)


@dataclass(frozen=True)
class BuiltIndexes:
    indexes: dict[str, object]  # variant name -> faiss.Index or faiss.IndexBinary (FAISS row i = vectors[i])
    params: dict  # the manifest's "index" section
    fp16: np.ndarray | None  # the rescoring store


def build_indexes(cfg: PipelineConfig, vectors: np.ndarray, ivfpq_builder: IvfPqBuilder = build_ivfpq) -> BuiltIndexes:
    """Every configured variant over the same vectors, their parameters, and the fp16 rescoring store."""
    indexes, variants = build_variants(cfg.index, vectors, cfg.run.seed, ivfpq_builder)
    fp16 = vectors.astype(np.float16) if cfg.index.store_fp16 else None
    params = {"metric": "inner_product", "variants": variants,
              "rescore": {"file": RESCORE_FILE, "dtype": "float16", "factor": cfg.index.rescore_factor}
              if fp16 is not None else None}
    return BuiltIndexes(indexes, params, fp16)


def id_table(prepared: PreparedRun, embedded: pl.DataFrame) -> pl.DataFrame:
    """FAISS row -> chunk and document, in the row order of `embedded` (chunk_id, chunk_hash)."""
    return (embedded.with_row_index("row")
            .join(prepared.chunks, on="chunk_id", how="left", maintain_order="left")
            .join(prepared.titles, on="doc_id", how="left", maintain_order="left")
            .select("row", "chunk_id", "doc_id", "chunk_index", "start", "end", "n_tokens", "chunk_hash", "title"))


def snapshot_files(built: BuiltIndexes, ids: pl.DataFrame) -> dict[str, bytes]:
    files = {"ids.parquet": parquet_bytes(ids)}
    files |= {built.params["variants"][name]["file"]: to_bytes(ix) for name, ix in built.indexes.items()}
    if built.fp16 is not None:
        buf = io.BytesIO()
        np.save(buf, built.fp16, allow_pickle=False)
        files[RESCORE_FILE] = buf.getvalue()
    return files


def describe_variants(params: dict, files: dict[str, bytes], evaluation: dict) -> dict:
    """The manifest's "index" section with each variant's size on disk and measured quality per search mode,
    so a reader can pick a variant by a memory or quality budget."""
    modes = evaluation.get("modes", {})
    variants = {}
    for name, p in params["variants"].items():
        quality = {mode: metrics for mode, metrics in modes.items() if mode.partition("+")[0] == name}
        variants[name] = {**p, "index_bytes": len(files[p["file"]]), "quality": quality}
    return {**params, "variants": variants}
