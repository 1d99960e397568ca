"""Embedding throughput of the pipeline's actor path against two baselines, same texts, model and CPUs.

    (a) sentence_transformers.SentenceTransformer.encode in one process (model load included)
    (b) what a user would otherwise write: Ray Data map_batches over an actor pool of SentenceTransformer
        actors (2 actors x 0.5 CPU, so read tasks keep a CPU; actor start and model load included)
    (c) embedpipe: operators.embedding.RayEmbedder (--actors actors sharing 2 CPUs, torch threads = CPUs,
        token-budget batches, per-shard commit; actor start and model load included)
plus embedpipe's encoder in-process, for reference, with oneDNN linears (the default on CPU) and with
torch's default kernels (`model.cpu_onednn: false`). Checks that (c) and (a) give the same vectors
(max abs difference <= 1e-5). Writes benchmarks/out/embedding_throughput.{json,md}.
--smoke: 32 abstracts of the demo sample instead of --texts of the full corpus.

Usage: .venv/bin/python benchmarks/embedding_throughput.py [--texts 600] [--actors 2] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SAMPLE, SCIFACT, parse_args, write_report  # noqa: E402


class STActor:
    """The baseline's actor: what the Ray Data docs suggest for batch inference."""

    def __init__(self, folder: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device="cpu")

    def __call__(self, batch: dict) -> dict:
        return {"id": batch["id"], "vector": self.model.encode(list(batch["text"]), batch_size=32)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--actors", type=int, default=2, help="embedpipe actors (c); their CPUs share the machine's 2")
    args = parse_args(parser)
    import ray

    from operators.cluster import ensure_ray
    from operators.embedding import RayEmbedder
    from pipeline.config import ModelConfig, PipelineConfig
    from pipeline.jobs.executor import LocalExecutor
    from pipeline.jobs.indexing import load_vectors
    from pipeline.jobs.prepare import ShardInput, prepare
    from pipeline.models.encoder import load_encoder
    from pipeline.models.sources import resolve_model_dir
    from pipeline.storage.backend import Storage

    corpus, n_texts = (SAMPLE, 32) if args.smoke else (SCIFACT, args.texts)
    with gzip.open(corpus / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for _, line in zip(range(n_texts), fh, strict=False)]
    texts = [f"{d['title']} {d['text']}" for d in docs]
    model_cfg = ModelConfig()
    folder = str(resolve_model_dir(model_cfg))
    results = {}

    start = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    st_vectors = SentenceTransformer(folder, device="cpu").encode(texts, batch_size=32)
    results["a_sentence_transformers_encode"] = time.perf_counter() - start

    start = time.perf_counter()
    load_encoder(model_cfg.model_copy(update={"cpu_onednn": False})).encode(texts)
    results["embedpipe_encoder_in_process_torch_kernels"] = time.perf_counter() - start

    start = time.perf_counter()
    ours_inprocess = load_encoder(model_cfg).encode(texts)
    results["embedpipe_encoder_in_process"] = time.perf_counter() - start

    ensure_ray()
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    start = time.perf_counter()
    rows = ds.map_batches(STActor, fn_constructor_args=(folder,), batch_size=32, num_cpus=0.5,
                          compute=ray.data.ActorPoolStrategy(size=2)).take_all()
    results["b_ray_data_map_batches_st_actors"] = time.perf_counter() - start
    assert len(rows) == len(texts)

    with tempfile.TemporaryDirectory() as root:
        storage = Storage(root)
        corpus = Path(root) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"_id": f"d{i:05d}", "text": t}) + "\n" for i, t in enumerate(texts)))
        cfg = PipelineConfig.model_validate({  # whole texts, as ST gets them; 8 shards
            "index_name": "bench", "corpus": {"source": str(corpus)}, "chunking": {"mode": "none"},
            "run": {"shards": 8, "actors": args.actors, "cpus_per_actor": 2.0 / args.actors}})
        encoder_card = load_encoder(model_cfg).card
        prepared = prepare(cfg, storage, "bench", ShardInput(None), encoder_card, LocalExecutor())
        start = time.perf_counter()
        RayEmbedder(storage, model_cfg, cfg.run).embed("bench", prepared.shards, lambda result: None)
        results["c_embedpipe_actor_path"] = time.perf_counter() - start
        rows, vectors = load_vectors(storage, "bench", prepared.shards)
        ours = vectors[np.argsort([int(d[1:]) for d in rows["doc_id"].to_list()])]  # back to input order
    ray.shutdown()

    tokens = sum(len(x) for x in load_encoder(model_cfg).tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    diff = float(np.abs(ours - st_vectors).max())
    rate = {k: round(len(texts) / v, 2) for k, v in results.items()}
    report = {"texts": len(texts), "mean_tokens": round(tokens / len(texts), 1), "seconds": results,
              "texts_per_s": rate, "max_abs_diff_vs_st": diff,
              "ratio_c_over_a": round(rate["c_embedpipe_actor_path"] / rate["a_sentence_transformers_encode"], 3),
              "ratio_c_over_b": round(rate["c_embedpipe_actor_path"] / rate["b_ray_data_map_batches_st_actors"], 3),
              "in_process_max_abs_diff_vs_st": float(np.abs(ours_inprocess - st_vectors).max())}
    md = "\n".join([
        f"# Embedding throughput: {len(texts)} SciFact abstracts ({report['mean_tokens']} tokens on average), "
        f"embedpipe with {args.actors} actor(s), "
        "all-MiniLM-L6-v2, 2 CPUs", "", "| path | seconds | texts/s |", "|---|---|---|",
        *[f"| {k} | {v:.1f} | {rate[k]} |" for k, v in results.items()], "",
        f"embedpipe actor path / ST encode: **{report['ratio_c_over_a']}x** (target >= 1.2x on CPU); "
        f"/ Ray Data + ST actors: **{report['ratio_c_over_b']}x** (target >= 1.3x). "
        f"Max abs difference of the vectors vs ST: {diff:.2e}.", ""])
    write_report(args, "embedding_throughput", report, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
