"""Golden sets: BEIR queries and relevance judgments that every build, migration and monitoring run measures
quality on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from pipeline.config import PipelineConfig
from pipeline.corpus.readers import golden_set_urls, read_qrels, read_queries
from pipeline.corpus.records import open_input
from pipeline.errors import InputError
from pipeline.quality.metrics import Qrels
from pipeline.redaction import redact


@dataclass(frozen=True)
class GoldenSet:
    queries: dict[str, str]
    qrels: Qrels
    queries_url: str  # redacted, as recorded in reports
    qrels_url: str
    digest: str = ""  # sha256 of the two files: a build records it, so a later one knows whether they changed


@dataclass(frozen=True)
class Coverage:
    """How much of a golden set an index can find: the relevant documents (grade > 0) of its judged queries that are
    in the index, and the queries none of whose relevant documents are (they score 0 in every search mode)."""

    queries: int
    relevant: int
    found: int
    queries_without: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def note(self) -> str | None:
        """A warning when some relevant documents are missing: the metrics are then bounded below 1 by the golden
        set, not by the search (a sample of a corpus judged in full, or the golden set of another corpus)."""
        if self.found == self.relevant:
            return None
        return (f"{self.relevant - self.found} of the golden set's {self.relevant} relevant documents are not in "
                f"this index, and {self.queries_without} of its {self.queries} queries have none here (they score 0 "
                "in every mode): expected a golden set judged on this corpus")


def coverage(queries: Mapping[str, str], qrels: Qrels, doc_ids: Iterable[str]) -> Coverage:
    """The golden set's coverage by an index holding `doc_ids` (one per chunk; repeats are fine; a set is used as
    it is)."""
    indexed = doc_ids if isinstance(doc_ids, set | frozenset) else set(doc_ids)
    judged = [{d for d, grade in qrels[q].items() if grade > 0} for q in qrels if q in queries]
    relevant = set().union(*judged)
    return Coverage(len(judged), len(relevant), len(relevant & indexed),
                    sum(1 for docs in judged if docs and not docs & indexed))


def coverage_note(evaluation: Mapping) -> str | None:
    """Coverage.note of a manifest's (or build summary's) "evaluation" section, if it recorded the coverage."""
    recorded = evaluation.get("coverage")
    return Coverage(**recorded).note() if recorded else None


def golden_set_of(cfg: PipelineConfig) -> GoldenSet | None:
    """The config's golden set (evaluation.queries/qrels, or the BEIR corpus folder's own), or None."""
    urls = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    return None if urls is None else read_golden_set(*urls)


def read_golden_set(queries_url: str, qrels_url: str) -> GoldenSet:
    """The two files, checked to agree."""
    queries, qrels, digest = read_queries(queries_url), read_qrels(qrels_url), hashlib.sha256()
    for url in (queries_url, qrels_url):  # read again as bytes: small files, and the parsers stream them
        with open_input(url) as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    golden = GoldenSet(queries, qrels, redact(queries_url), redact(qrels_url), digest.hexdigest())
    unasked = [q for q, judged in golden.qrels.items()
               if q not in golden.queries and any(grade > 0 for grade in judged.values())]
    if unasked:  # they would score 0 in every mode: the metric would measure the files, not the search
        raise InputError(f"{golden.qrels_url} judges {len(unasked)} queries that {golden.queries_url} does not hold "
                         f"(first: {', '.join(map(repr, unasked[:3]))}): expected a text for every judged query")
    if not any(grade > 0 for q, judged in golden.qrels.items() if q in golden.queries for grade in judged.values()):
        # every metric would be 0 for every version, and a gate comparing two zeros would pass anything
        raise InputError(f"{golden.qrels_url} judges no document relevant (a score above 0) to any query of "
                         f"{golden.queries_url}: expected at least one relevant judgment")
    return golden


def load_golden_set(cfg: PipelineConfig, manifest: dict | None = None) -> GoldenSet:
    """The config's golden set (evaluation.queries/qrels, or the BEIR corpus folder's own); failing that,
    the one the snapshot was evaluated on at publish time (recorded in its manifest)."""
    urls = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    if urls is None and manifest is not None:
        recorded = manifest.get("evaluation") or {}
        if recorded.get("queries") and recorded.get("qrels"):
            urls = (recorded["queries"], recorded["qrels"])
    if urls is None:
        raise InputError(f"{cfg.index_name}: no golden set: set evaluation.queries and evaluation.qrels (BEIR "
                         "queries.jsonl and qrels TSV)")
    return read_golden_set(*urls)
