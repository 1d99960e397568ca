"""What every encoder offers, and the one place that picks a model family from a config.

Families: `transformer` (transformers models from a folder or package, pipeline/models/transformer.py)
and `static` (wordllama token-embedding averages, pipeline/models/static.py). Chunking, the Ray actors
and search only see this interface.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Protocol

import numpy as np

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.models.card import ModelCard, model_max_tokens, prompt_prefixes
from pipeline.models.kernel_plan import KernelPlan
from pipeline.models.tokenizer import TextTokenizer


class Encoder(Protocol):
    card: ModelCard
    tokenizer: TextTokenizer  # chunking and token counts use it
    tokens_encoded: int  # tokens sent through the model so far (after truncation)
    kernel_plan: KernelPlan  # the precision and kernels it computes with, and why (pipeline/models/kernels.py)

    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        """float32 vectors (len(texts) x card.dims), in the order of `texts`."""
        ...


def load_encoder(cfg: ModelConfig, device: str | None = None, threads: int | None = None,
                 offer: list[str] | None = None) -> Encoder:
    """The model, loaded; `offer` names the kernels its probe compares (see kernels.plan_kernels)."""
    if cfg.family == "static":
        from pipeline.models.static import WordLlamaEncoder

        return WordLlamaEncoder(cfg)
    from pipeline.models.transformer import TransformerEncoder

    return TransformerEncoder(cfg, device=device, threads=threads, offer=offer)


def tokenizer_for(cfg: ModelConfig) -> tuple[TextTokenizer, int]:
    """The family's tokenizer and token limit, without loading weights or importing torch (for chunking, on
    workers that only prepare, and for the CLI's checks)."""
    if cfg.family == "static":
        from pipeline.models.static import wordllama_tokenizer

        return wordllama_tokenizer(cfg)
    from pipeline.models.sources import resolve_model_dir

    folder = resolve_model_dir(cfg)
    tokenizer = TextTokenizer.from_folder(folder)
    return tokenizer, cfg.max_tokens or model_max_tokens(folder, tokenizer.max_length)


def passage_prefix(cfg: ModelConfig) -> str:
    """What every passage is encoded after (the chunker leaves room for it): the configured one, else the model's
    sentence-transformers document prompt."""
    if cfg.family == "static":
        return cfg.passage_prefix
    from pipeline.models.sources import resolve_model_dir

    return prompt_prefixes(resolve_model_dir(cfg), cfg.query_prefix, cfg.passage_prefix)[1]


@lru_cache(maxsize=2)
def cached_encoder(cfg: ModelConfig) -> Encoder:
    """One loaded model per process and config (loading costs seconds; a CLI call may need it twice)."""
    return load_encoder(cfg)


def pinned_to(model: ModelConfig, encoder: Encoder) -> ModelConfig:
    """The model config for a build's workers: the kernel this process chose (its card, query encoding and the
    evaluation use it), so every shard of a run computes the same way and no worker probes again."""
    if model.family != "transformer" or model.kernel:
        return model
    plan = encoder.kernel_plan
    return model.model_copy(update={"precision": plan.precision, "kernel": plan.kernel.name})


def encoder_for_card(card: ModelCard, kernel: str | None = None) -> Encoder:
    """The encoder a snapshot was built with, in its precision and, where given, with the kernel its queries were
    encoded with (bf16 kernels differ in rounding); refuses different weights or dimensions."""
    cfg = card.model_config()
    if kernel and kernel.startswith(card.precision + "-"):
        cfg = cfg.model_copy(update={"kernel": kernel})
    enc = cached_encoder(cfg)
    if enc.card.weights_sha256 != card.weights_sha256:
        raise ModelError(f"model {card.name}: weights sha256 {enc.card.weights_sha256[:12]}... differ from the "
                         f"{card.weights_sha256[:12]}... recorded in the snapshot; expected the same model")
    if card.settings_sha256 and enc.card.settings_sha256 != card.settings_sha256:
        raise ModelError(f"model folder {card.source.get('path')}: its tokenizer or settings files changed since the "
                         "snapshot was built (their sha256 differs); expected the same files")
    if enc.card.dims != card.dims:
        raise ModelError(f"model {card.name} gives {enc.card.dims} dims; the snapshot expects {card.dims}")
    return enc
