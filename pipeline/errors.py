"""Every error embedpipe raises on purpose. Callers catch these, never a bare Exception or a None."""


class EmbedpipeError(Exception):
    """Base class: the message names the thing and what was expected."""


class ConfigError(EmbedpipeError):
    """A config file is missing, unreadable or has a bad value."""


class InputError(EmbedpipeError):
    """A corpus, query or qrels source cannot be read, or (strict mode) holds a bad record."""


class SelectionError(InputError):
    """A backfill's selection does not fit the corpus (an id it lacks, a filter on a field it does not keep, nothing
    selected): a resume of the run could not get past it, so its error offers none."""


class ModelError(EmbedpipeError):
    """A model cannot be found or loaded, or is not the one a snapshot was built with."""


class IndexBuildError(EmbedpipeError):
    """FAISS index parameters or inputs are unusable (too few vectors, dims mismatch...)."""


class SnapshotError(EmbedpipeError):
    """A snapshot is missing, incomplete, already exists, or fails its checksums."""


class StorageError(EmbedpipeError):
    """Object storage is unreachable or an object is missing."""


class ObjectMissing(StorageError):
    """An object is not in storage (other StorageErrors say it could not be reached or read)."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object already existed (put_if_absent)."""


class AliasMoved(PreconditionFailed):
    """A promote or rollback lost: the alias no longer points where the caller saw it."""


class ClusterError(EmbedpipeError):
    """The Ray cluster named by RAY_ADDRESS cannot be joined."""


class GateRefused(EmbedpipeError):
    """The quality gate refused a candidate snapshot (promote with force to override, which is recorded)."""


class MonitoringFailed(EmbedpipeError):
    """The live snapshot's golden-set quality fell beyond the configured threshold; `result` holds the evidence
    (pipeline.jobs.monitoring.MonitorResult)."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self):  # picklable with its result (Prefect and Ray may pickle exceptions)
        return (type(self), (str(self), self.result))


class VersionRefused(EmbedpipeError):
    """A version a service was asked to serve failed a check before serving (`check`: storage, snapshot, checksum,
    model, index or warm-up); the version it serves keeps serving."""

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.check = check

    def __reduce__(self):
        return (type(self), (str(self), self.check))
