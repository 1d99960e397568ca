"""The transformer family: mean (or CLS) pooling, L2 normalisation, batches grouped by length.

The model is loaded once per process (a Ray actor holds one Encoder for its whole life). Texts are
tokenized once, sorted by length and cut into batches, so each batch pads only to its own longest text.
On a CPU with several threads the batches run side by side, one thread each.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.models import bert, kernels
from pipeline.models.batching import token_budget_batches
from pipeline.models.card import ModelCard, model_max_tokens, prompt_prefixes, settings_sha256, weights_sha256
from pipeline.models.sources import resolve_model_dir
from pipeline.models.tokenizer import TextTokenizer

# sentence-transformers modules this encoder applies itself (the model, its pooling, L2 normalisation)
_APPLIED_MODULES = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                    "sentence_transformers.models.Normalize")


def _pooling_mode(folder: Path, configured: str) -> str:
    """sentence-transformers folders say their pooling in 1_Pooling/config.json, and their steps in modules.json:
    the pooling must match the config's and be one this encoder computes (mean or CLS), and every step one it
    applies; else the vectors would differ from the model's without a word (a Dense projection left out, max
    pooling taken as mean)."""
    modules = folder / "modules.json"
    if modules.is_file():
        others = [m.get("type") for m in json.loads(modules.read_text()) if m.get("type") not in _APPLIED_MODULES]
        if others:
            raise ModelError(f"{folder}: its modules.json has steps this encoder does not apply ({', '.join(others)});"
                             " expected a transformer, pooling and normalisation only")
    cfg = folder / "1_Pooling" / "config.json"
    if cfg.is_file():
        st = json.loads(cfg.read_text())
        modes = sorted(k.removeprefix("pooling_mode_") for k, v in st.items() if k.startswith("pooling_mode_") and v)
        declared = {"mean_tokens": "mean", "cls_token": "cls"}.get(modes[0]) if len(modes) == 1 else None
        if modes and declared is None:
            raise ModelError(f"{folder} pools with {' + '.join(modes)}; this encoder computes mean or CLS pooling only")
        if declared and declared != configured:
            raise ModelError(f"model.pooling is {configured!r} but {folder} was trained with {declared!r} pooling")
    return configured


def _hidden_size(folder: Path) -> int:
    """The model's output width, as its config.json names it (DistilBERT says `dim`)."""
    config = json.loads((folder / "config.json").read_text())
    for key in ("hidden_size", "dim", "d_model"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ModelError(f"{folder}/config.json names no hidden size (hidden_size, dim or d_model)")


class _AutoModel(torch.nn.Module):
    """transformers' AutoModel behind BertEncoder's call: (input_ids, attention_mask) -> last hidden state."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        super().__init__()
        hf_logging.disable_progress_bar()  # one bar per model load is noise in actor logs
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _load_model(folder: Path) -> torch.nn.Module:
    """BERT models (MiniLM) through pipeline/models/bert.py, which skips importing transformers' modeling code
    (2.2 s); every other architecture through transformers."""
    return (bert.load_bert(folder) if bert.supports(folder) else _AutoModel(folder)).eval()


class TransformerEncoder:
    def __init__(self, cfg: ModelConfig, device: str | None = None, threads: int | None = None,
                 offer: list[str] | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs we asked for
        self.folder = resolve_model_dir(cfg)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = TextTokenizer.from_folder(self.folder)
        pooling, weights = _pooling_mode(self.folder, cfg.pooling), weights_sha256(self.folder)
        self.pooling, self.normalize = pooling, cfg.normalize
        limit = model_max_tokens(self.folder, self.tokenizer.max_length)
        if cfg.max_tokens and cfg.max_tokens > limit:
            raise ModelError(f"model.max_tokens ({cfg.max_tokens}) exceeds what {cfg.name} supports ({limit})")
        self.batch_tokens = cfg.batch_tokens.for_device(self.device)
        # a GPU is fed by tokens: 64 texts of 256 tokens fill a quarter of its budget, and short chunks far less
        self.batch_size = None if self.device.startswith("cuda") else cfg.batch_size
        # A GPU encodes faster than one core tokenizes. On a CPU the tokenizer's threads cost the forward passes that
        # follow more than they save (600 abstracts on 2 vCPUs: 28.4 s against 27.3 s, tokenizing 0.38 s against 0.59)
        self.parallel_tokenize = self.device.startswith("cuda")
        # On a GPU the texts are tokenized this many at a time, the next lot while the GPU runs the last one's batches.
        # On a CPU both would share the same cores: the texts stay one lot, length-sorted as a whole
        self.texts_per_step = 1024 if self.device.startswith("cuda") else None
        # On a CPU the batches run side by side, one thread each, rather than one at a time on every thread: layer
        # norms, attention over 32-wide heads and the casts scale poorly across threads, and one batch's Python
        # overhead hides behind another's products (bf16, 2 vCPUs of an AMX Xeon: 1.03-1.11x).
        # A batch's vectors do not depend on the threads that ran it (bitwise there, for every CPU kernel)
        try:
            model = _load_model(self.folder).to(self.device)
            shapes = kernels.probe_shapes(cfg.max_tokens or limit, self.batch_tokens)
            self.kernel_plan = kernels.plan_kernels(model, self.device, cfg, weights, self.tokenizer.vocab_size,
                                                    self._pool, shapes, offer)
            self.model = kernels.apply(model, self.kernel_plan.kernel)
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            why = " ".join(str(exc).split())  # torch's load errors span lines; the CLI prints one
            raise ModelError(f"cannot load the model from {self.folder}: {why}") from None
        self.tokens_encoded = 0  # running total, for throughput reports
        query_prefix, passage_prefix = prompt_prefixes(self.folder, cfg.query_prefix, cfg.passage_prefix)
        self.card = ModelCard(
            name=cfg.name,
            source={"path": str(self.folder)} if cfg.path else {"package": cfg.package},
            dims=_hidden_size(self.folder),
            pooling=pooling,
            normalize=cfg.normalize,
            max_tokens=cfg.max_tokens or limit,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
            weights_sha256=weights,
            precision=self.kernel_plan.precision,
            settings_sha256=settings_sha256(self.folder) if cfg.path else None,
        )

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One vector per text: the CLS token's or the mean over its tokens, L2-normalised when configured."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    @torch.inference_mode()
    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        """float32 vectors (len(texts) x dims), in the order of `texts`."""
        prefix = self.card.query_prefix if kind == "query" else self.card.passage_prefix
        out = np.empty((len(texts), self.card.dims), dtype=np.float32)
        if not texts:
            return out
        # kernels are queued and the vectors read back at the end, so a GPU never waits on the tokenizer's next lot
        step = self.texts_per_step or len(texts)
        pooled: list[tuple[np.ndarray, torch.Tensor]] = []
        for start in range(0, len(texts), step):
            ids = self.tokenizer.ids([prefix + t for t in texts[start:start + step]], max_tokens=self.card.max_tokens,
                                     parallel=self.parallel_tokenize)
            self.tokens_encoded += sum(map(len, ids))
            batches = token_budget_batches([len(x) for x in ids], self.batch_tokens, self.batch_size)
            forward = functools.partial(self._forward, ids)
            threads = torch.get_num_threads() if self.device == "cpu" else 1  # the calling thread's
            vectors = kernels.map_side_by_side(forward, batches, threads)  # one batch (a query) keeps every thread
            pooled.extend((np.asarray(rows) + start, v) for rows, v in zip(batches, vectors, strict=True))
        for rows, vectors in pooled:
            out[rows] = vectors.cpu().numpy()
        return out

    @torch.inference_mode()  # per thread, so here rather than on encode alone
    def _forward(self, ids: list[list[int]], rows: list[int]) -> torch.Tensor:
        """The pooled vectors of one batch (rows: positions in ids)."""
        input_ids, mask = self._padded([ids[i] for i in rows])
        return self._pool(self.model(input_ids, mask).float(), mask)

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's ids padded on the right to its longest row, and the attention mask."""
        # in numpy, in one pass over the ids: row by row in Python took 11 ms per batch of 256 abstracts, 1.1 ms this
        # way, which matters where a GPU waits for it (an encode of SciFact on an H200: 0.76 s before, 0.56 s after)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        filled = np.arange(lengths.max())[None, :] < lengths[:, None]
        ids = np.full(filled.shape, self.tokenizer.pad_id, dtype=np.int64)
        ids[filled] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        input_ids, mask = torch.from_numpy(ids), torch.from_numpy(filled.astype(np.int64))
        if self.device == "cpu":
            return input_ids, mask
        # from pinned memory the copy is queued like the kernels instead of waiting for them
        return (input_ids.pin_memory().to(self.device, non_blocking=True),
                mask.pin_memory().to(self.device, non_blocking=True))
