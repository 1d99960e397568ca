"""Every key embedpipe writes under a storage root, in one place. Other modules ask here; none spells a path.

    runs/<run_id>/plan.json                                the version the run publishes (chosen when it first starts)
    runs/<run_id>/run.json                                 the corpus listing its first attempt read
    runs/<run_id>/kernel.json                              the kernel the workers chose for `auto` (GPU actors and a
                                                           CPU driver; a cluster of other CPUs than the driver's)
    runs/<run_id>/files.parquet                            each input file's records by fate (read or kept as live's)
    runs/<run_id>/unread.parquet                           the files a run leaves unread (live's rows) or hashed
    runs/<run_id>/pieces/<piece>/_SUCCESS                  a read piece's marker (its files, counts), written last
    runs/<run_id>/quarantine/<piece or shard>.parquet      bad records with their reasons (per piece; duplicate
                                                           ids per shard)
    runs/<run_id>/shards/<shard>/docs/<piece>-<batch>.parquet   a piece's accepted documents of this shard
    runs/<run_id>/shards/<shard>/documents.parquet         the shard's accepted documents: file, record, content hash
    runs/<run_id>/shards/<shard>/_PREPARED                 the shard deduplicated, compared, chunked (counts)
    runs/<run_id>/shards/<shard>/chunks/<part>.parquet     chunk rows (text where it is to embed)
    runs/<run_id>/shards/<shard>/vectors/<part>.parquet    vectors by chunk hash: embedded, or cache files copied
    runs/<run_id>/shards/<shard>/_SUCCESS                  the shard's embedding marker, written last
    runs/<run_id>/shards/<shard>/terms/<part>.parquet      bm25: each chunk's terms and their counts
    runs/<run_id>/shards/<shard>/lexicon.parquet           bm25: the shard's document frequency per term
    runs/<run_id>/shards/<shard>/_TERMS                    bm25: the shard's analysis marker (chunks, tokens)
    runs/<run_id>/index/<shard>/*                          a shard's share of each snapshot file, then assembled
    runs/<run_id>/migration/report.{json,md}, blue_green.png
    cache/embeddings/<model_fingerprint>/b<lo>-<hi>/<name>.parquet   chunk vectors by chunk hash, partitioned by
                                                           the documents' bucket range; shared by every run
    cache/queries/<model_fingerprint>/<name>.parquet       golden-query vectors by query hash
    cache/terms/<analyzer_fingerprint>/b<lo>-<hi>/<name>.parquet   bm25: chunk terms by chunk hash, likewise
    snapshots/<index>/<version>/_CLAIM                     who publishes this version (put-if-absent, first)
    snapshots/<index>/<version>/index/<variant>.faiss      plain faiss.read_index(_binary) files
    snapshots/<index>/<version>/index/bm25/*               the bm25 variant: bm25s' own files (.npy and JSON)
    snapshots/<index>/<version>/ids.parquet                FAISS row -> chunk, document, offsets
    snapshots/<index>/<version>/documents.parquet          each document's bucket, file, record and content hash
    snapshots/<index>/<version>/files.parquet              each input file's size, change stamp, sha256, records by fate
    snapshots/<index>/<version>/vectors.f16.npy            fp16 vectors in FAISS row order, for rescoring
    snapshots/<index>/<version>/golden/runs.parquet        each search mode's ranking of the golden queries
    snapshots/<index>/<version>/golden/judgments.parquet   the golden set's judgments, each marked held or not
    snapshots/<index>/<version>/manifest.json              the commit (put-if-absent, last)
    snapshots/<index>/<version>/_RETIRING                  GC's mark before it deletes the version: an alias
                                                           moved to a marked version moves back
    aliases/<index>/<alias>.json                           the alias, moved by compare-and-swap
    aliases/<index>/history/<event>.json                   one write-once object per promotion or rollback
    monitoring/<index>/<alias>/<checked_at>.json           one monitoring result per run
    _probe-<random>                                        written, read and deleted by the preflight check

Index, alias and version names and run ids become keys, so they are checked here against a safe alphabet.
"""

from __future__ import annotations

import re
import uuid

from pipeline.config import NAME_PATTERN, RUN_ID_PATTERN
from pipeline.errors import SnapshotError

# File names inside a snapshot's version folder (relative to it: a Snapshot's storage is rooted there).
MANIFEST = "manifest.json"
CLAIM = "_CLAIM"
RETIRING = "_RETIRING"  # garbage collection is deleting this version
IDS = "ids.parquet"
DOCUMENTS = "documents.parquet"  # pipeline/corpus/files.py: what a later reindex needs to leave files unread
FILES = "files.parquet"
RESCORE_STORE = "vectors.f16.npy"
GOLDEN_RUNS = "golden/runs.parquet"  # the build's golden-set rankings, for the gate (quality/golden_runs.py)
GOLDEN_JUDGMENTS = "golden/judgments.parquet"
MARKER = "_SUCCESS"  # a shard's commit marker
TERMS_MARKER = "_TERMS"  # a shard's bm25 analysis marker
TERMS = "terms"  # a shard's folder of analysed parts
LEXICON = "lexicon.parquet"  # a shard's document frequencies
BM25_FOLDER = "index/bm25"  # the bm25 variant's files, named as bm25s saves and loads them
BM25_FILES = {"data": "data.csc.index.npy", "indices": "indices.csc.index.npy", "indptr": "indptr.csc.index.npy",
              "vocab": "vocab.index.json", "params": "params.index.json"}

