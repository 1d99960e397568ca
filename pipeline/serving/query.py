"""One search against the version a request holds: limits first, then the query check (empty queries are
refused, long ones are reported as truncated), then the Searcher in the requested mode."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from pipeline.errors import InputError
from pipeline.quality.search import Hit, check_query
from pipeline.serving.version import ServingVersion


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
    max_query_chars: int = 2000

    @property
    def default_k(self) -> int:
        """k for a request that names none: 10, or max_k where that is less (a default it refused was a 400)."""
        return min(10, self.max_k)


@dataclass(frozen=True)
class SearchAnswer:
    index: str
    version: str  # the version that answered
    mode: str
    k: int
    query: str
    query_tokens: int
    truncated_to_tokens: int | None  # the model's limit when the query was longer, else None
    hits: list[Hit]
    took_ms: float

    def to_dict(self) -> dict:
        note = (f"the query has {self.query_tokens:,} tokens; the model reads the first {self.truncated_to_tokens}"
                if self.truncated_to_tokens else None)
        return {"index": self.index, "version": self.version, "mode": self.mode, "k": self.k, "query": self.query,
                "query_tokens": self.query_tokens, "truncated_to_tokens": self.truncated_to_tokens, "note": note,
                "took_ms": round(self.took_ms, 3),
                "hits": [{"rank": rank, **asdict(hit)} for rank, hit in enumerate(self.hits, start=1)]}


def check_request(served: ServingVersion, query: object, k: int, mode: str | None, limits: Limits) -> str:
    """The mode to search with, or InputError saying what is wrong with the request."""
    if not isinstance(query, str):
        raise InputError(f"query must be text, not {type(query).__name__}")
    if len(query) > limits.max_query_chars:
        raise InputError(f"the query has {len(query):,} characters; this service takes at most "
                         f"{limits.max_query_chars:,}")
    if not 1 <= k <= limits.max_k:
        raise InputError(f"k={k}: expected 1 to {limits.max_k}")
    if mode == "":  # `mode=` sent empty: a client that meant one and lost it, not a request for the default
        raise InputError(f"mode is empty; expected one of {', '.join(served.modes)}, or no mode for the default "
                         f"({served.default_mode})")
    mode = mode or served.default_mode
    if mode not in served.modes:
        raise InputError(f"no search mode {mode!r} in {served.index} version {served.version}; available: "
                         f"{', '.join(served.modes)}")
    return mode


def answer(served: ServingVersion, query: str, k: int = 10, mode: str | None = None,
           limits: Limits | None = None, deadline: float | None = None) -> SearchAnswer:
    """One request's search; TimeoutError once time.monotonic() passes `deadline` before its search ran."""
    started = time.perf_counter()
    mode = check_request(served, query, k, mode, limits or Limits())
    checked = check_query(served.searcher.encoder, query)
    hits = served.searches.search([query], k, mode, deadline)[0]
    return SearchAnswer(served.index, served.version, mode, k, query, checked.tokens,
                        checked.limit if checked.truncated else None, hits, (time.perf_counter() - started) * 1000)
