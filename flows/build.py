"""The tasks every build job shares, and `build_snapshot`, which runs them in order:

plan (what to redo, against which version) -> read, shard, chunk -> embed (flows/engine.py picks where) ->
build indexes (-> bm25: analyse each shard, then reduce) -> evaluate -> publish -> promote through the quality
gate.

Each task is a thin wrapper around a `pipeline.jobs` step (or the Ray engine), so the same code runs in unit
tests; flows/tasks.py says how tasks keep their results.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import polars as pl
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.artifacts import png_artifact
from flows.engine import analyzer_for, embedder_for, ivfpq_builder_for
from flows.progress import report
from flows.tasks import local_task
from pipeline.config import PipelineConfig
from pipeline.jobs.build import (
    BuildSummary,
    BuiltIndexes,
    build_indexes,
    describe_variants,
    evaluate,
    id_table,
    manifest_for,
    snapshot_files,
    with_bm25,
)
from pipeline.jobs.embedder import EmbedCounts
from pipeline.jobs.lexical import AnalyzedShard, build_bm25
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import PreparedRun, make_chunker, prepare
from pipeline.jobs.shards import ShardResult, load_vectors
from pipeline.models.cache import CachedQueries
from pipeline.models.card import ModelCard
from pipeline.models.encoder import cached_encoder
from pipeline.quality.golden import golden_set_of
from pipeline.reports.markdown import build_markdown
from pipeline.reports.plots import quality_vs_bytes_png
from pipeline.snapshots.aliases import Promotion, promote_or_stay, read_alias
from pipeline.snapshots.snapshot import new_version, publish
from pipeline.storage.backend import Storage, redact

# What a job hands build_snapshot to plan its build: a jobs.plan function with the config bound, called with
# storage=, model_fingerprint= and chunking= (the chunker's parameters)
Planner = Callable[..., BuildPlan]


@local_task(name="plan the build")
def plan_task(planner: Planner, storage: Storage, card: ModelCard, chunking: dict) -> BuildPlan:
    return planner(storage=storage, model_fingerprint=card.fingerprint, chunking=chunking)


@local_task(name="read, shard and chunk")
def prepare_task(cfg: PipelineConfig, storage: Storage, run_id: str, plan: BuildPlan) -> PreparedRun:
    return prepare(cfg, storage, run_id, plan.delta)


@local_task(name="embed shards")
def embed_task(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun) -> EmbedCounts:
    embedder = embedder_for(cfg, storage, prepared.counts["chunks_redone"])
    done: list[ShardResult] = []

    def progress(result: ShardResult) -> None:
        done.append(result)
        report("embedding shards", len(done), len(prepared.shards))

    report("embedding shards", 0, len(prepared.shards))
    return EmbedCounts.of(embedder.embed(prepared.run_id, prepared.shards, progress), embedder.where)


@local_task(name="analyse shards for bm25")
def analyze_task(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun) -> dict:
    """The bm25 map step, shard by shard; its counts join the run's (bm25_*)."""
    analyzer = analyzer_for(cfg, storage, prepared.counts["chunks_redone"])
    done: list[AnalyzedShard] = []

    def progress(result: AnalyzedShard) -> None:
        done.append(result)
        report("analysing shards for bm25", len(done), len(prepared.shards))

    results = analyzer.analyze(prepared.run_id, prepared.shards, progress)
    fresh = [r for r in results if not r.skipped]
    return {"bm25_analysed_in": analyzer.where, "bm25_analysed": sum(r.analysed for r in fresh),
            "bm25_terms_from_cache": sum(r.cached for r in fresh),
            "bm25_analyse_seconds": round(sum(r.seconds for r in fresh), 3)}


@local_task(name="build the bm25 index")
def bm25_task(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun, built: BuiltIndexes,
              ids: pl.DataFrame) -> BuiltIndexes:
    """The bm25 reduce step: corpus-wide statistics from the shards', postings scored with them."""
    return with_bm25(cfg, built, *build_bm25(storage, prepared.run_id, prepared.shards, ids, cfg.index.bm25))


def bm25_stage(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun, built: BuiltIndexes,
               ids: pl.DataFrame) -> tuple[BuiltIndexes, dict]:
    """The bm25 variant, timed as one stage: the map (per shard) then the reduce; their counts (bm25_*)."""
    counts = analyze_task(cfg, storage, prepared)
    start = time.perf_counter()
    built = bm25_task(cfg, storage, prepared, built, ids)
    return built, counts | {"bm25_reduce_seconds": round(time.perf_counter() - start, 3)}


