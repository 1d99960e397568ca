"""The tasks every build job shares, and `build_snapshot`, which runs them in order:

plan (what to redo, against which version, the new version's id) -> read pieces and prepare shards -> embed ->
index (train once, fill per shard, assemble the version's files) -> bm25 (analyse per shard, then reduce) ->
evaluate -> commit -> promote through the gate.

Each task is a thin wrapper around `pipeline.jobs` steps; flows/engine.py decides where they run (this process, or
Ray tasks and actors), and the driver only sums what comes back. flows/tasks.py says how tasks keep their results.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.artifacts import MAX_INLINE_BYTES, after_the_fact, png_artifact
from flows.engine import early_embedder, embedder_for, executor_for, kernels_for_actors, start_ray_ahead
from flows.live import measure_task
from flows.progress import report
from flows.tasks import local_task
from operators.faults import maybe_exit_after_commit
from pipeline.config import PipelineConfig
from pipeline.corpus.pieces import listing_digest
from pipeline.corpus.readers import list_corpus
from pipeline.errors import SelectionError, StorageError
from pipeline.index.build_variants import check_variant_dims
from pipeline.jobs.build import (
    BuildSummary,
    Evaluated,
    StagedIndexes,
    build_indexes,
    describe_variants,
    evaluate_version,
    manifest_for,
    with_bm25,
)
from pipeline.jobs.current import live_if_current, live_if_listing_unchanged, unpromoted_twin
from pipeline.jobs.embedder import EmbedCounts
from pipeline.jobs.executor import Executor, LocalExecutor, one_task_cpus
from pipeline.jobs.lexical import Bm25Build, build_bm25
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import PreparedRun, decide_files, make_chunker, prepare
from pipeline.jobs.run_folder import (
    RunVersion,
    check_run_unchanged,
    committed_unfinished,
    mark_finished,
    prepared_settings,
    remove_work,
    run_version,
)
from pipeline.jobs.shards import ShardResult
from pipeline.jobs.worker import peak_rss_mb
from pipeline.models.card import ModelCard
from pipeline.models.encoder import cached_encoder, pinned_to
from pipeline.quality.golden import golden_set_of
from pipeline.quality.golden_runs import shared_judgments
from pipeline.redaction import redact
from pipeline.reports.markdown import build_markdown
from pipeline.reports.plots import quality_vs_bytes_png
from pipeline.snapshots.aliases import Promotion, promote_or_stay, read_alias
from pipeline.snapshots.gate import other_golden_set
from pipeline.snapshots.publishing import claim, commit, new_version
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage import layout
from pipeline.storage.backend import Storage

if TYPE_CHECKING:
    from operators.embedding import RayEmbedder

# What a job hands build_snapshot to plan its build: a jobs.plan function with the config bound, called with
# storage=, model_fingerprint= and chunking= (the chunker's parameters)
Planner = Callable[..., BuildPlan]


@local_task(name="plan the build")
def plan_task(planner: Planner, storage: Storage, card: ModelCard, chunking: dict) -> BuildPlan:
    return planner(storage=storage, model_fingerprint=card.fingerprint, chunking=chunking)


@local_task(name="read pieces and prepare shards")
def prepare_task(cfg: PipelineConfig, storage: Storage, run_id: str, plan: BuildPlan, card: ModelCard,
                 executor: Executor) -> PreparedRun:
    return prepare(cfg, storage, run_id, plan.against, card, executor)


@local_task(name="embed shards")
def embed_task(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun, early: RayEmbedder | None) -> EmbedCounts:
    embedder = embedder_for(cfg, storage, prepared.counts["to_embed"], early)
    done: list[ShardResult] = []

    def progress(result: ShardResult) -> None:
        done.append(result)
        report("embedding shards", len(done), len(prepared.shards))

    report("embedding shards", 0, len(prepared.shards))
    return EmbedCounts.of(embedder.embed(prepared.run_id, prepared.largest_first(), progress), embedder.where)


@local_task(name="build indexes")
def index_task(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun, plan: BuildPlan, target: Storage,
               card: ModelCard, executor: Executor) -> StagedIndexes:
    return build_indexes(cfg, storage, prepared, target, plan, card.dims, executor)


@local_task(name="build the bm25 index")
def bm25_task(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun, target: Storage,
              executor: Executor) -> Bm25Build:
    return build_bm25(cfg, storage, prepared, target, executor)


@local_task(name="evaluate on golden queries")
def evaluate_task(cfg: PipelineConfig, storage: Storage, target: Storage, staged: StagedIndexes, card: ModelCard,
                  prepared: PreparedRun, executor: Executor) -> Evaluated:
    """Where the build's other steps run: on a Ray worker for a build on Ray (the driver never loads the indexes)."""
    if executor.where != LocalExecutor.where:  # a worker encodes the golden queries with this process's kernel
        cfg = cfg.model_copy(update={"model": pinned_to(cfg.model, cached_encoder(cfg.model))})
    return executor.map(partial(evaluate_version, cfg, storage, staged, card, prepared), [target],
                        cpus=one_task_cpus(cfg.run))[0]


