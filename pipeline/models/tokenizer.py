"""A model's tokenizer through the `tokenizers` library alone.

transformers' tokenizer classes wrap the same Rust tokenizer, but importing transformers costs ~0.8 s
per process (every embedding actor, every CLI call); reading the folder's tokenizer.json directly gives
the same ids, offsets and word ids (tests/unit/test_tokenizer.py compares them). A folder without a
tokenizer.json is converted once through transformers, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from pipeline.errors import ModelError

UNBOUNDED = 10**30  # transformers' limit for a tokenizer that declares none
_ENVIRONMENT = threading.Lock()  # one parallel call at a time sets and restores TOKENIZERS_PARALLELISM


class TextTokenizer:
    """Ids with or without the model's special tokens, truncated like transformers' `truncation=True`. Safe to
    share between threads: nothing changes the Rust tokenizer's state after __init__ (transformers sets its
    truncation and padding on every call, which fails with "Already borrowed" when two threads overlap)."""

    def __init__(self, backend: Tokenizer, max_length: int = UNBOUNDED, pad_id: int = 0) -> None:
        # tokenizer.json files carry the truncation and padding their trainer last used (MiniLM's: 128)
        backend.no_truncation()
        backend.no_padding()
        self.backend, self.max_length, self.pad_id = backend, max_length, pad_id
        processor = backend.post_processor
        self.specials = processor.num_special_tokens_to_add(False) if processor else 0
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._truncators: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: Path) -> TextTokenizer:
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        try:
            if (folder / "tokenizer.json").is_file():
                backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            else:  # only a vocabulary (vocab.txt, sentencepiece): transformers converts it
                from transformers import AutoTokenizer

                converted = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
                backend = converted.backend_tokenizer
        except Exception as exc:  # OSError for a missing file; the Rust side raises plain Exception on a bad one
            raise ModelError(f"cannot load the tokenizer from {folder}: {exc}") from None
        pad = config.get("pad_token")
        pad_id = backend.token_to_id(pad["content"] if isinstance(pad, dict) else pad) if pad else None
        return cls(backend, int(config.get("model_max_length") or UNBOUNDED), pad_id or 0)

    def ids(self, texts: list[str], specials: bool = True, max_tokens: int | None = None,
            parallel: bool = False) -> list[list[int]]:
        """Token ids of each text; with max_tokens, cut to that many as transformers' `truncation=True` cuts: the
        text's first tokens, then the special tokens around them. The cut and the special tokens happen inside the
        Rust call, so `parallel` (all of the machine's cores, the same ids) spreads them too."""
        backend = self.backend if max_tokens is None else self._truncating(max_tokens)
        with tokenizer_threads(parallel):
            encodings = backend.encode_batch(texts, add_special_tokens=specials)
        return [encoding.ids for encoding in encodings]

    def _truncating(self, max_tokens: int) -> Tokenizer:
        """A copy of the tokenizer that cuts to max_tokens (special tokens counted), one per limit: the shared
        backend's own truncation is never set, so threads with different limits never see each other's."""
        with self._lock:
            if max_tokens not in self._truncators:
                copy = Tokenizer.from_str(self.backend.to_str())
                copy.enable_truncation(max_tokens)
                self._truncators[max_tokens] = copy
            return self._truncators[max_tokens]

    def count(self, text: str, specials: bool = True) -> int:
        return len(self.backend.encode(text, add_special_tokens=specials).ids)

    def encoding(self, text: str) -> Encoding:
        """The text's tokens without special tokens: ids, character offsets and word ids."""
        return self.backend.encode(text, add_special_tokens=False)


@contextlib.contextmanager
def tokenizer_threads(enabled: bool) -> Iterator[None]:
    """The Rust tokenizer's own threads for the calls inside. Processes here run with TOKENIZERS_PARALLELISM=false
    (the CLI, Ray workers: its threads would compete with torch's), and the library reads that variable at every
    call and offers no other switch. On a GPU, tokenizing on one core is most of an encode's time."""
    if not enabled:
        yield
        return
    with _ENVIRONMENT:  # a parallel call already takes every core: the next one waits for it
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        try:
            yield
        finally:
            if before is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
