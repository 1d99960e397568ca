"""Embedding on one GPU: embedpipe's encoder in each precision (and the kernel plan's choice) against
sentence-transformers' encode on the same GPU, on full SciFact (MiniLM, whole abstracts, model load excluded).

For each path: texts/s, tokens/s, the smallest cosine of any vector to fp32's, and tokens/s as a fraction of this
GPU's bf16 matrix peak, measured here with a large bf16 matmul (fp32 on a CPU without bf16). A token costs the
layers' matrix products and its attention over its text: 2 x 11.7M FLOPs for MiniLM on a 238-token abstract (the
embedding tables, half of its 22.7M weights, are lookups). Target: embedpipe >= 1.5x ST encode on the same GPU.
Writes benchmarks/out/gpu_embedding.{json,md};
benchmarks/gpu_check.sh runs it. --smoke (or no GPU): 64 abstracts of the demo sample on the CPU, same code path.

Usage: .venv/bin/python benchmarks/gpu_embedding.py [--smoke] [--rounds 3] [--out DIR] [--model-dir DIR]
                                                    [--corpus DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SAMPLE, SCIFACT, parse_args, write_report  # noqa: E402


def matmul_tflops(device: str, dtype: str, n: int = 8192, reps: int = 20) -> float:
    """What a large matmul in `dtype` achieves on `device`: the matrix peak tokens/s are compared with."""
    import torch

    from pipeline.models.kernels import DTYPES

    a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    b = torch.randn_like(a)
    a @ b  # warm-up
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="MiniLM's folder, where its package cannot be installed (an offline "
                                            "machine: benchmarks/gpu_bundle.sh); default: the installed package")
    parser.add_argument("--corpus", type=Path, default=SCIFACT, help=f"a BEIR folder (default {SCIFACT})")
    parser.add_argument("--rounds", type=int, default=3, help="each path's best of this many rounds (default 3)")
    args = parse_args(parser)
    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline.config import ModelConfig
    from pipeline.models.kernels import cpu_has_bf16
    from pipeline.models.sources import resolve_model_dir
    from pipeline.models.tokenizer import tokenizer_threads
    from pipeline.models.transformer import TransformerEncoder

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    corpus, limit = (SAMPLE, 64) if device == "cpu" else (args.corpus, None)
    with gzip.open(corpus / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh][:limit]
    texts = [f"{d['title']} {d['text']}" for d in docs]
    model = ModelConfig(path=args.model_dir)
    folder = str(resolve_model_dir(model))
    seconds, vectors, plans = {}, {}, {}

    def timed(name: str, encode) -> None:
        if name not in seconds:
            encode(texts[:64])  # warm-up: kernels picked, memory pools filled
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        # ST as a user runs it, tokenizers' threads on (their default): its better case on a GPU, its worse on a CPU
        with tokenizer_threads(name.startswith("st_") and device == "cuda"):
            vectors[name] = np.asarray(encode(texts), dtype=np.float32)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)

    st = SentenceTransformer(folder, device=device)
    paths = {"st_encode_fp32": lambda t: st.encode(t, batch_size=128)}
    if device == "cuda":
        st_half = SentenceTransformer(folder, device=device).half()
        paths["st_encode_fp16"] = lambda t: st_half.encode(t, batch_size=128)
    # on a CPU without bf16 instructions bf16 is emulated (minutes, and never chosen): fp32 and the plan only
    bf16_units = device == "cuda" or cpu_has_bf16()
    precisions = ["fp32", "fp16", "bf16"] if device == "cuda" else ["fp32", *(["bf16"] if bf16_units else [])]
    for precision in [*precisions, "auto"]:
        encoder = TransformerEncoder(model.model_copy(update={"precision": precision}), device=device)
        plans[precision] = encoder.kernel_plan.to_dict()
        paths[f"embedpipe_{precision}"] = encoder.encode
    for _ in range(1 if args.smoke else args.rounds):  # every path once per round: a slow moment costs one round
        for name, encode in paths.items():
            timed(name, encode)
    tokenizing = {}  # what an encode pays before its first forward pass, on one core and on all of them
    for parallel in (False, True):
        start = time.perf_counter()
        tokens = sum(len(x) for x in encoder.tokenizer.ids(texts, max_tokens=256, parallel=parallel))
        tokenizing["all_cores" if parallel else "one_core"] = round(time.perf_counter() - start, 3)
    peak_dtype = "bf16" if bf16_units else "fp32"  # emulated bf16 is no peak
    peak = matmul_tflops(device, peak_dtype, 8192 if device == "cuda" else 1024, 20 if device == "cuda" else 3)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    # per token and layer: q, k, v, output (4 h^2) and the feed-forward pair (2 h i) multiply-adds, plus attention's
    # scores and weighted sum over the text's tokens (2 h n)
    flops_per_token = 2 * layers * hidden * (4 * hidden + 2 * cfg["intermediate_size"] + 2 * tokens / len(texts))
    fp32 = vectors["embedpipe_fp32"]
    rows = {name: {"seconds": round(s, 3), "texts_per_s": round(len(texts) / s, 1),
                   "tokens_per_s": round(tokens / s), "min_cosine_vs_fp32": float(np.sum(vectors[name] * fp32,
                                                                                          axis=1).min()),
                   "fraction_of_matmul_peak": round(tokens / s * flops_per_token / (peak * 1e12), 4)}
            for name, s in seconds.items()}
    best_st = max((n for n in rows if n.startswith("st_")), key=lambda n: rows[n]["texts_per_s"])
    ratio = round(rows["embedpipe_auto"]["texts_per_s"] / rows[best_st]["texts_per_s"], 3)
    report = {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "texts": len(texts), "tokens": tokens, "tokenizing_seconds": tokenizing,
              "flops_per_token": round(flops_per_token),
              "matmul_peak": {"dtype": peak_dtype, "tflops": round(peak, 3)}, "paths": rows,
              "kernel_plans": plans, "ratio_plan_over_best_st": ratio, "best_st": best_st,
              "rounds": 1 if args.smoke else args.rounds}
    md = "\n".join([
        f"# Embedding on {report['gpu'] or 'the CPU'}: {len(texts):,} SciFact abstracts ({tokens:,} tokens), "
        "all-MiniLM-L6-v2", "",
        f"Kernel plan (auto): {plans['auto']['precision']}-{plans['auto']['path']}, {plans['auto']['chosen_by']}; "
        f"measured {peak_dtype} matmul: {peak:.3g} TFLOP/s. Tokenizing the texts alone: {tokenizing['one_core']} s on "
        f"one core, {tokenizing['all_cores']} s on all {os.cpu_count()} (embedpipe's encoder on a GPU uses all).", "",
        f"| path | texts/s | tokens/s | min cosine vs fp32 | fraction of {peak_dtype} matmul peak |",
        "|---|---|---|---|---|",
        *[f"| {n} | {r['texts_per_s']} | {r['tokens_per_s']:,} | {r['min_cosine_vs_fp32']:.6f} | "
          f"{r['fraction_of_matmul_peak']:.2%} |" for n, r in rows.items()], "",
        f"embedpipe (kernel plan) / {best_st}: **{ratio}x** (target >= 1.5x on a GPU); each path the best of "
        f"{report['rounds']} rounds.", ""])
    write_report(args, "gpu_embedding", report, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