@local_task(name="promote through the quality gate")
def promote_task(cfg: PipelineConfig, storage: Storage, version: str, seen: str | None, job: str) -> Promotion:
    """Move the alias from the version seen when the run started. A gate refusal leaves it there, and so
    does an overlapping run that promoted first (AliasMoved): this version stays published, not live."""
    gate = cfg.publish.gate
    # live's numbers on this build's golden set where it was measured on another; else as recorded, with both on
    # the judgments both can find
    remeasured = live_measured_again(cfg, storage, version, seen)
    shared = None if remeasured else shared_judgments(storage, cfg.index_name, version, seen, gate)
    outcome = promote_or_stay(storage, cfg.index_name, cfg.publish.alias, version, seen, gate, by=f"{job} {version}",
                              live_evaluation=remeasured, shared=shared)
    if not outcome.promoted:
        get_run_logger().warning("%s", outcome.reason)
    return outcome


def live_measured_again(cfg: PipelineConfig, storage: Storage, version: str, seen: str | None) -> dict | None:
    """Live's evaluation measured again on this build's golden set and depth, where live's manifest recorded it on
    others (judgments edited since, another evaluation.k): the gate then compares like with like, as a migration
    does. None where the two compare as recorded, or live cannot be measured in the gate's mode, or the alias moved
    from `seen` (promote then says so, and `seen` may be gone)."""
    if seen is None or seen == version or read_alias(storage, cfg.index_name, cfg.publish.alias).version != seen:
        return None
    candidate, live = (Snapshot.of(storage, cfg.index_name, v) for v in (version, seen))
    why = other_golden_set(candidate.manifest.get("evaluation"), live.manifest.get("evaluation"))
    golden = golden_set_of(cfg) if why else None
    if golden is None or cfg.publish.gate.mode not in (live.manifest.get("evaluation") or {}).get("modes", {}):
        return None
    get_run_logger().info("live version %s and this build were measured %s: measuring live again on this build's",
                          seen, why)
    return measure_task.with_options(name="measure live on this build's golden set")(
        live, golden, cfg.evaluation.k, cfg.publish.gate.mode, storage, cfg.run).evaluation()


def artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())


def default_run_id(cfg: PipelineConfig, job: str) -> str:
    """The flow run's id: rerunning a failed flow run (Retry in the Prefect UI, or flow retries) resumes its
    committed shards instead of starting over."""
    return cfg.run.run_id or (f"{job}-{flow_run.id}" if flow_run.id else new_version())


def finish_run(cfg: PipelineConfig, storage: Storage, run_id: str) -> None:
    """The run's work files go once it finished (pipeline/jobs/run_folder.py), unless run.keep_work. A failure to
    delete them is logged, not raised: the version is published, and no later run needs them."""
    if cfg.run.keep_work:
        return
    try:
        remove_work(storage, run_id)
    except StorageError as exc:
        get_run_logger().warning("run %s finished, but its work files stay under %s: %s", run_id,
                                 redact(storage.url_of(layout.run_key(run_id, ""))), exc)


def publish_nothing(cfg: PipelineConfig, storage: Storage, job: str, run_id: str, counts: dict,
                    timings: dict[str, float], existing: Snapshot, why: str,
                    promotion: Promotion | None = None) -> BuildSummary:
    """The summary of a run that found the version it would publish already there (live, or a twin the gate
    refused): its counts (every input line), that version's quality and index."""
    get_run_logger().info("%s", why)
    summary = BuildSummary(job, cfg.index_name, existing.version, redact(existing.storage.url), run_id, why, counts,
                           existing.manifest.get("evaluation", {}), existing.manifest["index"], timings, promotion,
                           published=False)
    create_markdown_artifact(build_markdown(summary), key=artifact_key(job, cfg.index_name),
                             description=f"{job} of {cfg.index_name}: {why.partition(':')[0]}")
    finish_run(cfg, storage, run_id)
    return summary


