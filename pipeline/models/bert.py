"""BERT's encoder for inference in plain torch, with weights from a transformers folder's model.safetensors.

Why not transformers' BertModel: importing transformers' modeling stack (torch._dynamo, scipy.optimize,
torch.distributed, ...) takes 2.2 s, paid by every CLI call, flow run and Ray actor, while the forward
pass itself is the few lines below. MiniLM (model_type "bert", absolute positions, exact GELU) loads
here; any other architecture (mpnet) or variant loads through transformers.AutoModel instead
(`supports`). tests/unit/test_encoder_search.py checks both against sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models import onednn

# transformers' names of each layer's weights (below encoder.layer.<i>.) -> ours
_LAYER_NAMES = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
                "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
                "intermediate.dense": "up", "output.dense": "down", "output.LayerNorm": "out_norm"}


def supports(folder: Path) -> bool:
    cfg = json.loads((folder / "config.json").read_text())
    return (cfg.get("model_type") == "bert" and cfg.get("hidden_act") == "gelu"
            and cfg.get("position_embedding_type", "absolute") == "absolute"
            and (folder / "model.safetensors").is_file())


class _Linear(nn.Linear):
    def reset_parameters(self) -> None:
        """No random init: load_bert replaces every weight (initialising MiniLM's took ~0.15 s per process)."""


class _Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        """As _Linear: the file's weights replace these."""


class _Layer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.attn_out = (_Linear(hidden, hidden) for _ in range(4))
        self.up, self.down = _Linear(hidden, intermediate), _Linear(intermediate, hidden)
        self.act: nn.Module = nn.GELU()  # exact (erf), as BERT's "gelu"
        self.attn_norm, self.out_norm = nn.LayerNorm(hidden, eps=eps), nn.LayerNorm(hidden, eps=eps)
        self.matmul_dtype: torch.dtype | None = None  # what the products and attention read (None: x's); use_onednn

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, h = x.shape
        y = x.to(self.matmul_dtype or x.dtype)  # x itself, uncopied, where the dtypes agree
        q, k, v = (p(y).view(b, n, self.heads, h // self.heads).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, h)
        # the residual sums in place (x is this layer's own input, read by nothing after): 2-4% of a bf16 pass
        x = self.attn_norm(x.add_(self.attn_out(attended)))
        y = x.to(self.matmul_dtype or x.dtype)
        return self.out_norm(x.add_(self.down(self.act(self.up(y)))))

    def use_onednn(self, dtype: torch.dtype) -> None:
        """Matrix products through oneDNN in `dtype`, GELU inside the up projection's kernel, and in bf16 the
        products' outputs kept in bf16 up to the next residual sum: the residual stream and the layer norms stay
        fp32. Against bf16 linears that return fp32 (what any other model gets): no casts of the 4x wide feed-forward
        activations and no GELU pass of its own (MiniLM on a Xeon with AMX: 1.18-1.22x autocast, as close to fp32)."""
        for name in ("query", "key", "value", "attn_out", "down"):
            setattr(self, name, onednn.OneDnnLinear(getattr(self, name), dtype, cast_back=False))
        self.up = onednn.OneDnnLinear(self.up, dtype, gelu=True, cast_back=False)
        self.act, self.matmul_dtype = nn.Identity(), dtype


class BertEncoder(nn.Module):
    """input_ids, attention_mask (batch x tokens) -> last hidden state (batch x tokens x hidden)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.word = _Embedding(cfg["vocab_size"], hidden)
        self.position = _Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type = _Embedding(cfg["type_vocab_size"], hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(_Layer(hidden, cfg["intermediate_size"], cfg["num_attention_heads"], eps)
                                    for _ in range(cfg["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        # every token has segment 0, as in a single-text encode
        x = self.word(input_ids) + self.position.weight[:n] + self.token_type.weight[0]
        x = self.norm(x)
        # padded keys are masked out; a batch without padding needs no mask (SDPA's faster path). Not asked on a GPU:
        # reading the answer back would wait for every batch queued before this one
        unpadded = attention_mask.device.type == "cpu" and bool(attention_mask.all())
        mask = None if unpadded else attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def use_onednn(self, dtype: torch.dtype) -> None:
        """The kernel plan's oneDNN path (pipeline/models/kernels.py) fitted to BERT's layers: _Layer.use_onednn."""
        for layer in self.layers:
            layer.use_onednn(dtype)


def load_bert(folder: Path) -> BertEncoder:
    from safetensors.torch import load_file

    model = BertEncoder(json.loads((folder / "config.json").read_text()))
    renamed = {}
    for key, tensor in load_file(folder / "model.safetensors").items():
        key = key.removeprefix("bert.")
        if key.startswith(("pooler.", "embeddings.position_ids", "cls.", "classifier.", "qa_outputs.")):
            continue  # unused by mean/CLS pooling of the last hidden state (a checkpoint's training heads too); a
            # buffer of 0..n-1
        key = key.replace("embeddings.word_embeddings", "word").replace("embeddings.position_embeddings", "position")
        key = key.replace("embeddings.token_type_embeddings", "token_type").replace("embeddings.LayerNorm", "norm")
        if key.startswith("encoder.layer."):
            index, _, rest = key.removeprefix("encoder.layer.").partition(".")
            name, _, param = rest.rpartition(".")
            key = f"layers.{index}.{_LAYER_NAMES.get(name, name)}.{param}"
        renamed[key] = tensor
    # assign: the file's tensors become the parameters, uncopied; a missing or unexpected weight fails here, by name
    model.load_state_dict(renamed, strict=True, assign=True)
    return model.eval()
