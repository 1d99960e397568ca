"""The kernel plan: measured on this machine, within tolerance of fp32, cached, pinned, and recorded in the card."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.config_loader import parse_config
from pipeline.errors import ConfigError, ModelError
from pipeline.models.kernel_plan import (
    TOLERANCE,
    Kernel,
    KernelPlan,
    MachinePlan,
    ProbeResult,
    choose_across,
    cpu_offer,
)


def test_the_fastest_kernel_within_tolerance_wins_and_fp32_is_the_fallback():
    from pipeline.models.kernels import choose

    kernels = [Kernel("fp32", "torch"), Kernel("fp32", "onednn"), Kernel("bf16", "onednn"), Kernel("bf16", "autocast")]
    results = [ProbeResult("fp32-torch", 100, 1.0), ProbeResult("fp32-onednn", 180, 1.0),
               ProbeResult("bf16-onednn", 400, 0.99995), ProbeResult("bf16-autocast", 500, 0.9991)]
    assert choose(results, kernels) == Kernel("bf16", "onednn")  # autocast is faster but too far from fp32
    too_far = [ProbeResult(r.kernel, r.tokens_per_s, 0.5) for r in results]
    assert choose(too_far, kernels) == Kernel("fp32", "torch")


def _machine(cpu: str, actors: int, rates: dict[str, float], runs_as: dict[str, str] | None = None,
             cosine: float = 0.99998) -> MachinePlan:
    probes = [ProbeResult(k, r, 1.0 if k.startswith("fp32") else cosine) for k, r in rates.items()]
    plan = KernelPlan("cpu", cpu, 2, "fp32", "torch", "probe", probes)
    return MachinePlan(cpu, actors, plan, {n: (runs_as or {}).get(n, n) for n in cpu_offer()})


# Tokens/s of one 2-thread actor. An Intel Xeon with AMX runs MiniLM ~2.7x faster under bf16 autocast; a CPU
# without bf16 units (AMD EPYC Zen 3) emulates bf16, ~4x slower than fp32, and runs bf16-onednn under autocast.
XEON = {"fp32-torch": 7000, "fp32-onednn": 7400, "bf16-onednn": 17000, "bf16-autocast": 19000}
ZEN3 = {"fp32-torch": 6000, "fp32-onednn": 6100, "bf16-autocast": 1500}
ZEN3_RUNS = {"bf16-onednn": "bf16-autocast"}


def test_unlike_cpus_share_the_kernel_fastest_in_sum_over_their_actors():
    offered = cpu_offer()
    mostly_xeons = [_machine("Xeon [amx_bf16]", 8, XEON), _machine("EPYC [no avx512]", 2, ZEN3, ZEN3_RUNS)]
    kernel, why = choose_across(mostly_xeons, offered)
    assert kernel == "bf16-autocast"  # 8 x 19,000 + 2 x 1,500 against 8 x 7,400 + 2 x 6,100 for fp32-onednn
    assert "Xeon [amx_bf16]: 8 actors at 19,000 tokens/s" in why and "EPYC [no avx512]: 2 actors at 1,500" in why
    mostly_zen3 = [_machine("Xeon [amx_bf16]", 1, XEON), _machine("EPYC [no avx512]", 8, ZEN3, ZEN3_RUNS)]
    assert choose_across(mostly_zen3, offered)[0] == "fp32-onednn"  # emulated bf16 would slow 8 actors 4x
    # bf16 strays beyond tolerance on one CPU: no bf16 kernel for any, however fast elsewhere
    strays = [_machine("Xeon [amx_bf16]", 8, XEON), _machine("EPYC [no avx512]", 2, ZEN3, ZEN3_RUNS, cosine=0.999)]
    assert choose_across(strays, offered)[0] == "fp32-onednn"
    # a kernel one CPU did not measure (oneDNN off there) is not chosen; fp32 through torch is the fallback
    partial = [_machine("Xeon [amx_bf16]", 8, XEON), _machine("EPYC [no avx512]", 2, {"fp32-torch": 6000})]
    assert choose_across(partial, offered)[0] == "fp32-torch"
    assert cpu_offer(allow_onednn=False) == ["fp32-torch", "bf16-autocast"]


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
                                                                         monkeypatch, caplog):
    from pipeline.models.encoder import load_encoder
    from pipeline.models.kernels import candidates

    monkeypatch.setenv("EMBEDPIPE_KERNEL_CACHE", str(tmp_path))  # a machine that never probed
    auto = load_encoder(ModelConfig())  # the default: precision auto
    plan = auto.kernel_plan
    # minutes for a large model on a few CPUs, before anything else shows: said as it starts
    assert f"measuring {len(plan.probes)} kernels of this model on " in caplog.text
    assert plan.chosen_by == "probe" and plan.kernel.name in {p.kernel for p in plan.probes}
    assert {p.kernel for p in plan.probes} == {k.name for k in candidates("cpu", "auto")} >= {"fp32-torch",
                                                                                            "fp32-onednn"}
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
    if pinned.kernel_plan.device == "cpu":  # a GPU's kernel named on a CPU: the plan says what ran, and why
        gpus = load_encoder(ModelConfig(kernel="fp16-cuda")).kernel_plan
        assert (gpus.kernel.name, gpus.chosen_by) == ("fp16-autocast", "pinned by model.kernel fp16-cuda, as it "
                                                                       "runs here")


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
