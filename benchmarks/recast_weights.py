"""Rewrite a model.safetensors file with its floating-point tensors in another dtype, in place.

benchmarks/gpu_bundle.sh stores MiniLM's weights in fp16 (46 MB instead of 91) and benchmarks/gpu_check.sh --offline
widens them back to fp32 before anything runs, so every path it compares computes with the same weights.

Usage: python benchmarks/recast_weights.py FILE {fp16,fp32}
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file, save_file


def main() -> int:
    path, dtype = sys.argv[1], {"fp16": torch.float16, "fp32": torch.float32}[sys.argv[2]]
    weights = load_file(path)
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}, path, {"format": "pt"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
