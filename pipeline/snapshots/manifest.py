"""The lineage a snapshot records so it can be reproduced and served correctly."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pipeline.config import PipelineConfig
from pipeline.redaction import redact

_LIBRARIES = ("embedpipe", "torch", "transformers", "tokenizers", "faiss-cpu", "faiss-cuda", "numpy", "polars",
              "pyarrow", "fsspec", "ray", "prefect")


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _redacted(value):
    """Credentials embedded in any URL of the config (s3://KEY:SECRET@...) never reach the manifest."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def recorded_config(cfg: PipelineConfig) -> dict:
    """The config as a manifest records it."""
    return _redacted(cfg.model_dump(mode="json", exclude=_unrecorded(cfg)))


def _unrecorded(cfg: PipelineConfig) -> dict:
    """Storage options (credentials); and bm25's settings where there is no bm25 variant, so those manifests
    stay as they were before it existed."""
    return {"storage": {"options"}} | ({} if cfg.index.lexical else {"index": {"bm25", "fusion"}})


def build_manifest(cfg: PipelineConfig, *, run_id: str, model: dict, chunking: dict, index: dict, counts: dict,
                   corpus: dict, evaluation: dict, timings: dict, lineage: dict | None = None) -> dict:
    return {
        "run_id": run_id,
        "lineage": lineage or {},  # which job built it, and from which live version
        "model": model,
        "chunking": chunking,
        "index": index,
        "counts": counts,
        "corpus": corpus,
        "evaluation": evaluation,
        "timings_s": timings,
        "config": recorded_config(cfg),
        "libraries": library_versions(),
    }