NAME = re.compile(NAME_PATTERN)  # index and alias names
VERSION = RUN_ID = re.compile(RUN_ID_PATTERN)  # a version or a run id names one folder
ALIAS_URL = re.compile(r"^(?P<root>.+)/aliases/(?P<index>[^/]+)/(?P<alias>[^/]+?)(\.json)?$")


def check_name(kind: str, name: str, pattern: re.Pattern = NAME) -> str:
    """Names become object keys: only a safe alphabet, never '..'."""
    if not pattern.fullmatch(name) or ".." in name:
        raise SnapshotError(f"{kind} {name!r}: expected letters, digits, '.', '_' or '-', starting with a letter or "
                            "digit (no '..')")
    return name


# --- runs: work in progress ---------------------------------------------------------------------------------------

PREPARED = "_PREPARED"  # a shard's preparation marker
# a run's work files, removed once it finished (pipeline/jobs/run_folder.py); the pieces' markers go first
WORK_FOLDERS = ("pieces", "shards", "index")


def run_key(run_id: str, name: str) -> str:
    return f"runs/{check_name('run id', run_id, RUN_ID)}/{name}"


def plan_key(run_id: str) -> str:
    return run_key(run_id, "plan.json")


def run_record_key(run_id: str) -> str:
    return run_key(run_id, "run.json")


def run_files_key(run_id: str) -> str:
    return run_key(run_id, FILES)


def worker_kernel_key(run_id: str) -> str:
    return run_key(run_id, "kernel.json")


def quarantine_key(run_id: str, name: str = "") -> str:
    """The run's quarantine folder, or one of its files (a piece's or a shard's)."""
    return run_key(run_id, f"quarantine/{name}".rstrip("/"))


def piece_key(run_id: str, piece: int, name: str = "") -> str:
    return run_key(run_id, f"pieces/{piece:06d}/{name}".rstrip("/"))


def unread_key(run_id: str) -> str:
    """What the run's first attempt decided of its input files (a work file): live's files table rows of those it
    leaves unread, and the sha256 of those it hashed."""
    return run_key(run_id, "unread.parquet")


def shard_key(run_id: str, shard: int, name: str = "") -> str:
    return f"runs/{run_id}/shards/{shard:05d}/{name}".rstrip("/")


def index_shard_key(run_id: str, shard: int, name: str) -> str:
    """A shard's share of a snapshot file (its id rows, fp16 rows, filled indexes), before assembly."""
    return run_key(run_id, f"index/{shard:05d}/{name}")


def migration_key(run_id: str, name: str) -> str:
    return run_key(run_id, f"migration/{name}")


# --- caches -------------------------------------------------------------------------------------------------------

def cache_prefix(kind: str, fingerprint: str) -> str:
    """kind: "embeddings" (chunks) or "queries" (golden queries), by model fingerprint; "terms" (chunks), by
    analyzer fingerprint; no fingerprint: the kind's folder."""
    return f"cache/{kind}/{fingerprint}".rstrip("/")


def cache_partition(lo: int, hi: int) -> str:
    """The partition of a chunk cache (embeddings, terms) that holds documents in buckets [lo, hi)."""
    return f"b{lo:05d}-{hi:05d}"


# --- snapshots and aliases ----------------------------------------------------------------------------------------

def index_prefix(index: str) -> str:
    return f"snapshots/{check_name('index name', index)}"


def snapshot_prefix(index: str, version: str) -> str:
    return f"{index_prefix(index)}/{check_name('version name', version, VERSION)}"


def retiring_key(index: str, version: str) -> str:
    """GC's mark on a version it is deleting (snapshots/retention.apply_gc); no alias may move there."""
    return f"{snapshot_prefix(index, version)}/{RETIRING}"


def variant_file(variant: str) -> str:
    """A variant's FAISS file inside the version folder."""
    return f"index/{variant}.faiss"


def ivfdata_file(variant: str) -> str:
    """An IVF variant's inverted lists, beside its index file (faiss.read_index with IO_FLAG_ONDISK_SAME_DIR)."""
    return f"index/{variant}.ivfdata"


def trained_file(variant: str) -> str:
    """An IVF variant's trained, empty index (quantizers and codebooks): what a later build may reuse."""
    return f"index/{variant}.trained.faiss"


def bm25_file(part: str) -> str:
    """One of the bm25 variant's files inside the version folder (part: a key of BM25_FILES)."""
    return f"{BM25_FOLDER}/{BM25_FILES[part]}"


def aliases_prefix(index: str) -> str:
    return f"aliases/{check_name('index name', index)}"


def alias_key(index: str, alias: str) -> str:
    return f"{aliases_prefix(index)}/{check_name('alias name', alias)}.json"


def alias_event_key(index: str, alias: str, at: str) -> str:
    """A write-once audit event; the random suffix keeps two events of one instant apart."""
    return f"{aliases_prefix(index)}/history/{at.replace(':', '')}-{alias}-{uuid.uuid4().hex[:6]}.json"


def monitoring_prefix(index: str, alias: str) -> str:
    return f"monitoring/{check_name('index name', index)}/{check_name('alias name', alias)}"


def probe_key() -> str:
    return f"_probe-{uuid.uuid4().hex}"
