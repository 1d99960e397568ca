"""nn.Linear through oneDNN on CPU, with each weight packed once.

torch runs a CPU nn.Linear as MKL's sgemm, which picks its kernels by CPU vendor; oneDNN (bundled with
torch) picks them by instruction set. On the project's AMD EPYC (Zen 5, AVX-512) MiniLM took 1.8x less
CPU per text through oneDNN (mpnet 1.6x), with vectors within 2.2e-7 of the default path
(docs/BENCHMARKS.md); on CPUs with bf16 units the same op runs bf16 weights (pipeline/models/kernels.py picks
which by measurement). Weights are reordered into oneDNN's blocked layout once, so a forward pass converts
nothing (torch.utils.mkldnn's MkldnnLinear converts the input and output of every call: 13% of the forward's
time).
"""

from __future__ import annotations

import torch


def available() -> bool:
    """Whether this torch build has the two oneDNN ops (private names, as Inductor uses them; torch is pinned)."""
    return torch.backends.mkldnn.is_available() and all(
        hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_reorder_linear_weight"))


class OneDnnLinear(torch.nn.Module):
    """Inference-only stand-in for an nn.Linear (same input and output, dense float32 tensors). With
    `dtype=torch.bfloat16` the weights are packed in bf16 and the input is cast to bf16 on the way in (oneDNN
    accumulates in fp32); the output comes back as float32, so layer norms, softmax and GELU stay in fp32, unless
    `cast_back` is off (a model that keeps bf16 between its matrix products: pipeline/models/bert.py). `gelu`: the
    exact GELU applied to the output inside oneDNN's kernel, instead of in a pass of its own."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype = torch.float32, gelu: bool = False,
                 cast_back: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        self.cast_back = cast_back and dtype != torch.float32
        self.post_op = ("gelu", [], "none") if gelu else ("none", [], "")  # "none": erf, not the tanh approximation
        weight = linear.weight.detach().to(dtype)
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, None))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.weight, self.bias, *self.post_op)
        return y.float() if self.cast_back else y


def use_onednn_linears(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """Swap every float32 nn.Linear of `model` (in place, for inference) for a OneDnnLinear computing in `dtype`."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child.weight.dtype == torch.float32:
                setattr(module, name, OneDnnLinear(child, dtype))
