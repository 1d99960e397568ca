"""Text to BM25 terms, the same way for chunks and for queries: Unicode NFKC normalisation (an accent typed as its
own combining mark, as macOS and some PDF extractors write it, or a full-width letter, becomes the character a query
types; `\w` does not match combining marks, so "re\u0301sume\u0301" was the terms "re" and "sume"), bm25s'
tokenizer (lower-cased runs of two or more word characters, scikit-learn's pattern), bm25s' English stop words
removed, then a Snowball stemmer (PyStemmer).

The manifest records all of it (`describe`), so a reader without embedpipe analyses queries alike with
`bm25s.tokenize([unicodedata.normalize("NFKC", t) for t in texts], stopwords="en",
stemmer=Stemmer.Stemmer("english"))`. The fingerprint keys the term cache (pipeline/index/term_cache.py): another
analyzer, or another release of either library, never reuses terms. A manifest from before normalisation was
recorded has none, and its queries are analysed without it, as its chunks were.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version

import bm25s
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from pipeline.config import Bm25Config
from pipeline.errors import ConfigError, SnapshotError

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s.tokenize's default
STOPWORDS = {"en": tuple(STOPWORDS_EN), "none": ()}


def _sha256(words: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()


def fingerprint(described: dict) -> str:
    """Of an analyzer as `Analyzer.describe` (or a manifest) records it."""
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Analyzer:
    lower: bool = True
    stopwords: str = "en"
    stemmer: str | None = "english"
    normalize: str | None = "NFKC"  # unicodedata's form, before tokenizing; None: none (manifests before it)
    _stem: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.normalize not in (None, "NFC", "NFKC"):
            raise ConfigError(f"Unicode normalisation {self.normalize!r}: expected NFKC, NFC or none")
        if self.stopwords not in STOPWORDS:
            raise ConfigError(f"index.bm25.stopwords {self.stopwords!r}: expected one of {sorted(STOPWORDS)}")
        if self.stemmer is not None and self.stemmer not in Stemmer.algorithms():
            raise ConfigError(f"index.bm25.stemmer {self.stemmer!r}: expected a Snowball language "
                              f"({', '.join(Stemmer.algorithms())}) or null")
        object.__setattr__(self, "_stem", Stemmer.Stemmer(self.stemmer) if self.stemmer else None)

    def __reduce__(self):  # the stemmer is a C object: rebuild it on the other side (Ray tasks, Prefect)
        return (type(self), (self.lower, self.stopwords, self.stemmer, self.normalize))

    @classmethod
    def of(cls, cfg: Bm25Config) -> Analyzer:
        return cls(cfg.lower, cfg.stopwords, cfg.stemmer)

    @classmethod
    def from_dict(cls, recorded: dict, where: str) -> Analyzer:
        """The analyzer a manifest records; refuses one this installation cannot reproduce."""
        try:
            analyzer = cls(recorded["lower"], recorded["stopwords"], recorded["stemmer"], recorded.get("normalize"))
        except (KeyError, ConfigError) as exc:
            raise SnapshotError(f"{where}: the recorded analyzer {recorded} cannot be rebuilt ({exc})") from None
        if recorded.get("stopwords_sha256") != _sha256(STOPWORDS[analyzer.stopwords]):
            raise SnapshotError(f"{where}: its stop word list differs from the installed bm25s {bm25s.__version__}'s; "
                                "queries would not be analysed like the indexed chunks")
        if recorded.get("token_pattern") != TOKEN_PATTERN:
            raise SnapshotError(f"{where}: token pattern {recorded.get('token_pattern')!r}, expected {TOKEN_PATTERN!r}")
        return analyzer

    def describe(self) -> dict:
        """What the manifest records: enough to analyse queries the same way without embedpipe."""
        words = STOPWORDS[self.stopwords]
        return {"normalize": self.normalize, "tokenizer": "bm25s.tokenize", "token_pattern": TOKEN_PATTERN,
                "lower": self.lower,
                "stopwords": self.stopwords, "stopwords_count": len(words), "stopwords_sha256": _sha256(words),
                "stemmer": self.stemmer, "stemmer_library": "PyStemmer (Snowball)",
                "libraries": {"bm25s": version("bm25s"), "PyStemmer": version("PyStemmer")}}

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.describe())

    def terms(self, texts: list[str]) -> list[list[str]]:
        """Each text's terms in order (repeats kept: a term's count is its frequency)."""
        if not texts:
            return []
        if self.normalize:
            texts = [unicodedata.normalize(self.normalize, t) for t in texts]
        return bm25s.tokenize(texts, lower=self.lower, token_pattern=TOKEN_PATTERN,
                              stopwords=list(STOPWORDS[self.stopwords]), stemmer=self._stem, return_ids=False,
                              show_progress=False)

    def counts(self, texts: list[str]) -> tuple[list[list[str]], list[list[int]]]:
        """Each text's distinct terms (sorted) and how often each occurs."""
        terms, tfs = [], []
        for tokens in self.terms(texts):
            counted = sorted(Counter(tokens).items())
            terms.append([t for t, _ in counted])
            tfs.append([n for _, n in counted])
        return terms, tfs
