"""Whether an incremental reindex would publish what is already live: no document new, changed or deleted, every
input line counted as live counted it, and the same settings, golden set and libraries. It then publishes nothing:
a copy would cost a version's files in storage and a swap in every serving process, and say nothing new.

Where the corpus's listing (names, sizes, change stamps) is the one live was built from, no document can have
changed and the corpus is not read at all: a scheduled reindex of an unchanged corpus costs a listing, not a read
of every file. So it is where the files are live's but some were written again with the same bytes: it costs a
listing and hashing those files."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from pipeline.config import PipelineConfig
from pipeline.corpus.pieces import InputFile, listing_digest
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import PreparedRun
from pipeline.quality.golden import golden_set_of
from pipeline.snapshots.manifest import library_versions, recorded_config
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage import layout
from pipeline.storage.backend import Storage
from pipeline.storage.layout import MANIFEST

DELTA = ("docs_new", "docs_changed", "docs_deleted")
SAME_COUNTS = ("read", "accepted", "quarantined", "blank_lines", "chunks")
SAME_SECTIONS = ("index_name", "corpus", "chunking", "index", "evaluation")
# how fast vectors are computed, not which: the model's fingerprint, which the plan compared, covers its precision
SPEED_ONLY = ("kernel", "batch_size", "batch_tokens", "cpu_onednn")
CURRENT = ("live version {version} is current: no document new, changed or deleted, and the same settings, golden "
           "set and libraries (--full rebuilds anyway)")


def _model(config: dict) -> dict:
    return {k: v for k, v in config.get("model", {}).items() if k not in SPEED_ONLY}


def same_settings(cfg: PipelineConfig, live: dict, golden_digest: Callable[[], str | None]) -> bool:
    """Whether the live version (its manifest, `live`) was built with this config's settings, golden set
    (`golden_digest` gives GoldenSet.digest, None without one; asked last: it reads the golden set's files) and
    these libraries. A live version with a golden set, built before golden sets were hashed, never qualifies."""
    ours, theirs = recorded_config(cfg), live.get("config", {})
    return (all(ours.get(s) == theirs.get(s) for s in SAME_SECTIONS) and _model(ours) == _model(theirs)
            and ours["monitor"]["mode"] == theirs.get("monitor", {}).get("mode")  # the drift statistics' mode
            and library_versions() == live.get("libraries")
            and golden_digest() == live.get("evaluation", {}).get("golden_sha256"))


def why_live_is_current(cfg: PipelineConfig, live: dict, counts: dict, golden_digest: Callable[[], str | None]
                        ) -> str | None:
    """Why live is what this build would publish, or None when it is not; `counts` are this build's after prepare."""
    if any(counts.get(k) for k in DELTA):
        return None
    if not all(counts.get(k) == live.get("counts", {}).get(k) for k in SAME_COUNTS):
        return None
    return CURRENT.format(version=live["version"]) if same_settings(cfg, live, golden_digest) else None


def _golden_digest(cfg: PipelineConfig) -> Callable[[], str | None]:
    def digest() -> str | None:
        golden = golden_set_of(cfg)
        return golden.digest if golden else None
    return digest


def _comparable_live(storage: Storage, cfg: PipelineConfig, plan: BuildPlan, job: str) -> Snapshot | None:
    """The live version an incremental reindex compares with; None for a full build, a backfill or a migration."""
    if job != "reindex" or plan.against.live is None or plan.against.selection is not None:
        return None
    return Snapshot.of(storage, cfg.index_name, plan.base)


def live_if_current(cfg: PipelineConfig, storage: Storage, plan: BuildPlan, prepared: PreparedRun, job: str
                    ) -> tuple[Snapshot, str] | None:
    """The live version, and why, where this incremental reindex would publish what it holds; None otherwise (a
    full build, a backfill, a migration, or anything that changed)."""
    live = _comparable_live(storage, cfg, plan, job)
    if live is None:
        return None
    why = why_live_is_current(cfg, live.manifest, prepared.counts, _golden_digest(cfg))
    return (live, why) if why else None


def unpromoted_twin(cfg: PipelineConfig, storage: Storage, plan: BuildPlan, prepared: PreparedRun, job: str
                    ) -> tuple[Snapshot, str] | None:
    """The newest committed version, and why, where it is what this incremental reindex would publish again, not live:
    built on the live version this build starts from, by the same job, from the same documents (corpus fingerprint
    and input counts), with the same settings, golden set and libraries. The gate that refused it (or a rollback
    from it) would meet a copy the same way: a nightly run after a refused build published a copy every night."""
    live = _comparable_live(storage, cfg, plan, job)
    if live is None:
        return None
    prefix = layout.index_prefix(cfg.index_name)
    newest = next((v for v in reversed(storage.list(prefix)) if storage.exists(f"{prefix}/{v}/{MANIFEST}")), None)
    if newest in (None, live.version):
        return None
    twin = Snapshot.of(storage, cfg.index_name, newest)
    made = twin.manifest
    if (made["lineage"].get("base"), made["lineage"].get("job")) != (live.version, job) \
            or made["corpus"]["fingerprint"] != prepared.corpus["fingerprint"] \
            or any(prepared.counts.get(k) != made["counts"].get(k) for k in SAME_COUNTS):
        return None
    if not same_settings(cfg, made, _golden_digest(cfg)):
        return None
    return twin, (f"version {newest}, not live, holds what this build would publish (the same documents, settings, "
                  f"golden set and libraries on live {live.version}): promoting it through the gate instead")


def live_if_listing_unchanged(cfg: PipelineConfig, storage: Storage, plan: BuildPlan, listed: list[InputFile],
                              job: str, decide: Callable[[], pl.DataFrame]) -> tuple[Snapshot, str, dict] | None:
    """live_if_current before any record is read: the live version, why, and the counts to report (live's input
    counts, nothing new), where the `listed` files' digest is the one live recorded, or else every file live read
    is listed and left unread (`decide` says which: jobs/prepare.py decide_files, which hashes the files written
    since) and no other; None otherwise."""
    live = _comparable_live(storage, cfg, plan, job)
    if live is None or not same_settings(cfg, live.manifest, _golden_digest(cfg)):
        return None
    recorded = live.manifest["counts"]
    listing = listing_digest(listed)
    if listing is not None and live.manifest["corpus"].get("listing_sha256") == listing:
        how = "its files have the names, sizes and change stamps live was built from"
    else:
        # the same number of files (a version built before files were recorded has none), every one left unread
        live_files = recorded.get("files_read", 0) + recorded.get("files_unread", 0)
        if live_files != len(listed) or int(decide()["unread"].sum()) != len(listed):
            return None
        how = "its files hold the bytes live was built from (some written again since)"
    counts = {k: recorded[k] for k in SAME_COUNTS} | dict.fromkeys(DELTA, 0) | {"docs_kept": recorded["accepted"]}
    return live, f"{CURRENT.format(version=live.version)}; the corpus was not read: {how}", counts
