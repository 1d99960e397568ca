"""Which documents a run re-chunks and re-embeds, and which it keeps as they are in the live snapshot.

- full build: every document is redone.
- incremental reindex: a document is redone when its hash (content and chunker parameters) is not the live
  snapshot's (new, changed, or chunked otherwise); live documents missing from the corpus are dropped; the
  rest are kept.
- backfill: the documents a `Selection` picks are redone; every other live document is kept, so the new
  version differs from the live one only there (documents outside the selection that the live snapshot
  lacks are left out).

A kept document is not read into the chunker again: its chunk rows come from the live snapshot's ids
table (text-less) and its vectors from the embedding cache, by chunk hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import polars as pl

from pipeline.config import RESERVED_DOC_COLUMNS
from pipeline.corpus.sharding import shard_of
from pipeline.errors import ConfigError, SelectionError


def content_hashes(docs: pl.DataFrame) -> pl.Series:
    """sha256 of each document's id, title and text (the corpus fingerprint sums them)."""
    return pl.Series("content_hash", [content_hash(*row) for row in docs.select("doc_id", "title", "text").iter_rows()],
                     pl.String)


def content_hash(doc_id: str, title: str, text: str) -> str:
    """The fields joined by NULs, as always (so that hashes recorded before stay valid); where a field holds a NUL
    itself, which would make ("a\x00b", "c") and ("a", "b\x00c") one hash, their JSON array instead: it has no
    NUL, so it cannot be any other document's NUL-joined fields either."""
    if "\x00" in doc_id or "\x00" in title or "\x00" in text:
        return hashlib.sha256(json.dumps([doc_id, title, text]).encode()).hexdigest()
    return hashlib.sha256(f"{doc_id}\x00{title}\x00{text}".encode()).hexdigest()


class CorpusFingerprint:
    """Order-independent digest of the accepted documents, fed batch by batch with their content hashes
    (content_hashes above): their sum mod 2^256 (a multiset hash), so equal fingerprints mean equal
    content however it was read."""

    def __init__(self) -> None:
        self.total = 0

    def update(self, content_hashes: pl.Series) -> None:
        for digest in content_hashes.to_list():
            self.total = (self.total + int(digest, 16)) % (1 << 256)

    def hexdigest(self) -> str:
        return f"{self.total:064x}"


def doc_hashes(content: pl.Series, chunking: dict) -> pl.Series:
    """What decides a document's chunks: its content and the chunker's parameters. A document chunked
    with other parameters (a backfill's, an older config's) has another hash, so it is redone."""
    params = json.dumps(chunking, sort_keys=True)
    return pl.Series("doc_hash", [hashlib.sha256(f"{params}\x00{c}".encode()).hexdigest() for c in content], pl.String)


@dataclass(frozen=True)
class Selection:
    """A backfill's documents: any of these ids, shards, or rows matching a polars SQL expression over the
    corpus' metadata fields (e.g. "published >= '2024-01-01'")."""

    doc_ids: frozenset[str] = frozenset()
    shards: frozenset[int] = frozenset()
    where: str | None = None

    def __post_init__(self) -> None:
        if not (self.doc_ids or self.shards or self.where):
            raise ConfigError("backfill selection is empty: expected doc ids, shards or a --where filter")
        if self.where:
            try:
                pl.sql_expr(self.where)
            except Exception as exc:  # polars raises several error types for bad SQL
                raise ConfigError(f"backfill filter {self.where!r} is not a valid polars SQL expression: "
                                  f"{exc}") from None

    def check_shards(self, num_shards: int) -> None:
        """Every selected shard exists for a run of `num_shards` (run.shards)."""
        if outside := sorted(s for s in self.shards if not 0 <= s < num_shards):
            raise ConfigError(f"backfill shards {outside} do not exist: expected 0 to {num_shards - 1} "
                              f"(run.shards is {num_shards})")

    def mask(self, docs: pl.DataFrame) -> pl.Series:
        """Selected rows of `docs` (doc_id, shard and metadata columns)."""
        picked = docs.select(pl.col("doc_id").is_in(list(self.doc_ids)) | pl.col("shard").is_in(list(self.shards)))
        return picked.to_series() | self._where(docs) if self.where else picked.to_series()

    def _where(self, docs: pl.DataFrame) -> pl.Series:
        """The rows the filter selects, over the metadata fields alone (not the pipeline's own columns)."""
        fields, where = docs.drop(RESERVED_DOC_COLUMNS, strict=False), pl.sql_expr(self.where).fill_null(False)
        try:
            return fields.select(where).to_series()
        except pl.exceptions.PolarsError as exc:
            error = exc
        # A batch where no document has a field holds it as Null, which string functions (LIKE) or a comparison
        # with a number may refuse; every value being null, any type gives the same answer.
        nulls = [name for name, dtype in fields.schema.items() if dtype == pl.Null]
        for dtype in (pl.String, pl.Float64, pl.Boolean) if nulls else ():
            try:
                return fields.with_columns(pl.col(nulls).cast(dtype)).select(where).to_series()
            except pl.exceptions.PolarsError:
                pass
        kept = ", ".join(f"{name} ({dtype})" for name, dtype in fields.schema.items()) or "none"
        raise SelectionError(f"backfill filter {self.where!r} does not apply to the corpus (its metadata fields: "
                             f"{kept}; add fields with corpus.metadata_fields, each of one type): {error}") from None

    def describe(self) -> str:
        """The selection in words, for the summary and the manifest's lineage."""
        ids = sorted(self.doc_ids)
        parts = [f"documents {', '.join(ids[:5])}{f' and {len(ids) - 5} more' if len(ids) > 5 else ''}"] if ids else []
        if self.shards:
            parts.append(f"shards {', '.join(map(str, sorted(self.shards)))}")
        if self.where:
            parts.append(f"where {self.where}")
        return "; ".join(parts)


