"""Snapshots to serve, built directly with the pipeline's functions (real FAISS, the real model's card), and the
damage the serving tests do to them."""

from __future__ import annotations

import io

import numpy as np
import polars as pl

from pipeline.config_loader import parse_config
from pipeline.index.build_variants import build_variants
from pipeline.index.faiss_ops import to_bytes
from pipeline.jobs.build import describe_variants, rescore_params
from pipeline.snapshots.publishing import publish
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.tables import parquet_bytes

INDEX = "idx"


def ids_table(doc_ids: list[str], titles: list[str], lengths: list[int]) -> pl.DataFrame:
    n = len(doc_ids)
    return pl.DataFrame({"row": list(range(n)), "doc_id": doc_ids, "title": titles,
                         "chunk_id": [f"{d}#0" for d in doc_ids], "start": [0] * n, "end": lengths})


def sample_corpus(encoder, docs: list[dict], n: int) -> tuple[np.ndarray, pl.DataFrame]:
    """The first n documents of the demo sample, embedded with the real model (one chunk each: the abstract)."""
    chosen = docs[:n]
    vectors = encoder.encode([d["text"] for d in chosen])
    return vectors, ids_table([d["_id"] for d in chosen], [d.get("title", "") for d in chosen],
                              [len(d["text"]) for d in chosen])


def random_corpus(n: int, dims: int = 384, seed: int = 0) -> tuple[np.ndarray, pl.DataFrame]:
    """n unit vectors in tight clusters (as tests/unit/test_representations.py), cheap at any size."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 10, 1), dims), dtype=np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, dims), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, ids_table([f"d{i}" for i in range(n)], [f"document {i}" for i in range(n)], [100] * n)


def publish_version(storage: Storage, version: str, encoder, vectors: np.ndarray, ids: pl.DataFrame,
                    variants: tuple[str, ...] = ("exact", "binary"), model: dict | None = None) -> str:
    """Publish a committed version of INDEX with these vectors; `model` replaces the manifest's model card."""
    cfg = parse_config({"index_name": INDEX, "corpus": {"source": "x"}, "index": {"variants": list(variants)}})
    indexes, params = build_variants(cfg.index, vectors, seed=0)  # in memory: one shard, so no IVF lists on disk
    store = io.BytesIO()
    np.save(store, vectors.astype(np.float16), allow_pickle=False)
    data = {layout.IDS: parquet_bytes(ids), layout.RESCORE_STORE: store.getvalue(),
            **{params[name]["file"]: to_bytes(index) for name, index in indexes.items()}}
    files = {name: {"bytes": len(b)} for name, b in data.items()}
    index = {"metric": "inner_product", "variants": params, "rescore": rescore_params(cfg, len(vectors))}
    card = encoder.card
    manifest = {"index": describe_variants(index, files, {}), "counts": {"max_chunks_per_doc": 1},
                "model": model or card.to_dict() | {"fingerprint": card.fingerprint}}
    publish(storage, INDEX, version, data, manifest)
    return version


def corrupt(storage: Storage, version: str, name: str = "index/exact.faiss") -> None:
    """Flip bytes in the middle of a committed file, keeping its size: only its sha256 can tell."""
    key = f"{layout.snapshot_prefix(INDEX, version)}/{name}"
    data = bytearray(storage.read_bytes(key))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    storage.write_bytes(key, bytes(data))
