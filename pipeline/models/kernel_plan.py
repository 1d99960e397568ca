"""What a kernel plan is (pipeline/models/kernels.py makes one): the precision and kernels that ran a model, on which
hardware, and the probe that chose them. Torch-free, so the static family and the reports can use it."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOLERANCE = 0.9999  # min cosine to the fp32 vector of every probe text
KERNEL_FLAGS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})  # CPU flags that change which kernel wins


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
    #                 or "pinned by model.kernel" (with the name given, where this device runs it as another)
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


def cpu_class() -> str:
    """This CPU as far as the kernel plan can tell CPUs apart: its model and the flags that change which kernel wins."""
    return f"{cpu_model()} [{' '.join(sorted(cpu_flags() & KERNEL_FLAGS)) or 'no avx512'}]"


def cpu_offer(allow_onednn: bool = True) -> list[str]:
    """Every CPU kernel, fp32 through torch's first (the reference, and the fallback): what each kind of CPU in a
    cluster measures, so that one kernel can be compared across them."""
    names = ["fp32-torch", "fp32-onednn", "bf16-onednn", "bf16-autocast"]
    return [n for n in names if allow_onednn or not n.endswith("-onednn")]


@dataclass(frozen=True)
class MachinePlan:
    """One kind of CPU in a cluster: how many of a run's actors its nodes hold, and its probe of the offered kernels."""

    cpu: str  # cpu_class()
    actors: int
    plan: KernelPlan
    runs_as: dict[str, str]  # offered kernel -> the kernel that CPU runs for it (a bf16-onednn without bf16 units
    #                          runs under autocast: pipeline/models/kernels.py `pinned`)

    def rate(self, kernel: str, tolerance: float = TOLERANCE) -> float | None:
        """Tokens per second of one actor with `kernel`; None where it was not measured or strays from fp32."""
        probe = next((p for p in self.plan.probes if p.kernel == self.runs_as.get(kernel)), None)
        return probe.tokens_per_s if probe and probe.min_cosine >= tolerance else None


def choose_across(machines: list[MachinePlan], offered: list[str], tolerance: float = TOLERANCE) -> tuple[str, str]:
    """The one kernel for a run on unlike CPUs, and why. A shard goes to whichever actor is free, so the cluster
    embeds at the sum of its actors' rates: the kernel with the largest sum, among those within tolerance on every
    CPU (each CPU measured all of them: bf16 emulated on a CPU without bf16 units is slow, and counts as such).
    The first offered kernel (fp32 through torch) when none is."""
    totals = {name: sum(m.actors * m.rate(name, tolerance) for m in machines) for name in offered
              if all(m.rate(name, tolerance) is not None for m in machines)}
    best = max(totals, key=totals.__getitem__) if totals else offered[0]
    each = "; ".join(f"{m.cpu}: {m.actors} actor{'s' * (m.actors != 1)} at "
                     + (f"{rate:,.0f} tokens/s" if (rate := m.rate(best, tolerance)) else "an unmeasured rate")
                     for m in machines)
    return best, f"{best}, the fastest in sum over the cluster's kinds of CPU ({each})"
