"""The `reindex` flow: read -> shard -> chunk -> embed (Ray) -> index -> evaluate -> publish.

Each task is a thin wrapper around a `pipeline` function (or the Ray operator), so the same code runs in
unit tests. Results stay in the flow's process (no result persistence): nothing large crosses Prefect.
"""

from __future__ import annotations

import re
import time
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import png_artifact, quality_chart
from operators.embedding import embed_shards
from operators.index_build import parallel_ivfpq
from pipeline.aliases import promote, read_alias
from pipeline.config import PipelineConfig, load_config
from pipeline.encoder import cached_encoder
from pipeline.errors import GateRefused
from pipeline.index_build import build_ivfpq
from pipeline.manifest import build_manifest
from pipeline.readers import golden_set_urls, read_qrels, read_queries
from pipeline.search import Searcher
from pipeline.shards import load_vectors
from pipeline.snapshot import new_version, publish
from pipeline.stages import (
    BuiltIndexes,
    PreparedRun,
    build_indexes,
    check_inputs,
    describe_variants,
    id_table,
    prepare,
    snapshot_files,
)
from pipeline.storage import redact

_task = task(cache_policy=NO_CACHE, persist_result=False)


@_task(name="read, shard and chunk")
def prepare_task(cfg: PipelineConfig, run_id: str) -> PreparedRun:
    return prepare(cfg, cfg.storage_client(), run_id)


@_task(name="embed shards (Ray)")
def embed_task(cfg: PipelineConfig, prepared: PreparedRun) -> dict[str, Any]:
    results = embed_shards(cfg.storage.root, cfg.storage.options, prepared.run_id, prepared.shards, cfg.model,
                           cfg.run.actors, cfg.run.cpus_per_actor, cfg.run.gpus_per_actor)
    fresh = [r for r in results if not r.skipped]
    return {"shards_embedded": len(fresh), "shards_skipped": len(results) - len(fresh),
            "tokens": sum(r.tokens for r in results), "vectors": sum(r.chunks for r in results),
            "embedded": sum(r.embedded for r in fresh), "reused_from_cache": sum(r.cached for r in fresh),
            "encode_seconds": round(sum(r.seconds for r in fresh), 2),
            "worker_peak_rss_mb": max((r.peak_rss_mb for r in fresh), default=0.0)}


@_task(name="build indexes")
def index_task(cfg: PipelineConfig, prepared: PreparedRun) -> tuple[BuiltIndexes, pl.DataFrame]:
    embedded, vectors = load_vectors(cfg.storage_client(), prepared.run_id, prepared.shards)
    parts = cfg.index.parallel_parts
    builder = (lambda x, plan, seed: parallel_ivfpq(x, plan, seed, parts)) if parts > 1 else build_ivfpq
    return build_indexes(cfg, vectors, builder), id_table(embedded)


@_task(name="evaluate on golden queries")
def evaluate_task(cfg: PipelineConfig, built: BuiltIndexes, ids: pl.DataFrame, prepared: PreparedRun) -> dict:
    urls = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    if urls is None:
        return {}
    queries, qrels = read_queries(urls[0]), read_qrels(urls[1])
    searcher = Searcher.build(built.indexes, built.params, ids, cached_encoder(cfg.model),
                              prepared.counts["max_chunks_per_doc"], built.fp16)
    return {"queries": redact(urls[0]), "qrels": redact(urls[1]),
            "modes": searcher.evaluate(queries, qrels, cfg.evaluation.k)}


@_task(name="publish snapshot")
def publish_task(cfg: PipelineConfig, files: dict[str, bytes], manifest: dict, run_id: str) -> tuple[str, str]:
    version = new_version()
    url = publish(cfg.storage_client(), cfg.index_name, version, files, manifest, publisher=run_id)
    return url, version


@_task(name="promote through the quality gate")
def promote_task(cfg: PipelineConfig, version: str, seen: str | None) -> dict:
    """Move the alias from the version seen when the run started; a gate refusal leaves it there."""
    try:
        state, gate = promote(cfg.storage_client(), cfg.index_name, cfg.publish.alias, version, seen,
                              cfg.publish.gate, by=f"reindex {version}")
    except GateRefused as exc:
        get_run_logger().warning("%s", exc)
        return {"alias": cfg.publish.alias, "promoted": False, "live": seen, "reason": str(exc)}
    return {"alias": cfg.publish.alias, "promoted": True, "live": state.version, "gate": gate.__dict__}


def _markdown(summary: dict) -> str:
    lines = [f"# Snapshot `{summary['index_name']}` {summary['version']}", "", f"`{summary['snapshot']}`", "",
             "| count | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["counts"].items()]
    variants = summary["evaluation"].get("modes", {})
    if variants:
        metrics = list(dict.fromkeys(m for values in variants.values() for m in values))
        lines += ["", "| mode | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        lines += [f"| {v} | " + " | ".join(str(m.get(k, "")) for k in metrics) + " |" for v, m in variants.items()]
    lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary["timings_s"].items()]
    return "\n".join(lines)


@flow(name="reindex", log_prints=True)
def reindex(config_path: str, overrides: dict[str, Any] | None = None, run_id: str | None = None) -> dict:
    """Build, evaluate and publish a snapshot of the corpus a config names. Reusing `run_id` resumes a run."""
    cfg = load_config(config_path, overrides)
    check_inputs(cfg)
    run_id = run_id or cfg.run.run_id or new_version()
    logger = get_run_logger()
    # What the alias points at now: promotion moves it from here, or not at all (an overlapping run that
    # promoted meanwhile makes this one's promote fail instead of silently overwriting it).
    seen = read_alias(cfg.storage_client(), cfg.index_name, cfg.publish.alias).version if cfg.publish.alias else None
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        timings[name] = round(time.perf_counter() - start, 2)
        logger.info("%s: %.1f s", name, timings[name])
        return out

    prepared = timed("prepare", prepare_task, cfg, run_id)
    embedded = timed("embed", embed_task, cfg, prepared)
    built, ids = timed("index", index_task, cfg, prepared)
    evaluation = timed("evaluate", evaluate_task, cfg, built, ids, prepared)
    counts = {**prepared.counts, **embedded}
    card = cached_encoder(cfg.model).card
    files = snapshot_files(built, ids)
    index_params = describe_variants(built.params, files, evaluation)
    manifest = build_manifest(cfg, run_id=run_id, model=card.to_dict() | {"fingerprint": card.fingerprint},
                              chunking=prepared.chunking, index=index_params, counts=counts, corpus=prepared.corpus,
                              evaluation=evaluation, timings=timings)
    url, version = timed("publish", publish_task, cfg, files, manifest, run_id)
    promotion = timed("promote", promote_task, cfg, version, seen) if cfg.publish.alias else None
    summary = {"index_name": cfg.index_name, "version": version, "snapshot": redact(url), "run_id": run_id,
               "counts": counts, "evaluation": evaluation, "index": index_params, "timings_s": timings,
               "promotion": promotion}
    create_markdown_artifact(_markdown(summary), key=re.sub(r"[^a-z0-9-]", "-", f"reindex-{cfg.index_name}"),
                             description=f"Snapshot {cfg.index_name} {version}")
    if evaluation.get("modes"):  # the same numbers as a chart, shown on the artifact's page
        png_artifact(quality_chart(evaluation["modes"]), key=re.sub(r"[^a-z0-9-]", "-", f"quality-{cfg.index_name}"),
                     description=f"Golden-query quality per search mode, {cfg.index_name} {version}")
    return summary