@local_task(name="build indexes")
def index_task(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun,
               plan: BuildPlan) -> tuple[BuiltIndexes, pl.DataFrame]:
    embedded, vectors = load_vectors(storage, prepared.run_id, prepared.shards)
    return build_indexes(cfg, vectors, ivfpq_builder_for(cfg), plan.training), id_table(embedded)


@local_task(name="evaluate on golden queries")
def evaluate_task(cfg: PipelineConfig, storage: Storage, built: BuiltIndexes, ids: pl.DataFrame,
                  prepared: PreparedRun) -> dict:
    encoder = CachedQueries(cached_encoder(cfg.model), storage)  # the golden set is encoded once per model
    return evaluate(built, ids, golden_set_of(cfg), encoder, prepared.counts["max_chunks_per_doc"],
                    cfg.evaluation.k)


@local_task(name="publish snapshot")
def publish_task(cfg: PipelineConfig, storage: Storage, files: dict[str, bytes], manifest: dict,
                 run_id: str) -> tuple[str, str]:
    version = new_version()
    return publish(storage, cfg.index_name, version, files, manifest, publisher=run_id), version


@local_task(name="promote through the quality gate")
def promote_task(cfg: PipelineConfig, storage: Storage, version: str, seen: str | None, job: str) -> Promotion:
    """Move the alias from the version seen when the run started. A gate refusal leaves it there, and so
    does an overlapping run that promoted first (AliasMoved): this version stays published, not live."""
    outcome = promote_or_stay(storage, cfg.index_name, cfg.publish.alias, version, seen, cfg.publish.gate,
                              by=f"{job} {version}")
    if not outcome.promoted:
        get_run_logger().warning("%s", outcome.reason)
    return outcome


def artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())


def default_run_id(cfg: PipelineConfig, job: str) -> str:
    """The flow run's id: rerunning a failed flow run (Retry in the Prefect UI, or flow retries) resumes its
    committed shards instead of starting over."""
    return cfg.run.run_id or (f"{job}-{flow_run.id}" if flow_run.id else new_version())


def build_snapshot(cfg: PipelineConfig, storage: Storage, run_id: str, job: str, planner: Planner) -> BuildSummary:
    """Run the stages, publish a new version and promote it through the gate; returns the run's summary."""
    logger = get_run_logger()
    # What the alias points at now: promotion moves it from here, or not at all (an overlapping run that
    # promoted meanwhile makes this one's promote fail instead of silently overwriting it).
    seen = read_alias(storage, cfg.index_name, cfg.publish.alias).version if cfg.publish.alias else None
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        timings[name] = round(time.perf_counter() - start, 2)
        logger.info("%s: %.1f s", name, timings[name])
        return out

    card = cached_encoder(cfg.model).card
    plan = timed("compare", plan_task, planner, storage, card, make_chunker(cfg).params)
    logger.info("%s", plan.why)
    prepared = timed("prepare", prepare_task, cfg, storage, run_id, plan)
    embedded = timed("embed", embed_task, cfg, storage, prepared)
    built, ids = timed("index", index_task, cfg, storage, prepared, plan)
    analysed = {}
    if cfg.index.lexical:
        built, analysed = timed("bm25", bm25_stage, cfg, storage, prepared, built, ids)
    evaluation = timed("evaluate", evaluate_task, cfg, storage, built, ids, prepared)
    counts = {**prepared.counts, **embedded.to_dict(), **analysed}
    files = snapshot_files(built, ids)
    index_params = describe_variants(built.params, files, evaluation)
    manifest = manifest_for(cfg, run_id, job, plan, card, prepared, index_params, counts, evaluation, timings)
    url, version = timed("publish", publish_task, cfg, storage, files, manifest, run_id)
    promotion = timed("promote", promote_task, cfg, storage, version, seen, job) if cfg.publish.alias else None
    summary = BuildSummary(job, cfg.index_name, version, redact(url), run_id, plan.why, counts, evaluation,
                           index_params, timings, promotion)
    create_markdown_artifact(build_markdown(summary), key=artifact_key(job, cfg.index_name),
                             description=f"{job} of {cfg.index_name}: version {version}")
    if evaluation.get("modes"):  # quality against size per search mode, on the artifact's page
        png_artifact(quality_vs_bytes_png(index_params, f"{cfg.index_name} {version}: nDCG@10 against bytes"),
                     key=artifact_key("quality", cfg.index_name),
                     description=f"nDCG@10 against bytes per vector, {cfg.index_name} {version}")
    return summary
