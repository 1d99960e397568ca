"""The reindex job's stages as plain functions: the Prefect flow wraps each in a task, tests call them directly.

read + validate -> shard -> chunk -> (embed: operators/) -> index -> evaluate -> publish
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.aliases import read_alias
from pipeline.chunking import Chunker
from pipeline.config import PipelineConfig
from pipeline.delta import Delta, Selection, content_hashes, doc_hashes
from pipeline.encoder import tokenizer_for
from pipeline.errors import InputError
from pipeline.index_build import build_ivfpq, to_bytes
from pipeline.manifest import CorpusFingerprint
from pipeline.readers import corpus_url, golden_set_urls, iter_corpus, require_exists
from pipeline.sharding import assign_shards
from pipeline.shards import INPUT_COLUMNS, clear_uncommitted_inputs, write_shard_inputs
from pipeline.snapshot import Snapshot
from pipeline.storage import Storage, redact
from pipeline.tables import parquet_bytes, write_parquet
from pipeline.variants import FULL_BUILD, IvfPqBuilder, Training, build_variants

RESCORE_FILE = "vectors.f16.npy"


@dataclass(frozen=True)
class PreparedRun:
    run_id: str
    shards: list[int]
    counts: dict[str, int]
    corpus: dict[str, str]
    chunking: dict


def check_inputs(cfg: PipelineConfig) -> None:
    """Fail fast, before any engine starts, on a storage root that cannot be reached or written, or a corpus,
    golden set or model that cannot be found."""
    cfg.storage_client().probe()
    require_exists(corpus_url(cfg.corpus), "corpus.source")
    golden = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    for url, field in zip(golden or (), ("evaluation.queries", "evaluation.qrels"), strict=False):
        require_exists(url, field)
    tokenizer_for(cfg.model)


def make_chunker(cfg: PipelineConfig) -> Chunker:
    tokenizer, limit = tokenizer_for(cfg.model)
    return Chunker(tokenizer, cfg.chunking, limit, cfg.model.passage_prefix)


def live_delta(cfg: PipelineConfig, storage: Storage, model_fingerprint: str,
               selection: Selection | None = None) -> tuple[Delta, str | None, str]:
    """What a run redoes, against the snapshot the alias serves: (delta, base version, why). An incremental
    run falls back to a full build when there is nothing comparable (no alias, another model); a backfill
    needs a live snapshot of the same model, since it keeps the rest of it."""
    alias = cfg.publish.alias
    version = read_alias(storage, cfg.index_name, alias).version if alias else None
    snapshot = Snapshot.of(storage, cfg.index_name, version) if version else None
    if snapshot is None:
        reason = f"alias {cfg.index_name}/{alias} is not set" if alias else "publish.alias is not set"
    elif snapshot.manifest["model"]["fingerprint"] != model_fingerprint:
        reason = f"the live version {version} was embedded with another model ({snapshot.manifest['model']['name']})"
    elif "doc_hash" not in snapshot.ids.columns:
        reason = f"the live version {version} has no document hashes (written by an older embedpipe)"
    else:
        live = assign_shards(snapshot.ids.drop("row"), cfg.run.shards)
        why = f"backfill of {selection.describe()}" if selection else "incremental"
        return Delta(live, selection), version, f"{why} against live version {version}"
    if selection is not None:
        raise InputError(f"backfill of {cfg.index_name}: {reason}; a backfill keeps the rest of the live snapshot, "
                         "so it needs one embedded with this model (use migrate for a new model)")
    return Delta(live=None), None, f"full build: {reason}"


def prepare(cfg: PipelineConfig, storage: Storage, run_id: str, delta: Delta | None = None) -> PreparedRun:
    """Read and validate the corpus batch by batch, quarantine bad records, shard and chunk each batch, and
    write it as one input part per shard: no more than one batch of text is in memory at a time. With a
    `delta`, only the documents it redoes are chunked; the live chunk rows it keeps join their shards."""
    delta = delta or Delta(live=None)
    chunker = make_chunker(cfg)
    clear_uncommitted_inputs(storage, run_id, cfg.run.shards)
    fingerprint, quarantine, shards = CorpusFingerprint(), [], set()
    counts = dict.fromkeys(["read", "accepted", "quarantined", "blank_lines", "chunks", "chunks_redone",
                            "chunks_kept", "max_chunks_per_doc", "truncated_chunks"], 0)

    def write(part: int, chunks: pl.DataFrame, kept: pl.DataFrame) -> None:
        frames = [f for f in (chunks, kept) if f.height]
        if not frames:
            return
        rows = pl.concat(frames, how="diagonal_relaxed")
        shards.update(write_shard_inputs(storage, run_id, rows, part))
        counts["chunks"] += rows.height
        counts["chunks_redone"] += chunks.height
        counts["chunks_kept"] += kept.height
        per_doc = int(rows.group_by("doc_id").len()["len"].max())  # a document never spans two parts
        counts["max_chunks_per_doc"] = max(counts["max_chunks_per_doc"], per_doc)
        counts["truncated_chunks"] += int((rows["n_tokens"] > chunker.token_budget()).sum())

    part = -1
    for part, batch in enumerate(iter_corpus(cfg.corpus, cfg.run.read_batch)):
        quarantine.append(batch.quarantine)  # rejects keep <= 500 chars of their record each
        for key, value in batch.counts.items():
            counts[key] += value
        if batch.docs.is_empty():
            continue
        content = content_hashes(batch.docs)
        fingerprint.update(content)
        docs = assign_shards(batch.docs.with_columns(doc_hashes(content, chunker.params)), cfg.run.shards)
        redo, kept = delta.split(docs)
        chunks = chunker.chunk(redo).join(redo.select("doc_id", "doc_hash", "title", "shard"), on="doc_id",
                                          how="left", maintain_order="left")
        write(part, chunks, kept)
    write(part + 1, pl.DataFrame(), delta.finish())  # a backfill keeps live documents the corpus lacks
    quarantine_key = f"runs/{run_id}/quarantine.parquet"
    write_parquet(storage, quarantine_key, pl.concat(quarantine))
    if not counts["accepted"]:
        raise InputError(f"corpus {redact(cfg.corpus.source)}: no document accepted ({counts['read']} read, "
                         f"{counts['quarantined']} quarantined; reasons in {storage.url_of(quarantine_key)})")
    counts |= delta.counts
    counts["shards"] = len(shards)
    corpus = {"source": redact(corpus_url(cfg.corpus)), "fingerprint": fingerprint.hexdigest()}
    return PreparedRun(run_id, sorted(shards), counts, corpus, chunker.params)


@dataclass(frozen=True)
class BuiltIndexes:
    indexes: dict[str, object]  # variant name -> faiss.Index or faiss.IndexBinary (FAISS row i = vectors[i])
    params: dict  # the manifest's "index" section
    fp16: np.ndarray | None  # the rescoring store


def reusable_training(storage: Storage, index_name: str, version: str | None, model_fingerprint: str,
                      chunking: dict) -> Training:
    """The IVF-PQ training of a committed version that a build may reuse, and why (or why not). Only a version
    embedded with the same model and chunked with the same parameters qualifies: codebooks trained on another
    model's vectors (even of the same dims) would quantise this build's vectors into the wrong cells."""
    if version is None:
        return Training()
    snapshot = Snapshot.of(storage, index_name, version)
    model = snapshot.manifest["model"]
    if model.get("fingerprint") != model_fingerprint:
        return Training(why=f"trained on this build's vectors: version {version} was embedded with another model "
                            f"({model['name']}, fingerprint {model.get('fingerprint')}; this build "
                            f"{model_fingerprint})")
    if snapshot.manifest.get("chunking") != chunking:
        return Training(why=f"trained on this build's vectors: version {version} was chunked with other "
                            f"parameters ({snapshot.manifest.get('chunking')}; this build {chunking})")
    params = {name: snapshot.variant_params(name) for name in snapshot.variants}
    return Training({name: (snapshot.index(name), {**p, "trained_in": p.get("trained_in", version)})
                     for name, p in params.items() if p["kind"] == "ivfpq"},
                    why=f"version {version} has the same model ({model_fingerprint}), chunker parameters and plan")


def build_indexes(cfg: PipelineConfig, vectors: np.ndarray, ivfpq_builder: IvfPqBuilder = build_ivfpq,
                  training: Training = FULL_BUILD) -> BuiltIndexes:
    """Every configured variant over the same vectors, their parameters, and the fp16 rescoring store."""
    indexes, variants = build_variants(cfg.index, vectors, cfg.run.seed, ivfpq_builder, training)
    fp16 = vectors.astype(np.float16) if cfg.index.store_fp16 else None
    params = {"metric": "inner_product", "variants": variants,
              "rescore": {"file": RESCORE_FILE, "dtype": "float16", "factor": cfg.index.rescore_factor}
              if fp16 is not None else None}
    return BuiltIndexes(indexes, params, fp16)


def id_table(embedded: pl.DataFrame) -> pl.DataFrame:
    """FAISS row -> chunk and document, in the row order of `embedded` (load_vectors' metadata)."""
    return embedded.with_row_index("row").select("row", *INPUT_COLUMNS)


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
