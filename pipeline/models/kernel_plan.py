"""What a kernel plan is (pipeline/models/kernels.py makes one): the precision and kernels that ran a model, on which
hardware, and the probe that chose them. Torch-free, so the static family and the reports can use it."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOLERANCE = 0.9999  # min cosine to the fp32 vector of every probe text


@dataclass(frozen=True)
class Kernel:
    precision: str  # "fp32", "bf16", "fp16": the vectors' precision, recorded in the model card
    path: str  # "torch", "onednn", "autocast" (CPU) or "cuda"

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.path}"


@dataclass(frozen=True)
class ProbeResult:
    kernel: str
    tokens_per_s: float
    min_cosine: float  # to the fp32 reference, over the probe's texts


@dataclass(frozen=True)
class KernelPlan:
    """What runs the model here and why; recorded in each shard's marker and in the manifest."""

    device: str  # "cpu" or "cuda"
    hardware: str  # the CPU model (lscpu's "Model name") or the GPU's name
    threads: int
    precision: str
    path: str
    chosen_by: str  # "probe" (the fastest within tolerance), "cache" (an earlier probe here), "only candidate",
    #                 or "pinned by model.kernel"
    probes: list[ProbeResult] = field(default_factory=list)
    tolerance: float = TOLERANCE

    @property
    def kernel(self) -> Kernel:
        return Kernel(self.precision, self.path)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> KernelPlan:
        return cls(**{**d, "probes": [ProbeResult(**p) for p in d.get("probes", [])]})

    @property
    def label(self) -> str:
        """What computed the vectors, where: 'bf16-onednn on AMD EPYC (cpu, 1 thread)'."""
        threads = f"{self.threads} thread{'s' * (self.threads != 1)}"
        return f"{self.kernel.name} on {self.hardware} ({self.device}, {threads})"

    def summary(self) -> str:
        """One line: 'bf16-onednn on AMD EPYC (cpu, 2 threads, probe; 2.41x the slowest candidate)'."""
        speed = {p.kernel: p.tokens_per_s for p in self.probes}
        gain = (f"; {speed[self.kernel.name] / min(speed.values()):.2f}x the slowest candidate"
                if len(speed) > 1 and self.kernel.name in speed else "")
        return f"{self.kernel.name} on {self.hardware} ({self.device}, {self.threads} threads, {self.chosen_by}{gain})"


def _first_cpu() -> dict[str, str]:
    """/proc/cpuinfo's fields for the first processor (every one lists the same model and flags); {} off Linux."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}


def cpu_model() -> str:
    """The model name with family and model: a virtual machine's "AMD EPYC" is a Zen 3 (family 25) or a Zen 5
    (family 26), and which kernels win differs between them."""
    fields = _first_cpu()
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def cpu_flags() -> set[str]:
    return set(_first_cpu().get("flags", "").split())
