"""The GPU path (fp16 embedding, FAISS on GPU) runs only where CUDA exists; here it is skipped, not faked."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@needs_cuda
def test_fp16_on_gpu_matches_fp32_on_cpu(sample_docs):
    from pipeline.config import ModelConfig
    from pipeline.transformer_encoder import TransformerEncoder

    texts = [d["title"] + " " + d["text"] for d in sample_docs[:64]]
    gpu = TransformerEncoder(ModelConfig(), device="cuda")
    cpu = TransformerEncoder(ModelConfig(), device="cpu")
    assert next(gpu.model.parameters()).dtype == torch.float16
    a, b = gpu.encode(texts), cpu.encode(texts)
    assert (np.sum(a * b, axis=1) > 0.999).all()  # cosine between fp16 and fp32 vectors


@needs_cuda
def test_faiss_sees_the_gpu():
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        pytest.skip("faiss-cpu is installed; the CUDA image installs faiss-gpu")
    assert faiss.get_num_gpus() > 0
