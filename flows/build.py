"""The tasks every build job shares, and `build_snapshot`, which runs them in order:

compare with the live snapshot -> read, shard, chunk -> embed (Ray actors, or in-process for a small
delta) -> build indexes -> evaluate -> publish -> promote through the quality gate.

Each task is a thin wrapper around a `pipeline` function (or the Ray operator), so the same code runs in
unit tests; flows/tasks.py says how tasks keep their results.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.artifacts import png_artifact
from flows.progress import report
from flows.tasks import local_task
from pipeline.aliases import promote_or_stay, read_alias
from pipeline.config import PipelineConfig
from pipeline.delta import Delta, Selection
from pipeline.embedding_cache import CachedQueries
from pipeline.encoder import cached_encoder
from pipeline.index_build import build_ivfpq
from pipeline.manifest import build_manifest
from pipeline.plots import quality_vs_bytes_png
from pipeline.readers import golden_set_urls, read_qrels, read_queries
from pipeline.search import Searcher
from pipeline.shards import ShardResult, embed_shard, load_vectors
from pipeline.snapshot import new_version, publish
from pipeline.stages import (
    BuiltIndexes,
    PreparedRun,
    build_indexes,
    describe_variants,
    id_table,
    live_delta,
    prepare,
    reusable_training,
    snapshot_files,
)
from pipeline.storage import redact


@local_task(name="compare with the live snapshot")
def delta_task(cfg: PipelineConfig, selection: Selection | None) -> tuple[Delta, str | None, str]:
    fingerprint = cached_encoder(cfg.model).card.fingerprint
    return live_delta(cfg, cfg.storage_client(), fingerprint, selection)


@local_task(name="read, shard and chunk")
def prepare_task(cfg: PipelineConfig, run_id: str, delta: Delta) -> PreparedRun:
    return prepare(cfg, cfg.storage_client(), run_id, delta)


@local_task(name="embed shards")
def embed_task(cfg: PipelineConfig, prepared: PreparedRun) -> dict[str, Any]:
    done: list[ShardResult] = []

    def progress(result: ShardResult) -> None:
        done.append(result)
        report("embedding shards", len(done), len(prepared.shards))

    report("embedding shards", 0, len(prepared.shards))
    local = prepared.counts["chunks_redone"] <= cfg.run.local_embed_max_chunks
    if local:  # a small delta: cheaper here than starting Ray and loading the model in each actor
        storage, encoder = cfg.storage_client(), cached_encoder(cfg.model)
        for shard in prepared.shards:
            progress(embed_shard(storage, prepared.run_id, shard, encoder))
    else:
        from operators.embedding import embed_shards  # Ray is imported only by runs that use it

        embed_shards(cfg.storage.root, cfg.storage.options, prepared.run_id, prepared.shards, cfg.model,
                     cfg.run.actors, cfg.run.cpus_per_actor, cfg.run.gpus_per_actor, on_result=progress)
    fresh = [r for r in done if not r.skipped]
    return {"embedded_in": "flow process" if local else "ray actors",
            "shards_embedded": len(fresh), "shards_skipped": len(done) - len(fresh),
            "tokens": sum(r.tokens for r in done), "vectors": sum(r.chunks for r in done),
            "embedded": sum(r.embedded for r in fresh), "reused_from_cache": sum(r.cached for r in fresh),
            "encode_seconds": round(sum(r.seconds for r in fresh), 2),
            "worker_peak_rss_mb": max((r.peak_rss_mb for r in fresh), default=0.0)}


@local_task(name="build indexes")
def index_task(cfg: PipelineConfig, prepared: PreparedRun, base: str | None) -> tuple[BuiltIndexes, pl.DataFrame]:
    """`base`: the version this build started from; its IVF-PQ training is reused when it was embedded with the
    same model and chunked the same way (an incremental run or backfill), never across models (a migration)."""
    storage = cfg.storage_client()
    training = reusable_training(storage, cfg.index_name, base, cached_encoder(cfg.model).card.fingerprint,
                                 prepared.chunking)
    embedded, vectors = load_vectors(storage, prepared.run_id, prepared.shards)
    parts = cfg.index.parallel_parts
    builder = build_ivfpq
    if parts > 1:
        from operators.index_build import parallel_ivfpq  # Ray is imported only by runs that use it

        builder = partial(parallel_ivfpq, parts=parts)
    return build_indexes(cfg, vectors, builder, training), id_table(embedded)


@local_task(name="evaluate on golden queries")
def evaluate_task(cfg: PipelineConfig, built: BuiltIndexes, ids: pl.DataFrame, prepared: PreparedRun) -> dict:
    urls = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    if urls is None:
        return {}
    queries, qrels = read_queries(urls[0]), read_qrels(urls[1])
    encoder = CachedQueries(cached_encoder(cfg.model), cfg.storage_client())  # the golden set is encoded once
    searcher = Searcher.build(built.indexes, built.params, ids, encoder, prepared.counts["max_chunks_per_doc"],
                              built.fp16)
    return {"queries": redact(urls[0]), "qrels": redact(urls[1]),
            "modes": searcher.evaluate(queries, qrels, cfg.evaluation.k)}


@local_task(name="publish snapshot")
def publish_task(cfg: PipelineConfig, files: dict[str, bytes], manifest: dict, run_id: str) -> tuple[str, str]:
    version = new_version()
    url = publish(cfg.storage_client(), cfg.index_name, version, files, manifest, publisher=run_id)
    return url, version


@local_task(name="promote through the quality gate")
def promote_task(cfg: PipelineConfig, version: str, seen: str | None, job: str) -> dict:
    """Move the alias from the version seen when the run started. A gate refusal leaves it there, and so
    does an overlapping run that promoted first (AliasMoved): this version stays published, not live."""
    outcome = promote_or_stay(cfg.storage_client(), cfg.index_name, cfg.publish.alias, version, seen,
                              cfg.publish.gate, by=f"{job} {version}")
    if not outcome["promoted"]:
        get_run_logger().warning("%s", outcome["reason"])
    return outcome


def artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())


def summary_markdown(summary: dict) -> str:
    lines = [f"# {summary['job']}: `{summary['index_name']}` {summary['version']}", "", f"`{summary['snapshot']}`",
             "", f"{summary['delta']}", ""]
    if promotion := summary.get("promotion"):
        outcome = "promoted to this version" if promotion["promoted"] else \
            f"stays at {promotion['live']}: {promotion['reason']}"
        lines += [f"Alias `{promotion['alias']}`: {outcome}", ""]
    lines += ["| count | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary["counts"].items()]
    variants = summary["evaluation"].get("modes", {})
    if variants:
        metrics = list(dict.fromkeys(m for values in variants.values() for m in values))
        lines += ["", "| mode | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        lines += [f"| {v} | " + " | ".join(str(m.get(k, "")) for k in metrics) + " |" for v, m in variants.items()]
    lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary["timings_s"].items()]
    return "\n".join(lines)


def default_run_id(cfg: PipelineConfig, job: str) -> str:
    """The flow run's id: rerunning a failed flow run (Retry in the Prefect UI, or flow retries) resumes its
    committed shards instead of starting over."""
    return cfg.run.run_id or (f"{job}-{flow_run.id}" if flow_run.id else new_version())


def build_snapshot(cfg: PipelineConfig, run_id: str, job: str, delta: Callable[[], tuple[Delta, str | None, str]]
                   ) -> dict:
    """Run the stages, publish a new version and promote it through the gate; returns the run's summary."""
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

    plan, base, why = timed("compare", delta)
    logger.info("%s", why)
    prepared = timed("prepare", prepare_task, cfg, run_id, plan)
    embedded = timed("embed", embed_task, cfg, prepared)
    built, ids = timed("index", index_task, cfg, prepared, base)
    evaluation = timed("evaluate", evaluate_task, cfg, built, ids, prepared)
    counts = {**prepared.counts, **embedded}
    card = cached_encoder(cfg.model).card
    files = snapshot_files(built, ids)
    index_params = describe_variants(built.params, files, evaluation)
    manifest = build_manifest(cfg, run_id=run_id, model=card.to_dict() | {"fingerprint": card.fingerprint},
                              chunking=prepared.chunking, index=index_params, counts=counts, corpus=prepared.corpus,
                              evaluation=evaluation, timings=timings, lineage={"job": job, "base": base, "how": why})
    url, version = timed("publish", publish_task, cfg, files, manifest, run_id)
    promotion = timed("promote", promote_task, cfg, version, seen, job) if cfg.publish.alias else None
    summary = {"job": job, "index_name": cfg.index_name, "version": version, "snapshot": redact(url),
               "run_id": run_id, "delta": why, "counts": counts, "evaluation": evaluation, "index": index_params,
               "timings_s": timings, "promotion": promotion}
    create_markdown_artifact(summary_markdown(summary), key=artifact_key(job, cfg.index_name),
                             description=f"{job} of {cfg.index_name}: version {version}")
    if evaluation.get("modes"):  # quality against size per search mode, on the artifact's page
        png_artifact(quality_vs_bytes_png(index_params, f"{cfg.index_name} {version}: nDCG@10 against bytes"),
                     key=artifact_key("quality", cfg.index_name),
                     description=f"nDCG@10 against bytes per vector, {cfg.index_name} {version}")
    return summary
