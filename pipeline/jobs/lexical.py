"""The bm25 variant over a run's shards, in two steps (pipeline/index/bm25.py has the scoring):

- analyse (map, one shard at a time, wherever the engine runs it: this process or Ray tasks): each input part's
  chunk texts become terms and counts (runs/<run>/shards/<s>/terms/<part>.parquet); rows kept from the live
  snapshot carry no text and take theirs from the term cache by chunk hash. The shard's statistics (chunks,
  tokens, document frequency per term) go beside them, then its marker. A shard already analysed with the same
  analyzer is skipped, so a resumed run redoes only what is missing.
- reduce (the driver): merge the shards' statistics into corpus-wide ones, score each shard's postings with them
  and assemble one index in FAISS row order. It reads terms, one part at a time, never texts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import polars as pl

from pipeline.config import Bm25Config
from pipeline.errors import IndexBuildError, SnapshotError
from pipeline.index.analyzer import Analyzer
from pipeline.index.bm25 import Bm25Index, Bm25Params, CorpusStatistics, ShardStatistics, score_postings
from pipeline.index.term_cache import TERMS_SCHEMA, TermCache
from pipeline.storage.backend import Storage
from pipeline.storage.layout import LEXICON, TERMS, TERMS_MARKER, shard_key
from pipeline.storage.tables import read_parquet, write_parquet


@dataclass(frozen=True)
class AnalyzedShard:
    shard: int
    chunks: int
    tokens: int
    analysed: int  # chunks whose text went through the analyzer
    cached: int  # chunks whose terms came from the term cache
    seconds: float
    skipped: bool  # analysed by an earlier attempt of the run

    def to_dict(self) -> dict:
        return asdict(self)


OnAnalyzed = Callable[[AnalyzedShard], None]


def _analyze_part(cache: TermCache, analyzer: Analyzer, chunks: pl.DataFrame, name: str
                  ) -> tuple[pl.DataFrame, int, int]:
    """(chunk_id, chunk_hash, terms, tf) of one input part: cached where the chunk hash was analysed before."""
    hashes, texts = chunks["chunk_hash"].to_list(), chunks["text"].to_list()
    known = cache.lookup(hashes)
    seen = set(known["chunk_hash"].to_list())
    missing = [i for i, h in enumerate(hashes) if h not in seen]
    lost = [chunks["chunk_id"][i] for i in missing if texts[i] is None]
    if lost:  # rows kept from the live snapshot carry no text: their terms must be in the cache
        raise SnapshotError(f"{len(lost)} chunks kept from the live snapshot (first: {lost[0]}) have no terms in "
                            f"{cache.prefix}; run a full reindex (--full) to analyse them again")
    terms, tf = analyzer.counts([texts[i] for i in missing])
    fresh = pl.DataFrame({"chunk_hash": [hashes[i] for i in missing], "terms": terms, "tf": tf}, schema=TERMS_SCHEMA)
    fresh = fresh.unique("chunk_hash", keep="first", maintain_order=True)  # a text repeated in the part
    cache.add(name, fresh)
    table = pl.concat([known, fresh])
    out = chunks.select("chunk_id", "chunk_hash").join(table, on="chunk_hash", how="left", maintain_order="left")
    return out, len(missing), len(hashes) - len(missing)


def _marker(storage: Storage, run_id: str, shard: int) -> dict | None:
    key = shard_key(run_id, shard, TERMS_MARKER)
    return json.loads(storage.read_bytes(key)) if storage.exists(key) else None


def analyze_shard(storage: Storage, run_id: str, shard: int, analyzer: Analyzer) -> AnalyzedShard:
    """Analyse one shard's input parts and commit them by the shard's marker; idempotent."""
    done = _marker(storage, run_id, shard)
    if done is not None:
        if done["analyzer"] != analyzer.fingerprint:
            raise SnapshotError(f"run {run_id} shard {shard} was analysed with analyzer {done['analyzer']}, not "
                                f"{analyzer.fingerprint}; start a new run id for other bm25 settings")
        return AnalyzedShard(shard, done["chunks"], done["tokens"], 0, 0, done["seconds"], skipped=True)
    start = time.perf_counter()
    cache = TermCache(storage, analyzer.fingerprint)
    parts = sorted(storage.list(shard_key(run_id, shard, "chunks")))
    if not parts:
        raise SnapshotError(f"run {run_id} shard {shard} has no input parts under {shard_key(run_id, shard, 'chunks')}")
    frames, analysed, cached = [], 0, 0
    for name in parts:
        chunks = read_parquet(storage, shard_key(run_id, shard, f"chunks/{name}"))
        out, fresh, hits = _analyze_part(cache, analyzer, chunks, f"{run_id}-{shard:05d}-{name.split('.')[0]}")
        write_parquet(storage, shard_key(run_id, shard, f"{TERMS}/{name}"), out)
        frames.append(out.select("terms", "tf"))
        analysed, cached = analysed + fresh, cached + hits
    terms = pl.concat(frames)
    stats = ShardStatistics.of(terms["terms"], terms["tf"])
    write_parquet(storage, shard_key(run_id, shard, LEXICON), stats.df)
    seconds = round(time.perf_counter() - start, 3)
    storage.write_bytes(shard_key(run_id, shard, TERMS_MARKER), json.dumps(
        {"analyzer": analyzer.fingerprint, **stats.to_dict(), "parts": parts, "analysed": analysed, "cached": cached,
         "seconds": seconds}).encode())
    return AnalyzedShard(shard, stats.chunks, stats.tokens, analysed, cached, seconds, skipped=False)


class LocalAnalyzer:
    """Shards analysed one after another in this process (the other engine: operators/lexical.py)."""

    where = "flow process"

    def __init__(self, storage: Storage, cfg: Bm25Config) -> None:
        self.storage, self.analyzer = storage, Analyzer.of(cfg)

    def analyze(self, run_id: str, shards: list[int], on_result: OnAnalyzed) -> list[AnalyzedShard]:
        results = []
        for shard in shards:
            results.append(analyze_shard(self.storage, run_id, shard, self.analyzer))
            on_result(results[-1])
        return results


def build_bm25(storage: Storage, run_id: str, shards: list[int], ids: pl.DataFrame, cfg: Bm25Config
               ) -> tuple[Bm25Index, CorpusStatistics]:
    """The reduce step: corpus-wide statistics from the shards', then every shard's postings scored with them, in
    the row order of `ids` (row, chunk_id: the FAISS rows)."""
    analyzer = Analyzer.of(cfg)
    markers = {}
    for shard in shards:
        markers[shard] = _marker(storage, run_id, shard)
        if markers[shard] is None or markers[shard]["analyzer"] != analyzer.fingerprint:
            raise SnapshotError(f"run {run_id} shard {shard} has no {TERMS_MARKER} marker of analyzer "
                                f"{analyzer.fingerprint}; it was not analysed for bm25")
    lexicons = {s: read_parquet(storage, shard_key(run_id, s, LEXICON)) for s in shards}  # small: terms, counts
    stats = CorpusStatistics.merge(ShardStatistics(markers[s]["chunks"], markers[s]["tokens"], lexicons[s])
                                   for s in shards)
    if stats.chunks != ids.height:
        raise IndexBuildError(f"run {run_id}: the shards' bm25 statistics count {stats.chunks} chunks, the id table "
                              f"{ids.height}; expected the same chunks")
    rows, params, parts = ids.select("chunk_id", "row"), Bm25Params.of(cfg), []
    for shard in shards:
        for name in markers[shard]["parts"]:
            part = read_parquet(storage, shard_key(run_id, shard, f"{TERMS}/{name}"))
            part = part.join(rows, on="chunk_id", how="left")
            if part["row"].null_count():
                lost = part.filter(pl.col("row").is_null())["chunk_id"][0]
                raise IndexBuildError(f"run {run_id} shard {shard}: chunk {lost} has terms but no row in the id table")
            parts.append(score_postings(part, stats, params))
    return Bm25Index.assemble(parts, stats, params, analyzer), stats
