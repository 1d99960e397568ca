"""What the migration and monitoring flows share: the snapshot an alias serves, and measuring a snapshot on
the golden set (pipeline/quality/measure.py) as a task."""

from __future__ import annotations

from functools import partial

from flows.tasks import local_task
from pipeline.config import RunConfig
from pipeline.errors import SnapshotError
from pipeline.jobs.executor import RAY_TASKS, LocalExecutor, one_task_cpus
from pipeline.quality.golden import GoldenSet
from pipeline.quality.measure import Measurement, check_mode, measure_snapshot
from pipeline.redaction import redact
from pipeline.snapshots.aliases import read_alias
from pipeline.snapshots.snapshot import Snapshot
from pipeline.storage.backend import Storage


def live_version(storage: Storage, index: str, alias: str, job: str) -> str:
    """The version `alias` points at; a clear error when it points nowhere (the CLI asks before Prefect starts)."""
    version = read_alias(storage, index, alias).version
    if version is None:
        raise SnapshotError(f"{job} of {index}: alias {alias} is not set at {redact(storage.url)}, so there is no live "
                            "snapshot to compare with; build the first version with the reindex flow "
                            "(embedpipe run CONFIG) and promote it")
    return version


@local_task(name="open the live snapshot")
def open_live_task(storage: Storage, index: str, alias: str, job: str) -> Snapshot:
    """The committed snapshot `alias` points at."""
    return Snapshot.of(storage, index, live_version(storage, index, alias, job))


@local_task(name="measure on the golden set")
def measure_task(snapshot: Snapshot, golden: GoldenSet, k: int, mode: str, root: Storage, run: RunConfig
                 ) -> Measurement:
    """Where the snapshot's build ran its steps: a snapshot built on Ray is measured on a Ray worker (with one actor's
    CPUs, `run`), since measuring loads its indexes and id table, which grow with the corpus (the driver never holds
    them). `root`: the storage root whose query cache spares encoding the golden set again."""
    check_mode(snapshot, mode)
    executor = LocalExecutor()
    if snapshot.manifest["counts"].get("executor") == RAY_TASKS:
        from operators.executor import RayExecutor

        executor = RayExecutor()
    step = partial(measure_snapshot, golden=golden, k=k, mode=mode, root=root)
    return executor.map(step, [snapshot], cpus=one_task_cpus(run))[0]
