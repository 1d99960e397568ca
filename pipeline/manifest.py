"""The lineage a snapshot records so it can be reproduced and served correctly."""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version

import polars as pl

from pipeline.config import PipelineConfig
from pipeline.storage import redact

_LIBRARIES = ("embedpipe", "torch", "transformers", "tokenizers", "faiss-cpu", "faiss-gpu", "numpy", "polars",
              "pyarrow", "fsspec", "ray", "prefect")


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def corpus_fingerprint(docs: pl.DataFrame) -> str:
    """sha256 over the accepted documents in id order: equal fingerprints mean equal content."""
    h = hashlib.sha256()
    for doc_id, title, text in docs.sort("doc_id").select("doc_id", "title", "text").iter_rows():
        h.update(f"{doc_id}\x00{title}\x00{text}\x01".encode())
    return h.hexdigest()


def _redacted(value):
    """Credentials embedded in any URL of the config (s3://KEY:SECRET@...) never reach the manifest."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def build_manifest(cfg: PipelineConfig, *, run_id: str, model: dict, chunking: dict, index: dict, counts: dict,
                   corpus: dict, evaluation: dict, timings: dict) -> dict:
    return {
        "run_id": run_id,
        "model": model,
        "chunking": chunking,
        "index": index,
        "counts": counts,
        "corpus": corpus,
        "evaluation": evaluation,
        "timings_s": timings,
        "config": _redacted(cfg.model_dump(mode="json", exclude={"storage": {"options"}})),
        "libraries": library_versions(),
    }
