"""Golden sets: BEIR queries and relevance judgments that every build, migration and monitoring run measures
quality on."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.corpus.readers import golden_set_urls, read_qrels, read_queries
from pipeline.errors import InputError
from pipeline.quality.metrics import Qrels
from pipeline.storage.keys import redact


@dataclass(frozen=True)
class GoldenSet:
    queries: dict[str, str]
    qrels: Qrels
    queries_url: str  # redacted, as recorded in reports
    qrels_url: str


def golden_set_of(cfg: PipelineConfig) -> GoldenSet | None:
    """The config's golden set (evaluation.queries/qrels, or the BEIR corpus folder's own), or None."""
    urls = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    return None if urls is None else _read(urls)


def _read(urls: tuple[str, str]) -> GoldenSet:
    return GoldenSet(read_queries(urls[0]), read_qrels(urls[1]), redact(urls[0]), redact(urls[1]))


def load_golden_set(cfg: PipelineConfig, manifest: dict | None = None) -> GoldenSet:
    """The config's golden set (evaluation.queries/qrels, or the BEIR corpus folder's own); failing that,
    the one the snapshot was evaluated on at publish time (recorded in its manifest)."""
    urls = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    if urls is None and manifest is not None:
        recorded = manifest.get("evaluation") or {}
        if recorded.get("queries") and recorded.get("qrels"):
            urls = (recorded["queries"], recorded["qrels"])
    if urls is None:
        raise InputError(f"{cfg.index_name}: no golden set: set evaluation.queries and evaluation.qrels (BEIR "
                         "queries.jsonl and qrels TSV)")
    return _read(urls)
