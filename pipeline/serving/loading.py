"""Load a version to serve and check it before any request sees it: every file against its sha256, the model
the manifest names (it loads, with the recorded weights, fingerprint and dims), the indexes against the model,
and warm-up searches in every mode. Any failure is a VersionRefused naming the check (storage, snapshot, checksum,
model, index or warm-up)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.errors import EmbedpipeError, ModelError, SnapshotError, StorageError, VersionRefused
from pipeline.models.encoder import encoder_for_card
from pipeline.quality.search import Searcher
from pipeline.serving.batching import BatchedSearches
from pipeline.serving.memory import return_freed_memory
from pipeline.serving.version import ServingVersion
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage

# Short and varied, so each mode runs its whole path (encoding, candidates, rescoring, collapsing) once.
WARMUP_QUERIES = ("what causes inflammation", "effect of a drug on blood pressure in adults",
                  "gene expression in cancer cells")


@dataclass(frozen=True)
class LoadSettings:
    warmup_queries: Sequence[str] = WARMUP_QUERIES
    warmup_k: int = 10
    default_mode: str | None = None  # None: exact when the version has it, else its first mode
    query_batch: int = 64  # most queries one batch of searches holds (BatchedSearches); 1: one request at a time


def _refuse(index: str, version: str, check: str, why: object) -> VersionRefused:
    return VersionRefused(f"{index} version {version} refused ({check}): {why}", check)


def _open(root: Storage, index: str, version: str) -> Snapshot:
    try:
        snapshot = Snapshot.of(root, index, version)
    except StorageError as exc:
        raise _refuse(index, version, "storage", exc) from None
    except SnapshotError as exc:  # not committed (or garbage-collected), or an unreadable manifest
        raise _refuse(index, version, "snapshot", exc) from None
    try:
        snapshot.localize()  # every file checked once, before any is loaded; the loads below map these files
    except StorageError as exc:
        raise _refuse(index, version, "storage", exc) from None
    except SnapshotError as exc:
        raise _refuse(index, version, "checksum", exc) from None
    if snapshot.manifest.get("index_name") != index or snapshot.version != version:
        raise _refuse(index, version, "checksum", f"its manifest names {snapshot.manifest.get('index_name')} "
                                                  f"version {snapshot.version}")
    return snapshot


def _model(snapshot: Snapshot, index: str, version: str):
    """The model the manifest names, loaded, with its recorded fingerprint and dims."""
    try:
        card = snapshot.model_card
    except (KeyError, TypeError) as exc:
        raise _refuse(index, version, "model", f"its manifest has no complete model card ({exc})") from None
    recorded = snapshot.manifest["model"].get("fingerprint")
    if recorded is not None and recorded != card.fingerprint:
        raise _refuse(index, version, "model", f"its model card's fingerprint is {card.fingerprint}, the manifest "
                                               f"records {recorded}")
    try:
        encoder = encoder_for_card(card, snapshot.query_kernel)  # checks the weights' sha256 and the dims
    except EmbedpipeError as exc:
        raise _refuse(index, version, "model", exc) from None
    if not encoder.card.same_model(card) or encoder.card.dims != card.dims:
        raise _refuse(index, version, "model", f"model {card.name} loads as {encoder.card.fingerprint} "
                                               f"({encoder.card.dims} dims); the manifest expects "
                                               f"{card.fingerprint} ({card.dims} dims)")
    return encoder


def _warm_up(searches: BatchedSearches, settings: LoadSettings, index: str, version: str) -> None:
    queries = list(settings.warmup_queries)
    for mode in searches.searcher.modes():
        try:
            results = searches.search(queries, settings.warmup_k, mode)  # under the lock: the model may be serving
        except EmbedpipeError as exc:
            raise _refuse(index, version, "warm-up", f"mode {mode}: {exc}") from None
        for query, hits in zip(queries, results, strict=True):
            if not hits or not all(math.isfinite(h.score) for h in hits):
                raise _refuse(index, version, "warm-up", f"mode {mode} found no usable results for {query!r}")


def load_version(root: Storage, index: str, version: str, search_lock: threading.Lock,
                 settings: LoadSettings | None = None, on_pass: Callable[[int], None] | None = None) -> ServingVersion:
    """A version ready to serve, or VersionRefused. Runs in the background while the current version serves.
    `on_pass` is told how many queries each forward pass encoded (BatchedSearches)."""
    settings = settings or LoadSettings()
    started = time.perf_counter()
    snapshot = _open(root, index, version)
    encoder = _model(snapshot, index, version)
    try:
        searcher = Searcher.from_snapshot(snapshot, encoder)
    except (SnapshotError, ModelError, KeyError) as exc:
        raise _refuse(index, version, "index", exc) from None
    modes = searcher.modes()
    default = settings.default_mode or ("exact" if "exact" in modes else modes[0] if modes else None)
    if default not in modes:
        raise _refuse(index, version, "index", f"the default search mode {default!r} is not one of its modes {modes}")
    searches = BatchedSearches(searcher, search_lock, on_pass, settings.query_batch)
    _warm_up(searches, settings, index, version)
    loaded = ServingVersion(index, version, searcher, searches, snapshot.model_card, datetime.now(UTC),
                            time.perf_counter() - started, snapshot.bytes, default)
    del snapshot
    return_freed_memory()
    return loaded