def finish_committed(cfg: PipelineConfig, storage: Storage, job: str, run_id: str, committed: RunVersion,
                     timings: dict[str, float]) -> BuildSummary:
    """A retried run whose earlier attempt committed its version and stopped: promote that version from where the
    attempt saw the alias (a no-op where it promoted already) and finish, instead of building a second version."""
    get_run_logger().info("run %s committed version %s before it stopped: promoting it, not building again", run_id,
                          committed.version)
    promotion = None
    if cfg.publish.alias:
        promotion = timed_into(timings, "promote", promote_task, cfg, storage, committed.version, committed.seen, job)
    return finish_published(cfg, storage, committed_summary(cfg, storage, job, run_id, committed.version, timings,
                                                            promotion))


def committed_summary(cfg: PipelineConfig, storage: Storage, job: str, run_id: str, version: str,
                      timings: dict[str, float], promotion: Promotion | None = None) -> BuildSummary:
    """The summary of a version this run committed in an earlier attempt, from its manifest."""
    manifest = Snapshot.of(storage, cfg.index_name, version).manifest
    return BuildSummary(job, cfg.index_name, version, redact(storage.url_of(layout.snapshot_prefix(cfg.index_name,
                        version))), run_id, manifest["lineage"].get("how", ""), manifest["counts"],
                        manifest.get("evaluation", {}), manifest["index"], manifest["timings_s"] | timings, promotion)


def finish_published(cfg: PipelineConfig, storage: Storage, summary: BuildSummary) -> BuildSummary:
    """The run's end once its version is published and promoted: recorded as finished, its artifacts (the summary,
    quality against size), its work files removed. An artifact that fails is logged: the version is out, and a
    retry would only fail the same way."""
    mark_finished(storage, summary.run_id)
    after_the_fact(f"version {summary.version} is published", partial(publish_artifacts, cfg, storage, summary))
    finish_run(cfg, storage, summary.run_id)
    return summary


def publish_artifacts(cfg: PipelineConfig, storage: Storage, summary: BuildSummary) -> None:
    """The summary in markdown; the chart of quality against bytes per search mode, inlined, or kept in the run's
    folder and linked where it is too large to inline (many variants)."""
    job, version = summary.job, summary.version
    create_markdown_artifact(build_markdown(summary), key=artifact_key(job, cfg.index_name),
                             description=f"{job} of {cfg.index_name}: version {version}")
    if not summary.evaluation.get("modes"):
        return
    png, link = quality_vs_bytes_png(summary.index, f"{cfg.index_name} {version}: nDCG@10 against bytes"), None
    if len(png) > MAX_INLINE_BYTES:
        key = layout.run_key(summary.run_id, "quality_vs_bytes.png")
        storage.write_bytes(key, png)
        link = redact(storage.url_of(key))
    png_artifact(png, key=artifact_key("quality", cfg.index_name), link=link,
                 description=f"nDCG@10 against bytes per vector, {cfg.index_name} {version}")


