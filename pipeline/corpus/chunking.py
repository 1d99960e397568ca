"""Token-aware chunking with the model's own tokenizer.

A document's text is `title + " " + text` (how BEIR/MTEB embed a document). Chunks are windows of at
most `max_tokens` tokens (special tokens and the passage prefix included) overlapping by `overlap`
tokens; a window never ends inside a word when it can end at a word start. Each chunk keeps character
offsets into the document text, so `doc_text[start:end] == chunk text`.

A window also starts at a word start, looking back at most half a step (so text without spaces still
advances by max_tokens - overlap), and not on the whitespace a SentencePiece piece carries nor on tokens of
whitespace alone (a window of nothing else makes no chunk); it ends between characters, not inside the byte
tokens of one.

Mode `none` makes one chunk per document with its whole text; the encoder then truncates it at the
model's limit, which is how the published SciFact scores were measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import polars as pl

from pipeline.config import ChunkingConfig
from pipeline.models.tokenizer import TextTokenizer

CHUNK_SCHEMA = {"chunk_id": pl.String, "doc_id": pl.String, "chunk_index": pl.UInt32, "start": pl.UInt32,
                "end": pl.UInt32, "n_tokens": pl.UInt32, "text": pl.String, "chunk_hash": pl.String}


def document_text(title: str, text: str) -> str:
    return f"{title} {text}" if title else text


@dataclass(frozen=True)
class Chunker:
    tokenizer: TextTokenizer  # the model's (offsets and word ids are needed)
    cfg: ChunkingConfig
    model_max_tokens: int
    passage_prefix: str = ""

    def __post_init__(self) -> None:
        if self.cfg.mode == "tokens" and self.cfg.max_tokens > self.model_max_tokens:
            from pipeline.errors import ConfigError

            raise ConfigError(f"chunking.max_tokens ({self.cfg.max_tokens}) exceeds the model's limit "
                              f"({self.model_max_tokens}); expected at most {self.model_max_tokens}")

    @property
    def params(self) -> dict:
        """What, with the text, decides a chunk's content: part of its hash and of the manifest."""
        p = {"mode": self.cfg.mode, "max_tokens": self.cfg.max_tokens, "overlap": self.cfg.overlap,
             "passage_prefix": self.passage_prefix}
        if self.cfg.mode == "none":
            p.update(max_tokens=self.model_max_tokens, overlap=0)
        return p

    def chunk_hash(self, text: str) -> str:
        payload = json.dumps(self.params, sort_keys=True) + "\x00" + text
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def token_budget(self) -> int:
        """Text tokens that fit in one forward pass, after special tokens and the passage prefix."""
        prefix = self.tokenizer.count(self.passage_prefix, specials=False)
        window = self.params["max_tokens"] - self.tokenizer.specials - prefix
        if window <= self.cfg.overlap:
            from pipeline.errors import ConfigError

            raise ConfigError(f"chunking.max_tokens ({self.cfg.max_tokens}) leaves {window} tokens after special "
                              f"tokens and the passage prefix; expected more than overlap ({self.cfg.overlap})")
        return window

    def spans(self, text: str) -> list[tuple[int, int, int]]:
        """(start_char, end_char, n_tokens) of each chunk of `text`."""
        enc = self.tokenizer.encoding(text)
        offsets, n = enc.offsets, len(enc.ids)
        if self.cfg.mode == "none" or n == 0:
            return [(0, len(text), n)]
        window, starts = self.token_budget(), _word_starts(enc.word_ids, offsets, text)
        spans, start = [], 0
        while True:
            end = min(start + window, n)
            if end < n:
                # Move the cut back to the start of the word it would split, if that keeps most of the window.
                cut = end
                while cut > start + window // 2 and not starts[cut]:
                    cut -= 1
                end = cut if cut > start + window // 2 else end
                # nor inside a character: byte-fallback tokens (an emoji in 4 of wordllama's) share its offsets
                while end > start + 1 and offsets[end][0] < offsets[end - 1][1]:
                    end -= 1
            first = start  # the chunk's first token: blank ones (a run of newlines) are not part of its text
            while first < end and _blank(text, offsets, first):
                first += 1
            if first < end:
                a, n_tokens = _lstrip(text, offsets[first][0], offsets[end - 1][1]), end - first
                if not starts[first]:  # begun inside a word too long to step back over (base64, a DNA sequence):
                    # its first piece re-tokenizes as a word's first, often into more tokens than the window
                    while (n_tokens := self.tokenizer.count(text[a:offsets[end - 1][1]], specials=False)) > window \
                            and end > first + 1:
                        end -= 1
                if a < offsets[end - 1][1]:  # not a window of whitespace ending on a "▁"
                    spans.append((a, offsets[end - 1][1], n_tokens))
            if end >= n:
                return spans or [(0, len(text), 0)]  # whitespace alone (the readers refuse such text)
            # Begin the next window at a word start too (the overlap grows by a few tokens), looking back at
            # most half a step: text without word starts (a DNA sequence, CJK for wordllama) keeps full steps.
            nominal = max(end - self.cfg.overlap, start + 1)
            floor = max(start + 1, nominal - (window - self.cfg.overlap) // 2)
            start = next((i for i in range(nominal, floor - 1, -1) if starts[i]), nominal)
            while start < n and offsets[start][0] < offsets[start - 1][1]:  # a character's later bytes: in this chunk
                start += 1

    def chunk(self, docs: pl.DataFrame) -> pl.DataFrame:
        """docs (doc_id, title, text) -> chunks (CHUNK_SCHEMA), in document order."""
        rows: dict[str, list] = {k: [] for k in CHUNK_SCHEMA}
        for doc_id, title, body in docs.select("doc_id", "title", "text").iter_rows():
            full = document_text(title, body)
            for i, (start, end, n_tok) in enumerate(self.spans(full)):
                piece = full[start:end]
                for key, value in zip(CHUNK_SCHEMA, (f"{doc_id}#{i}", doc_id, i, start, end, n_tok, piece,
                                                     self.chunk_hash(piece)), strict=True):
                    rows[key].append(value)
        return pl.DataFrame(rows, schema=CHUNK_SCHEMA)


def _word_starts(word_ids: list[int | None], offsets: list[tuple[int, int]], text: str) -> list[bool]:
    """Whether each token begins a word. The tokenizer's word ids say so when it pre-splits words (BERT);
    a SentencePiece tokenizer without a pre-tokenizer (wordllama's) gives one word id to every token, so
    there a token begins a word when its piece carries the space ("▁word", or a bare "▁" before digits) or
    whitespace no token covers precedes it. A digit after a bare "▁" is no word start: cut there, the
    chunk would re-tokenize with one more token."""
    if len(set(word_ids)) > 1:
        return [i == 0 or w is None or w != word_ids[i - 1] for i, w in enumerate(word_ids)]
    return [i == 0 or (a < len(text) and text[a].isspace()) or (offsets[i - 1][1] < a and text[a - 1].isspace())
            for i, (a, _) in enumerate(offsets)]


def _blank(text: str, offsets: list[tuple[int, int]], i: int) -> bool:
    """Whether token i is whitespace a chunk's text would not start with: a newline, a tab, a second space
    ("▁" before "▁word"). A lone "▁" before a token that carries no space ("▁", "1") is kept: a chunk
    starting there re-tokenizes with it."""
    a, b = offsets[i]
    if not text[a:b].isspace():
        return False
    glued = i + 1 < len(offsets) and offsets[i + 1][0] == b < len(text) and not text[b].isspace()
    return not (glued and text[a:b] == " ")


def _lstrip(text: str, a: int, b: int) -> int:
    """Skip the whitespace a SentencePiece piece carries ("▁word" spans " word"): a chunk then starts at
    its word, and re-tokenizing it gives its n_tokens instead of one more."""
    while a < b and text[a].isspace():
        a += 1
    return a
