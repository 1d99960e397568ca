"""The static family: wordllama, a Matryoshka-trained table of token embeddings averaged over a text.

Loaded offline from the installed PyPI package (only its 256-dim weights ship). Thousands of texts per
second on a CPU; its quality is measured by benchmarks/representations.py, not assumed.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.models.card import ModelCard, file_sha256
from pipeline.models.kernel_plan import KernelPlan, cpu_model
from pipeline.models.tokenizer import TextTokenizer

WEIGHTS = "weights/l2_supercat_256.safetensors"
DEFAULT_MAX_TOKENS = 8192  # averaging has no position limit; this bounds pathological documents


def _wordllama():
    """The wordllama module, imported without what its import does to logging: `logging.basicConfig(level=INFO)`
    on the root logger, after which every library's INFO records (httpx's requests, Prefect's) reach stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        import wordllama
    except ImportError:
        raise ModelError("model.package 'wordllama' is not installed (pip install wordllama==0.4.0.post1)") from None
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return wordllama


def _package_dir() -> Path:
    folder = Path(_wordllama().__file__).parent
    if not (folder / WEIGHTS).is_file():
        raise ModelError(f"wordllama package at {folder}: expected {WEIGHTS}")
    return folder


def _without_word_cache(tokenizer: object) -> None:
    """Turn off the BPE model's word cache. This tokenizer has no pre-tokenizer, so its "words" are whole
    texts: the cache almost never hits, and a worker's memory grew with every part it embedded (+54 MB
    over 80 parts of ~1,100 chunks, still rising; +8 MB without the cache, at the same speed; see
    huggingface/tokenizers#1539). `_resize_cache` is the binding's own switch (a private name); where a
    tokenizers release lacks it, nothing changes."""
    resize = getattr(getattr(tokenizer, "model", None), "_resize_cache", None)
    if resize is not None:
        resize(0)


def wordllama_tokenizer(cfg: ModelConfig) -> tuple[TextTokenizer, int]:
    """wordllama's tokenizer (offsets, word ids) and the token limit."""
    from tokenizers import Tokenizer

    config = _package_dir() / "tokenizers" / "l2_supercat_tokenizer_config.json"
    tokenizer = TextTokenizer(Tokenizer.from_file(str(config)))
    _without_word_cache(tokenizer.backend)
    return tokenizer, cfg.max_tokens or DEFAULT_MAX_TOKENS


class WordLlamaEncoder:
    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.precision not in ("auto", "fp32"):
            raise ModelError(f"model.precision is {cfg.precision!r}, but {cfg.name} (wordllama) computes in fp32 "
                             f"only; expected auto or fp32")
        folder = _package_dir()
        logging.getLogger("wordllama").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):
            # cache_dir=the package folder: its default looks elsewhere and then tries the network
            self.model = _wordllama().WordLlama.load(cache_dir=folder, disable_download=True)
        _without_word_cache(self.model.tokenizer)  # wordllama tokenizes again with its own copy
        self.tokenizer, max_tokens = wordllama_tokenizer(cfg)
        self.batch_size = cfg.batch_size
        self.tokens_encoded = 0  # running total, for throughput reports
        self.card = ModelCard(
            name=cfg.name, source={"package": "wordllama"}, dims=int(self.model.embedding.shape[1]),
            pooling="mean", normalize=cfg.normalize, max_tokens=max_tokens, query_prefix=cfg.query_prefix,
            passage_prefix=cfg.passage_prefix, weights_sha256=file_sha256(folder / WEIGHTS))
        self.kernel_plan = KernelPlan("cpu", cpu_model(), 1, "fp32", "numpy", "only candidate")  # numpy averages

    def _truncate(self, texts: list[str]) -> list[str]:
        """Cut texts longer than max_tokens at that token's end (wordllama itself never truncates)."""
        limit = self.card.max_tokens
        ids = self.tokenizer.ids(texts, specials=False)
        self.tokens_encoded += sum(min(len(x), limit) for x in ids)
        long = [i for i, x in enumerate(ids) if len(x) > limit]
        if not long:
            return texts
        out = list(texts)
        for i in long:
            offsets = self.tokenizer.encoding(texts[i]).offsets
            out[i] = texts[i][: offsets[limit - 1][1]]
        return out

    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        prefix = self.card.query_prefix if kind == "query" else self.card.passage_prefix
        if not texts:
            return np.empty((0, self.card.dims), dtype=np.float32)
        batch = self._truncate([prefix + t for t in texts])
        vectors = np.array(self.model.embed(batch, norm=False, batch_size=self.batch_size), dtype=np.float32)
        if self.card.normalize:  # a text of no tokens ("") averages to zero: it stays zero, where dividing gave NaN
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        return np.ascontiguousarray(vectors, dtype=np.float32)
