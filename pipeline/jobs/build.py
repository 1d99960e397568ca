"""The build after embedding, as plain steps: indexes over the committed vectors (written shard by shard into the
version folder, pipeline/jobs/indexing.py), their evaluation on the golden set, the manifest, and the typed summary
a build job returns.

    plan (jobs/plan.py) -> prepare (jobs/prepare.py) -> embed (jobs/embedder.py) -> index (-> bm25,
    jobs/lexical.py) -> evaluate -> commit the manifest (snapshots/snapshot.py) -> promote (snapshots/aliases.py)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial

from pipeline.config import BM25, PipelineConfig
from pipeline.index.plan import plan_rescore_factor
from pipeline.index.training import FULL_BUILD
from pipeline.jobs.executor import Executor
from pipeline.jobs.indexing import FileEntry, assemble, index_shard, row_layout, train
from pipeline.jobs.kept_codes import RESCORE, live_codes
from pipeline.jobs.lexical import StagedBm25
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import PreparedRun
from pipeline.models.cache import CachedQueries
from pipeline.models.card import ModelCard
from pipeline.models.encoder import Encoder, cached_encoder
from pipeline.models.kernel_plan import KernelPlan
from pipeline.quality.drift import VectorMoments
from pipeline.quality.fusion import Fusion
from pipeline.quality.golden import GoldenSet, coverage, golden_set_of
from pipeline.quality.golden_runs import golden_files
from pipeline.quality.measure import drift_stats
from pipeline.quality.search import Searcher, variant_of
from pipeline.snapshots.aliases import Promotion
from pipeline.snapshots.manifest import build_manifest
from pipeline.snapshots.snapshot import FORMAT_VERSION, Snapshot, sha256
from pipeline.storage import layout
from pipeline.storage.backend import Storage


@dataclass(frozen=True)
class StagedIndexes:
    """A version's files, written but not committed: the manifest's "index" section and each file's checksum."""

    params: dict
    files: dict[str, dict]  # name -> {"sha256", "bytes"}
    rows: int
    moments: VectorMoments | None = None  # the drift statistics' sums over every vector, added up from the shards


def build_indexes(cfg: PipelineConfig, storage: Storage, prepared: PreparedRun, target: Storage, plan: BuildPlan,
                  dims: int, executor: Executor) -> StagedIndexes:
    """Train every variant once on a bounded sample, fill them shard by shard on the executor's workers (the rows
    an incremental build keeps with live's codes where it shares live's training: jobs/kept_codes.py), and
    assemble each snapshot file in the version folder `target` (pipeline/jobs/indexing.py)."""
    shards = row_layout(prepared.shards, prepared.shard_rows)
    trained = train(cfg, storage, prepared.run_id, shards, dims, executor, plan.training)
    live = live_codes(plan.against.live, trained, cfg.index.store_fp16, dims)
    moments = executor.map(partial(index_shard, storage, prepared.run_id, trained=trained,
                                   store_fp16=cfg.index.store_fp16, dims=dims, live=live), shards)
    # a backfill's version records no files or documents table: its kept documents are live's, not the files'
    tables = [layout.DOCUMENTS, layout.FILES] if plan.against.selection is None else []
    what = [layout.IDS, *tables, *([RESCORE] if cfg.index.store_fp16 else []), *(t.spec.name for t in trained)]
    written: list[list[FileEntry]] = executor.map(
        partial(assemble, storage, prepared.run_id, target, shards=shards, trained=trained, dims=dims, live=live),
        what)
    files = {e.name: {"sha256": e.sha256, "bytes": e.bytes} for entries in written for e in entries}
    rows = sum(s.rows for s in shards)
    params = {"metric": "inner_product", "variants": {t.spec.name: t.params for t in trained},
              "rescore": rescore_params(cfg, rows)}
    summed = None if not moments or any(m is None for m in moments) else sum(moments[1:], moments[0])
    return StagedIndexes(params, files, rows, summed)


def rescore_params(cfg: PipelineConfig, rows: int) -> dict | None:
    """The manifest's "rescore" entry: the snapshot's fp16 store and how deep searches re-score with it (the
    configured depth, else the one planned for `rows` vectors); None without the store."""
    if not cfg.index.store_fp16:
        return None
    return {"file": layout.RESCORE_STORE, "dtype": "float16",
            "factor": cfg.index.rescore_factor or plan_rescore_factor(rows)}


def with_bm25(cfg: PipelineConfig, staged: StagedIndexes, bm25: StagedBm25) -> StagedIndexes:
    """The staged version with the bm25 variant's files and manifest entry, and the fusion settings hybrid search
    uses."""
    params = {**staged.params, "variants": {**staged.params["variants"], BM25: bm25.params},
              "fusion": Fusion.of(cfg.index.fusion).to_dict()}
    return replace(staged, params=params,
                   files=staged.files | {e.name: {"sha256": e.sha256, "bytes": e.bytes} for e in bm25.files})


def staged_snapshot(target: Storage, staged: StagedIndexes, card: ModelCard, prepared: PreparedRun) -> Snapshot:
    """The written, uncommitted version, opened like a committed one (for its evaluation)."""
    return Snapshot(target, {"format": FORMAT_VERSION, "version": target.url.rsplit("/", 1)[-1],
                             "model": card.to_dict() | {"fingerprint": card.fingerprint}, "index": staged.params,
                             "files": staged.files, "counts": prepared.counts, "corpus": prepared.corpus})


NOT_EVALUATED = "no golden set: set evaluation.queries and evaluation.qrels, or use a BEIR folder as corpus.source"