@dataclass
class Delta:
    """Fed the corpus batch by batch (`split`), then `finish`ed; counts documents by what happened to them."""

    live: pl.DataFrame | None  # the live snapshot's ids table with a `shard` column; None = full build
    selection: Selection | None = None  # None = incremental (when `live` is set)
    seen: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ["docs_new", "docs_changed", "docs_unchanged", "docs_deleted", "docs_kept", "docs_redone"], 0))

    def __post_init__(self) -> None:
        if self.live is not None:
            self._live_docs = self.live.group_by("doc_id").agg(pl.col("doc_hash").first().alias("live_hash"))

    def split(self, docs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(documents to redo, live chunk rows kept for the others) of one batch of the corpus (with
        `doc_hash` and `shard` columns)."""
        if self.live is None:
            self.counts["docs_new"] += docs.height
            self.counts["docs_redone"] += docs.height
            return docs, self.live_rows([])
        self.seen.update(docs["doc_id"].to_list())
        known = docs.join(self._live_docs, on="doc_id", how="left", maintain_order="left")
        new, same = known["live_hash"].is_null(), known["live_hash"] == known["doc_hash"]
        if self.selection is None:
            redo = ~same.fill_null(False)
        else:  # only the selection; documents outside it that the live snapshot lacks are left out
            redo = self.selection.mask(docs)
            self.counts["docs_outside_selection_not_live"] = self.counts.get(
                "docs_outside_selection_not_live", 0) + int((~redo & new).sum())
        keep = ~redo & ~new
        self.counts["docs_new"] += int((redo & new).sum())
        self.counts["docs_changed"] += int((redo & ~new & ~same.fill_null(False)).sum())
        self.counts["docs_unchanged"] += int(same.fill_null(False).sum())
        self.counts["docs_redone"] += int(redo.sum())
        self.counts["docs_kept"] += int(keep.sum())
        return docs.filter(redo), self.live_rows(docs.filter(keep)["doc_id"].to_list())

    def missing_ids(self, shard: int, num_shards: int) -> list[str]:
        """The selection's doc ids that belong to `shard` yet were not in its batches: the corpus lacks them, so a
        backfill cannot redo them (call after the last split)."""
        ids = self.selection.doc_ids if self.selection else ()
        return sorted(i for i in ids if shard_of(i, num_shards) == shard and i not in self.seen)

    def finish(self) -> pl.DataFrame:
        """Live documents the corpus no longer has: dropped by an incremental run, kept by a backfill."""
        if self.live is None:
            return self.live_rows([])
        gone = self._live_docs.filter(~pl.col("doc_id").is_in(list(self.seen)))["doc_id"].to_list()
        if self.selection is None:
            self.counts["docs_deleted"] += len(gone)
            return self.live_rows([])
        self.counts["docs_kept"] += len(gone)
        return self.live_rows(gone)

    def live_rows(self, doc_ids: list[str]) -> pl.DataFrame:
        """The live chunk rows of `doc_ids`, text-less: their vectors come from the embedding cache."""
        if self.live is None:
            return pl.DataFrame()
        return self.live.filter(pl.col("doc_id").is_in(doc_ids)).with_columns(pl.lit(None, pl.String).alias("text"))
