"""What the migration and monitoring flows share: the snapshot an alias serves, and measuring a snapshot on
the golden set (pipeline/quality/measure.py) as a task."""

from __future__ import annotations

from flows.tasks import local_task
from pipeline.errors import SnapshotError
from pipeline.models.cache import CachedQueries
from pipeline.models.encoder import encoder_for_card
from pipeline.quality.golden import GoldenSet
from pipeline.quality.measure import Measurement, measure
from pipeline.quality.search import Searcher
from pipeline.snapshots.aliases import read_alias
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage
from pipeline.storage.keys import redact


@local_task(name="open the live snapshot")
def open_live_task(storage: Storage, index: str, alias: str, job: str) -> Snapshot:
    """The committed snapshot `alias` points at; a clear error when it points nowhere."""
    version = read_alias(storage, index, alias).version
    if version is None:
        raise SnapshotError(f"{job} of {index}: alias {alias} is not set at {redact(storage.url)}, so there is no live "
                            "snapshot to compare with; build the first version with the reindex flow "
                            "(embedpipe run CONFIG) and promote it")
    return Snapshot.of(storage, index, version)


@local_task(name="measure on the golden set")
def measure_task(snapshot: Snapshot, golden: GoldenSet, k: int, mode: str, root: Storage) -> Measurement:
    """`root`: the storage root whose query cache spares encoding the golden set again."""
    encoder = CachedQueries(encoder_for_card(snapshot.model_card, snapshot.query_kernel), root)
    return measure(snapshot, golden, k, mode, Searcher.from_snapshot(snapshot, encoder))