def timed_into(timings: dict[str, float], name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    timings[name] = round(time.perf_counter() - start, 2)
    get_run_logger().info("%s: %.1f s", name, timings[name])
    return out


@contextmanager
def resumable(run_id: str) -> Iterator[None]:
    """An error out of a run names its id, which resumes it: the CLI prints the note under its error line."""
    try:
        yield
    except SelectionError:  # a resume would stop at the same place: fixing the selection makes another run
        raise
    except Exception as exc:
        note = f"run {run_id}: `--run-id {run_id}` resumes it, keeping what it committed"
        if note not in getattr(exc, "__notes__", ()):  # a migration's build is inside its own
            exc.add_note(note)
        raise


def build_snapshot(cfg: PipelineConfig, storage: Storage, run_id: str, job: str, planner: Planner,
                   full: bool = False) -> BuildSummary:
    """Run the stages, publish a new version and promote it through the gate; returns the run's summary. `full`:
    the planner redoes every document (then the run is sure to use Ray for a corpus big enough for actors)."""
    with resumable(run_id):
        return _build_snapshot(cfg, storage, run_id, job, planner, full)


def _build_snapshot(cfg: PipelineConfig, storage: Storage, run_id: str, job: str, planner: Planner,
                    full: bool) -> BuildSummary:
    logger = get_run_logger()
    # What the alias points at now: promotion moves it from here, or not at all (an overlapping run that
    # promoted meanwhile makes this one's promote fail instead of silently overwriting it).
    seen = read_alias(storage, cfg.index_name, cfg.publish.alias).version if cfg.publish.alias else None
    timings: dict[str, float] = {}
    if committed := committed_unfinished(storage, run_id, cfg.index_name, seen):
        return finish_committed(cfg, storage, job, run_id, committed, timings)
    timed = partial(timed_into, timings)
    files = list_corpus(cfg.corpus)
    input_bytes, listing = sum(f.size for f in files), listing_digest(files)  # listed before anything is read
    start_ray_ahead(cfg, storage, full, input_bytes)  # its workers import torch while this process loads the model
    cfg, why = kernels_for_actors(cfg, storage, run_id, input_bytes)
    if why:
        logger.info("model.precision auto: %s", why)
    encoder = cached_encoder(cfg.model)
    card = encoder.card
    check_variant_dims(cfg.index, card.dims, card.name)
    chunking = make_chunker(cfg).params
    logger.info("model %s computes in %s", card.name, encoder.kernel_plan.summary())
    executor = executor_for(cfg, input_bytes)
    plan = timed("compare", plan_task, planner, storage, card, chunking)
    logger.info("%s", plan.why)
    # before any read; a resumed attempt against another live version, corpus or settings is refused
    check_run_unchanged(storage, run_id, listing, prepared_settings(cfg, chunking, plan.against, card))
    if current := live_if_listing_unchanged(cfg, storage, plan, files, job, lambda: timed(
            "hash files", decide_files, cfg, storage, run_id, plan.against, executor, files)):
        live, why_current, counts = current
        return publish_nothing(cfg, storage, job, run_id, counts, timings, live, why_current)
    early = early_embedder(cfg, storage, plan, executor, input_bytes)  # actors start while prepare runs
    try:
        prepared = timed("prepare", prepare_task, cfg, storage, run_id, plan, card, executor)
        current = live_if_current(cfg, storage, plan, prepared, job)
        twin = None if current else unpromoted_twin(cfg, storage, plan, prepared, job)
    except BaseException as exc:
        if early is not None:
            early.close()
        if isinstance(exc, SelectionError):  # nothing a resume could use: its work files go now
            finish_run(cfg, storage, run_id)
        raise
    if (current or twin) and early is not None:
        early.close()
    if current:
        return publish_nothing(cfg, storage, job, run_id, prepared.counts, timings, *current)
    if twin:  # asked again: a gate relaxed since may take it
        version = twin[0].version
        promotion = timed("promote", promote_task, cfg, storage, version, seen, job) if cfg.publish.alias else None
        return publish_nothing(cfg, storage, job, run_id, prepared.counts, timings, *twin, promotion)
    embedded = timed("embed", embed_task, cfg, storage, prepared, early)
    version = run_version(storage, run_id, cfg.index_name, seen)
    claim(storage, cfg.index_name, version, publisher=run_id)
    target = storage.child(layout.snapshot_prefix(cfg.index_name, version))
    staged = timed("index", index_task, cfg, storage, prepared, plan, target, card, executor)
    lexical = {}
    if cfg.index.lexical:
        bm25 = timed("bm25", bm25_task, cfg, storage, prepared, target, executor)
        staged, lexical = with_bm25(cfg, staged, bm25.staged), bm25.counts
    evaluated = timed("evaluate", evaluate_task, cfg, storage, target, staged, card, prepared, executor)
    evaluation = evaluated.evaluation
    counts = {**prepared.counts, **embedded.to_dict(), **lexical, "executor": executor.where,
              "driver_peak_rss_mb": peak_rss_mb()}  # this process: it holds counts, not the corpus
    index_params = describe_variants(staged.params, staged.files, evaluation)
    manifest = manifest_for(cfg, run_id, job, plan, card, encoder.kernel_plan, prepared, index_params, counts,
                            evaluation, timings, why, listing)
    url = timed("publish", commit, storage, cfg.index_name, version, staged.files | evaluated.files,
                manifest)
    maybe_exit_after_commit()
    promotion = timed("promote", promote_task, cfg, storage, version, seen, job) if cfg.publish.alias else None
    return finish_published(cfg, storage, BuildSummary(job, cfg.index_name, version, redact(url), run_id, plan.why,
                                                       counts, evaluation, index_params, timings, promotion))