@dataclass(frozen=True)
class Evaluated:
    evaluation: dict  # the manifest's "evaluation" section; {} without a golden set
    files: dict[str, dict]  # the golden files it wrote into the version folder: name -> {"sha256", "bytes"}


def evaluate(snapshot: Snapshot, golden: GoldenSet | None, encoder: Encoder, k: int, drift_mode: str = "exact",
             moments: VectorMoments | None = None) -> Evaluated:
    """Every search mode on the golden set, the rankings kept in the version folder for later gates
    (pipeline/quality/golden_runs.py), and the drift statistics of `drift_mode` (the monitor's: vector geometry,
    golden-query scores, the relevant/non-relevant gap), the reference a later measurement is compared with.
    `moments`: the version's vectors summed where they were indexed; without them every vector is read."""
    if golden is None:
        return Evaluated({}, {})
    searcher, runs = Searcher.from_snapshot(snapshot, encoder), {}
    modes = searcher.evaluate(golden.queries, golden.qrels, k, runs=runs)
    held, files = frozenset(searcher.doc_ids), {}
    for name, data in golden_files(runs, golden.qrels, golden.queries, held, k).items():
        snapshot.storage.write_bytes(name, data)
        files[name] = {"sha256": sha256(data), "bytes": len(data)}
    evaluation = {"queries": golden.queries_url, "qrels": golden.qrels_url, "golden_sha256": golden.digest, "k": k,
                  "coverage": coverage(golden.queries, golden.qrels, held).to_dict(), "modes": modes}
    if drift_mode in runs:
        stats = drift_stats(snapshot, runs[drift_mode], modes[drift_mode], golden.qrels,
                            geometry=moments.geometry() if moments else None)
        evaluation["drift"] = {"mode": drift_mode, **stats}
    return Evaluated(evaluation, files)


def evaluate_version(cfg: PipelineConfig, storage: Storage, staged: StagedIndexes, card: ModelCard,
                     prepared: PreparedRun, target: Storage) -> Evaluated:
    """`evaluate` of the written version `target` as an executor's step: it loads the version's indexes and id
    table, which grow with the corpus, so a build on Ray runs it on a worker, not in the driver. The golden queries'
    vectors are cached under `storage` by model; `cfg.model` is the kernel the build chose (encoder.pinned_to)."""
    encoder = CachedQueries(cached_encoder(cfg.model), storage)
    return evaluate(staged_snapshot(target, staged, card, prepared), golden_set_of(cfg), encoder, cfg.evaluation.k,
                    cfg.monitor.mode, staged.moments)


def describe_variants(params: dict, files: dict[str, dict], evaluation: dict) -> dict:
    """The manifest's "index" section with each variant's size on disk and measured quality per search mode,
    so a reader can pick a variant by a memory or quality budget."""
    modes = evaluation.get("modes", {})
    variants = {}
    for name, p in params["variants"].items():
        quality = {mode: metrics for mode, metrics in modes.items() if variant_of(mode) == name}
        names = p["files"] if "files" in p else [p["file"], layout.ivfdata_file(name)]
        size = sum(files.get(f, {}).get("bytes", 0) for f in names)
        variants[name] = {**p, "index_bytes": size, "quality": quality}
    return {**params, "variants": variants}


@dataclass(frozen=True)
class BuildSummary:
    """What a build job returns (and the CLI prints; `to_dict` is its --json form)."""

    job: str
    index_name: str
    version: str
    snapshot: str  # the published version's URL, redacted
    run_id: str
    delta: str  # the plan's one line: full, incremental or backfill, against what
    counts: dict
    evaluation: dict
    index: dict  # the manifest's "index" section
    timings_s: dict[str, float]
    promotion: Promotion | None
    published: bool = True  # False: the live version (`version`) is what this build would have published

    def to_dict(self) -> dict:
        return {**asdict(self), "promotion": self.promotion.to_dict() if self.promotion else None}

    def training_notes(self) -> list[str]:
        """'variant: why its training was reused or redone', for variants that had an earlier training to weigh
        (a first or --full build's plain 'trained on this build's vectors' says nothing new)."""
        return [f"{name}: {params['training']}" for name, params in self.index.get("variants", {}).items()
                if params.get("training", FULL_BUILD.why) != FULL_BUILD.why]


def manifest_for(cfg: PipelineConfig, run_id: str, job: str, plan: BuildPlan, card: ModelCard, queries: KernelPlan,
                 prepared: PreparedRun, index: dict, counts: dict, evaluation: dict, timings: dict,
                 workers_chose: str | None = None, listing: str | None = None) -> dict:
    """The manifest of a build (lineage, model card, chunker, index, counts, corpus, quality, timings, config);
    commit adds the version, the files' sha256 and the commit time. The model section says which kernels computed
    the passages' vectors (per shard, where), which plan encodes queries here (with its probe), and why the run
    has its kernel (`workers_chose`, where the workers measured it: flows/engine.py kernels_for_actors). The corpus
    section adds the digest of the listing the build read (`listing`: pipeline/corpus/pieces.py listing_digest),
    except for a backfill."""
    kernels = {"passages": counts.get("kernels", {}), "queries": queries.to_dict(),
               "choice": workers_chose or queries.summary()}
    # a backfill keeps the documents outside its selection as live had them, whatever the corpus holds now: its
    # version does not stand for this listing, and a later reindex must read the corpus to find what changed
    corpus = prepared.corpus | {"listing_sha256": listing if plan.against.selection is None else None}
    return build_manifest(cfg, run_id=run_id, model=card.to_dict() | {"fingerprint": card.fingerprint,
                                                                       "kernels": kernels},
                          chunking=prepared.chunking, index=index, counts=counts, corpus=corpus,
                          evaluation=evaluation, timings=timings, lineage=plan.lineage(job))
