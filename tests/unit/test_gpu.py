"""The GPU path (fp16/bf16 embedding chosen by the kernel probe, FAISS on GPU) runs only where CUDA exists;
here it is skipped, not faked. EMBEDPIPE_MODEL_DIR names MiniLM's folder where its package cannot be installed
(benchmarks/gpu_check.sh --offline)."""

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@needs_cuda
def test_gpu_kernel_plan_picks_a_half_precision_within_tolerance_of_fp32(sample_docs):
    from pipeline.config import ModelConfig
    from pipeline.models.transformer import TransformerEncoder

    texts = [d["title"] + " " + d["text"] for d in sample_docs[:64]]
    folder = os.environ.get("EMBEDPIPE_MODEL_DIR")
    gpu = TransformerEncoder(ModelConfig(path=folder), device="cuda")
    plan = gpu.kernel_plan
    assert plan.device == "cuda" and plan.precision in ("fp16", "bf16") and plan.chosen_by in ("probe", "cache")
    assert {p.kernel for p in plan.probes} >= {"fp16-cuda"} and gpu.card.precision == plan.precision
    assert next(gpu.model.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[plan.precision]
    assert gpu.batch_size is None and gpu.batch_tokens == 65536  # batches sized by tokens alone, not 64 texts
    cpu = TransformerEncoder(ModelConfig(path=folder, precision="fp32"), device="cpu")
    for precision in ("fp16", "bf16"):
        half = TransformerEncoder(ModelConfig(path=folder, precision=precision), device="cuda")
        a, b = half.encode(texts), cpu.encode(texts)
        assert (np.sum(a * b, axis=1) > 0.999).all(), precision  # cosine between half and fp32 vectors
    many = gpu.encode(texts * 20)  # 1,280 texts: two lots, the second tokenized while the GPU runs the first
    assert (np.sum(many * np.tile(gpu.encode(texts), (20, 1)), axis=1) > 0.9999).all()


@needs_cuda
def test_faiss_sees_the_gpu():
    faiss = pytest.importorskip("faiss")

    if not hasattr(faiss, "StandardGpuResources"):
        pytest.skip("faiss-cpu is installed; the CUDA image installs faiss-cuda")
    assert faiss.get_num_gpus() > 0


def _recall_at_10(index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, got = index.search(queries, 10)
    return float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(got, truth, strict=True)]))


@needs_cuda
def test_ivfpq_trained_on_gpu_recalls_like_cpu(monkeypatch):
    faiss = pytest.importorskip("faiss")

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss-cpu is installed; the CUDA image installs faiss-cuda")
    from pipeline.config import IvfConfig
    from pipeline.index.faiss_ops import build_exact, build_ivfpq
    from pipeline.index.plan import plan_ivfpq
    from tests.unit.test_index import clustered

    x = clustered(40_000, d=128, seed=5)
    plan = plan_ivfpq(len(x), 128, IvfConfig())
    _, truth = build_exact(x).search(x[:1000], 10)
    calls = []
    to_gpu = faiss.index_cpu_to_all_gpus
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: calls.append(1) or to_gpu(index))
    gpu = build_ivfpq(x, plan, seed=0)
    assert calls  # the coarse k-means really ran on the GPU
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    cpu = build_ivfpq(x, plan, seed=0)
    r_gpu, r_cpu = _recall_at_10(gpu, x[:1000], truth), _recall_at_10(cpu, x[:1000], truth)
    assert r_cpu > 0.5 and abs(r_gpu - r_cpu) <= 0.03, (r_gpu, r_cpu)
