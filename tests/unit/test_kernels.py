"""The kernel plan: measured on this machine, within tolerance of fp32, cached, pinned, and recorded in the card."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.config_loader import parse_config
from pipeline.errors import ConfigError, ModelError
from pipeline.models.kernel_plan import TOLERANCE, Kernel, ProbeResult


def test_the_fastest_kernel_within_tolerance_wins_and_fp32_is_the_fallback():
    from pipeline.models.kernels import choose

    kernels = [Kernel("fp32", "torch"), Kernel("fp32", "onednn"), Kernel("bf16", "onednn"), Kernel("bf16", "autocast")]
    results = [ProbeResult("fp32-torch", 100, 1.0), ProbeResult("fp32-onednn", 180, 1.0),
               ProbeResult("bf16-onednn", 400, 0.99995), ProbeResult("bf16-autocast", 500, 0.9991)]
    assert choose(results, kernels) == Kernel("bf16", "onednn")  # autocast is faster but too far from fp32
    too_far = [ProbeResult(r.kernel, r.tokens_per_s, 0.5) for r in results]
    assert choose(too_far, kernels) == Kernel("fp32", "torch")


def test_a_gpu_falls_back_to_fp32_when_no_half_precision_is_close_enough(monkeypatch):
    import torch

    from pipeline.models.kernels import candidates, choose

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    kernels = candidates("cuda", "auto")
    assert [k.name for k in kernels] == ["fp32-cuda", "fp16-cuda", "bf16-cuda"]
    results = [ProbeResult("fp32-cuda", 1e5, 1.0), ProbeResult("fp16-cuda", 4e5, 0.9995),
               ProbeResult("bf16-cuda", 5e5, 0.998)]
    assert choose(results, kernels) == Kernel("fp32", "cuda")  # faster, but neither half precision is within 0.9999
    assert choose([*results[:1], ProbeResult("fp16-cuda", 4e5, 0.99999), results[2]], kernels) == Kernel("fp16", "cuda")
    assert [k.name for k in candidates("cuda", "bf16")] == ["bf16-cuda"]


def test_auto_probes_every_candidate_and_its_vectors_stay_within_tolerance(sample_docs, encoder, tmp_path,
                                                                         monkeypatch):
    from pipeline.models.encoder import load_encoder

    monkeypatch.setenv("EMBEDPIPE_KERNEL_CACHE", str(tmp_path))  # a machine that never probed
    auto = load_encoder(ModelConfig())  # the default: precision auto
    plan = auto.kernel_plan
    assert plan.chosen_by == "probe" and plan.kernel.name in {p.kernel for p in plan.probes}
    assert {"fp32-torch", "fp32-onednn"} <= {p.kernel for p in plan.probes}
    chosen = next(p for p in plan.probes if p.kernel == plan.kernel.name)
    assert chosen.min_cosine >= TOLERANCE and chosen.tokens_per_s == max(
        p.tokens_per_s for p in plan.probes if p.min_cosine >= TOLERANCE)
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:32]]
    cosines = np.sum(auto.encode(texts) * encoder.encode(texts), axis=1)  # against the fp32 fixture
    assert cosines.min() >= TOLERANCE
    assert auto.card.precision == plan.precision
    assert (auto.card.fingerprint == encoder.card.fingerprint) == (plan.precision == "fp32")  # bf16 vectors: own cache

    again = load_encoder(ModelConfig())  # another process on this machine reads the plan instead of probing
    assert again.kernel_plan.chosen_by == "cache" and again.kernel_plan.kernel == plan.kernel
    pinned = load_encoder(ModelConfig(kernel=plan.kernel.name))  # what a build's workers get
    assert pinned.kernel_plan.chosen_by == "pinned by model.kernel" and pinned.card == auto.card
    assert np.array_equal(pinned.encode(texts), again.encode(texts))


def test_queries_are_encoded_in_the_precision_the_snapshot_was_built_with(encoder):
    from pipeline.models.card import ModelCard
    from pipeline.models.encoder import encoder_for_card

    bf16 = ModelCard.from_dict(encoder.card.to_dict() | {"precision": "bf16"})
    assert bf16.fingerprint != encoder.card.fingerprint
    assert encoder_for_card(bf16).card == bf16  # loaded in bf16, whatever this machine would pick
    # with the kernel the build encoded its queries with (recorded in the manifest): the same rounding as then
    pinned = encoder_for_card(bf16, "bf16-autocast")
    assert pinned.card == bf16 and pinned.kernel_plan.kernel.name == "bf16-autocast"
    assert encoder_for_card(encoder.card, "bf16-autocast").card.precision == "fp32"  # another precision: ignored
    old = {k: v for k, v in encoder.card.to_dict().items() if k != "precision"}  # written before precisions
    assert "precision" not in old and ModelCard.from_dict(old).precision == "fp32"
    assert ModelCard.from_dict(old).fingerprint == encoder.card.fingerprint


def test_a_precision_the_model_cannot_run_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"model.kernel 'bf16-onednn' computes in bf16, but model.precision is"):
        parse_config({"index_name": "t", "corpus": {"source": str(tmp_path)}, "storage": {"root": str(tmp_path)},
                      "model": {"precision": "fp32", "kernel": "bf16-onednn"}})
    from pipeline.models.encoder import load_encoder

    with pytest.raises(ModelError, match="wordllama.*computes in fp32 only"):
        load_encoder(ModelConfig(name="wordllama-l2-supercat", package="wordllama", precision="bf16"))
