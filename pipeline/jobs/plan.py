"""What a build does before it reads a document: which documents it redoes, the version it starts from, why, and
whose IVF-PQ training it may reuse, as one typed plan.

- full build: every document is redone; nothing is reused.
- incremental reindex: against the version the alias serves, embedded with the same model: new and changed
  documents are redone, deleted ones dropped, the rest kept (pipeline/corpus/delta.py).
- backfill: a selection is redone, everything else kept as it is live.
- migration: a full build with a new model; its lineage names the live (blue) version, whose training it may
  not reuse (another model's vectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from pipeline.config import BM25, PipelineConfig
from pipeline.corpus.delta import Selection
from pipeline.errors import InputError
from pipeline.index.analyzer import Analyzer, fingerprint
from pipeline.index.training import FULL_BUILD, Training
from pipeline.index.variants import KINDS, Int8
from pipeline.jobs.prepare import ShardInput
from pipeline.snapshots.aliases import read_alias
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage
from pipeline.storage.layout import IDS


@dataclass(frozen=True)
class BuildPlan:
    against: ShardInput  # what each shard is compared with: the live version and a backfill's selection
    base: str | None  # the version this build starts from (its manifest's lineage), None for a first build
    why: str  # one line for the summary and the manifest: what kind of build, against what
    training: Training = FULL_BUILD  # IVF-PQ training to reuse, and why (or why not)
    kept_chunking: dict | None = None  # a backfill's kept documents, where chunked otherwise than this build's

    def lineage(self, job: str) -> dict:
        kept = {"kept_documents_chunking": self.kept_chunking} if self.kept_chunking else {}
        return {"job": job, "base": self.base, "how": self.why, **kept}


def reusable_training(storage: Storage, index_name: str, version: str | None, model_fingerprint: str,
                      chunking: dict) -> Training:
    """The trainings of a committed version that a build may reuse (IVF-PQ's quantizer and codebooks, int8's ranges,
    int8-ivf's both), and why (or why not). Only a version embedded with the same model and chunked with the same
    parameters qualifies: codebooks trained on another model's vectors (even of the same dims) would quantise this
    build's vectors into the wrong cells."""
    if version is None:
        return FULL_BUILD
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
    kept = {name: p for name, p in params.items() if p["kind"] in KINDS and KINDS[p["kind"]].keeps_training}
    # a flat int8 variant's training is its ranges, in the manifest: its index is not read
    return Training({name: (Int8.trained_of(p) if p["kind"] == Int8.name else snapshot.trained(name),
                            {**p, "trained_in": p.get("trained_in", version)}) for name, p in kept.items()},
                    why=f"the same model ({model_fingerprint}), chunker parameters and plan as version {version}")


def _terms_not_cached(cfg: PipelineConfig, manifest: dict) -> str | None:
    """Why the live version's chunks have no terms in the cache for this config's analyzer, or None."""
    live = manifest["index"]["variants"].get(BM25)
    if live is None:
        return f"the live version {manifest['version']} has no bm25 variant"
    ours, theirs = Analyzer.of(cfg.index.bm25).fingerprint, fingerprint(live["analyzer"])
    if theirs != ours:
        return f"the live version {manifest['version']}'s bm25 terms come from another analyzer ({theirs}, not {ours})"
    return None


def plan_full_build(storage: Storage, cfg: PipelineConfig, model_fingerprint: str, chunking: dict, why: str,
                    base: str | None = None) -> BuildPlan:
    """Every document redone; `base` (a migration's blue) is lineage only unless its training qualifies."""
    return BuildPlan(ShardInput(None), base, why,
                     reusable_training(storage, cfg.index_name, base, model_fingerprint, chunking))


def plan_build(storage: Storage, cfg: PipelineConfig, model_fingerprint: str, chunking: dict,
               selection: Selection | None = None) -> BuildPlan:
    """An incremental reindex (or, with a `selection`, a backfill) against the snapshot the alias serves. With
    nothing comparable live (no alias, the same model computed otherwise) an incremental run is a full build; live
    of another model is refused (a model changes through a migration, or a requested full build); a backfill needs
    a live snapshot of the same model, since it keeps the rest of it."""
    alias = cfg.publish.alias
    version = read_alias(storage, cfg.index_name, alias).version if alias else None
    snapshot = Snapshot.of(storage, cfg.index_name, version) if version else None
    if snapshot is None:
        reason = f"alias {cfg.index_name}/{alias} is not set" if alias else "publish.alias is not set"
    elif selection is None and (live_model := snapshot.manifest["model"]["name"]) != cfg.model.name:
        # after a migration, a nightly reindex with the config's old model would rebuild every document with it and
        # either undo the migration through the gate or be refused every night, new documents never served
        raise InputError(f"reindex of {cfg.index_name}: the live version {version} was embedded with {live_model}, "
                         f"not this config's {cfg.model.name}: a reindex keeps live's model (after a migration, set "
                         f"model.name: {live_model} in the config); `embedpipe migrate` changes it, and --full "
                         f"rebuilds every document with {cfg.model.name} anyway")
    elif snapshot.manifest["model"]["fingerprint"] != model_fingerprint:
        reason = (f"the live version {version} was embedded with {snapshot.manifest['model']['name']} computed "
                  "otherwise (another model fingerprint: weights, precision or settings)")
    elif not {"doc_hash", "bucket"} <= set(pq.read_schema(snapshot.storage.path(IDS),
                                                         filesystem=snapshot.storage.fs).names):
        reason = f"the live version {version} has no document hashes or buckets (written by an older embedpipe)"
    elif cfg.index.lexical and (why_not := _terms_not_cached(cfg, snapshot.manifest)):
        # Kept rows carry no text: their terms must come from the term cache, which only a bm25 build with this
        # analyzer filled. A full build analyses every chunk; its vectors still come from the embedding cache.
        if selection is not None:
            raise InputError(f"backfill of {cfg.index_name}: {why_not}; a backfill keeps the rest of the live "
                             "snapshot, so reindex first (embedpipe run) to give it a bm25 index")
        return BuildPlan(ShardInput(None), version, f"full build: {why_not}",
                         reusable_training(storage, cfg.index_name, version, model_fingerprint, chunking))
    else:
        how = f"backfill of {selection.describe()}" if selection else "incremental"
        live_chunking = snapshot.manifest.get("chunking")
        # a backfill with a new chunker: the manifest's `chunking` is this build's, the kept documents keep live's
        kept = live_chunking if selection and live_chunking != chunking else None
        # live may itself be a backfill: then its own kept documents were chunked otherwise again
        earlier = snapshot.manifest.get("lineage", {}).get("kept_documents_chunking")
        some = f", some with {earlier}" if earlier and earlier != live_chunking else ""
        return BuildPlan(ShardInput(snapshot.storage, selection), version,
                         f"{how} against live version {version}" +
                         (f"; the other documents keep live's chunks (chunked with {live_chunking}{some})" if kept
                          else ""),
                         reusable_training(storage, cfg.index_name, version, model_fingerprint, chunking), kept)
    if selection is not None:
        raise InputError(f"backfill of {cfg.index_name}: {reason}; a backfill keeps the rest of the live snapshot, "
                         "so it needs one embedded with this model (use migrate for a new model)")
    return BuildPlan(ShardInput(None), None, f"full build: {reason}")
