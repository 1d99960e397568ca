"""Whether an incremental reindex would publish what is already live: no document new, changed or deleted, every
input line counted as live counted it, and the same settings, golden set and libraries. It then publishes nothing:
a copy would cost a version's files in storage and a swap in every serving process, and say nothing new."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config import PipelineConfig
from pipeline.jobs.plan import BuildPlan
from pipeline.jobs.prepare import PreparedRun
from pipeline.quality.golden import golden_set_of
from pipeline.snapshots.manifest import library_versions, recorded_config
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage

DELTA = ("docs_new", "docs_changed", "docs_deleted")
SAME_COUNTS = ("read", "accepted", "quarantined", "blank_lines", "chunks")
SAME_SECTIONS = ("index_name", "corpus", "chunking", "index", "evaluation")
# how fast vectors are computed, not which: the model's fingerprint, which the plan compared, covers its precision
SPEED_ONLY = ("kernel", "batch_size", "batch_tokens", "cpu_onednn")


def _model(config: dict) -> dict:
    return {k: v for k, v in config.get("model", {}).items() if k not in SPEED_ONLY}


def why_live_is_current(cfg: PipelineConfig, live: dict, counts: dict, golden_digest: Callable[[], str | None]
                        ) -> str | None:
    """Why the live version (its manifest, `live`) is what this build would publish, or None when it is not;
    `counts` are this build's after prepare, `golden_digest` gives its golden set's (GoldenSet.digest; None without
    one), asked for last: it reads the golden set's files. A live version with a golden set, built before golden
    sets were hashed, never qualifies."""
    if any(counts.get(k) for k in DELTA):
        return None
    ours, theirs = recorded_config(cfg), live.get("config", {})
    same = (all(counts.get(k) == live.get("counts", {}).get(k) for k in SAME_COUNTS)
            and all(ours.get(s) == theirs.get(s) for s in SAME_SECTIONS) and _model(ours) == _model(theirs)
            and ours["monitor"]["mode"] == theirs.get("monitor", {}).get("mode")  # the drift statistics' mode
            and library_versions() == live.get("libraries")
            and golden_digest() == live.get("evaluation", {}).get("golden_sha256"))
    if not same:
        return None
    return (f"live version {live['version']} is current: no document new, changed or deleted, and the same settings, "
            "golden set and libraries (--full rebuilds anyway)")


def live_if_current(cfg: PipelineConfig, storage: Storage, plan: BuildPlan, prepared: PreparedRun, job: str
                    ) -> tuple[Snapshot, str] | None:
    """The live version, and why, where this incremental reindex would publish what it holds; None otherwise (a
    full build, a backfill, a migration, or anything that changed)."""
    if job != "reindex" or plan.against.live is None or plan.against.selection is not None:
        return None
    def golden_digest() -> str | None:
        golden = golden_set_of(cfg)
        return golden.digest if golden else None

    live = Snapshot.of(storage, cfg.index_name, plan.base)
    why = why_live_is_current(cfg, live.manifest, prepared.counts, golden_digest)
    return (live, why) if why else None
