"""Every key embedpipe writes under a storage root, in one place. Other modules ask here; none spells a path.

    runs/<run_id>/quarantine.parquet                       bad records with their reasons
    runs/<run_id>/shards/<shard>/chunks/<part>.parquet     what to embed (one part per read batch)
    runs/<run_id>/shards/<shard>/vectors/<part>.parquet    the same rows with their vectors
    runs/<run_id>/shards/<shard>/_SUCCESS                  the shard's commit marker, written last
    runs/<run_id>/shards/<shard>/terms/<part>.parquet      bm25: each chunk's terms and their counts
    runs/<run_id>/shards/<shard>/lexicon.parquet           bm25: the shard's document frequency per term
    runs/<run_id>/shards/<shard>/_TERMS                    bm25: the shard's analysis marker (chunks, tokens)
    runs/<run_id>/migration/report.{json,md}, blue_green.png
    cache/embeddings/<model_fingerprint>/<name>.parquet    vectors by chunk hash, shared by every run of a model
    cache/queries/<model_fingerprint>/<name>.parquet       golden-query vectors by query hash
    cache/terms/<analyzer_fingerprint>/<name>.parquet      bm25: chunk terms by chunk hash, shared likewise
    snapshots/<index>/<version>/_CLAIM                     who publishes this version (put-if-absent, first)
    snapshots/<index>/<version>/index/<variant>.faiss      plain faiss.read_index(_binary) files
    snapshots/<index>/<version>/index/bm25/*               the bm25 variant: bm25s' own files (.npy and JSON)
    snapshots/<index>/<version>/ids.parquet                FAISS row -> chunk, document, offsets
    snapshots/<index>/<version>/vectors.f16.npy            fp16 vectors in FAISS row order, for rescoring
    snapshots/<index>/<version>/manifest.json              the commit (put-if-absent, last)
    aliases/<index>/<alias>.json                           the alias, moved by compare-and-swap
    aliases/<index>/history/<event>.json                   one write-once object per promotion or rollback
    monitoring/<index>/<alias>/<checked_at>.json           one monitoring result per run
    _probe-<random>                                        written, read and deleted by the preflight check

Index, alias and version names become keys, so they are checked here against a safe alphabet.
"""

from __future__ import annotations

import re
import uuid

from pipeline.config import NAME_PATTERN
from pipeline.errors import SnapshotError

# File names inside a snapshot's version folder (relative to it: a Snapshot's storage is rooted there).
MANIFEST = "manifest.json"
CLAIM = "_CLAIM"
IDS = "ids.parquet"
RESCORE_STORE = "vectors.f16.npy"
MARKER = "_SUCCESS"  # a shard's commit marker
TERMS_MARKER = "_TERMS"  # a shard's bm25 analysis marker
TERMS = "terms"  # a shard's folder of analysed parts
LEXICON = "lexicon.parquet"  # a shard's document frequencies
BM25_FOLDER = "index/bm25"  # the bm25 variant's files, named as bm25s saves and loads them
BM25_FILES = {"data": "data.csc.index.npy", "indices": "indices.csc.index.npy", "indptr": "indptr.csc.index.npy",
              "vocab": "vocab.index.json", "params": "params.index.json"}

NAME = re.compile(NAME_PATTERN)  # index and alias names
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ALIAS_URL = re.compile(r"^(?P<root>.+)/aliases/(?P<index>[^/]+)/(?P<alias>[^/]+?)(\.json)?$")


def check_name(kind: str, name: str, pattern: re.Pattern = NAME) -> str:
    """Names become object keys: only a safe alphabet, never '..'."""
    if not pattern.fullmatch(name) or ".." in name:
        raise SnapshotError(f"{kind} name {name!r}: expected letters, digits, '.', '_' or '-' (no '..')")
    return name


# --- runs: work in progress ---------------------------------------------------------------------------------------

def run_key(run_id: str, name: str) -> str:
    return f"runs/{run_id}/{name}"


def quarantine_key(run_id: str) -> str:
    return run_key(run_id, "quarantine.parquet")


def shard_key(run_id: str, shard: int, name: str = "") -> str:
    return f"runs/{run_id}/shards/{shard:05d}/{name}".rstrip("/")


def migration_key(run_id: str, name: str) -> str:
    return run_key(run_id, f"migration/{name}")


# --- caches -------------------------------------------------------------------------------------------------------

def cache_prefix(kind: str, fingerprint: str) -> str:
    """kind: "embeddings" (chunks) or "queries" (golden queries), by model fingerprint; "terms" (chunks), by
    analyzer fingerprint."""
    return f"cache/{kind}/{fingerprint}"


# --- snapshots and aliases ----------------------------------------------------------------------------------------

def index_prefix(index: str) -> str:
    return f"snapshots/{check_name('index', index)}"


def snapshot_prefix(index: str, version: str) -> str:
    return f"{index_prefix(index)}/{check_name('version', version, VERSION)}"


def variant_file(variant: str) -> str:
    """A variant's FAISS file inside the version folder."""
    return f"index/{variant}.faiss"


def bm25_file(part: str) -> str:
    """One of the bm25 variant's files inside the version folder (part: a key of BM25_FILES)."""
    return f"{BM25_FOLDER}/{BM25_FILES[part]}"


def aliases_prefix(index: str) -> str:
    return f"aliases/{check_name('index', index)}"


def alias_key(index: str, alias: str) -> str:
    return f"{aliases_prefix(index)}/{check_name('alias', alias)}.json"


def alias_event_key(index: str, alias: str, at: str) -> str:
    """A write-once audit event; the random suffix keeps two events of one instant apart."""
    return f"{aliases_prefix(index)}/history/{at.replace(':', '')}-{alias}-{uuid.uuid4().hex[:6]}.json"


def monitoring_prefix(index: str, alias: str) -> str:
    return f"monitoring/{check_name('index', index)}/{check_name('alias', alias)}"


def probe_key() -> str:
    return f"_probe-{uuid.uuid4().hex}"
