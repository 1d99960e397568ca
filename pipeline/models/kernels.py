"""The kernel plan: which precision and which kernels run a transformer on this device, chosen by measurement.

CPUs differ more than their names suggest. On AMD EPYC (Zen 5) oneDNN's fp32 kernels ran MiniLM 1.8x faster than
torch's default (MKL picks its kernels by vendor); on an Intel Xeon with AMX that gain was gone, while bf16 ran a
linear layer 7.9x faster than fp32. So nothing is assumed: at encoder start the candidates this device supports
run a short probe (random token ids in the encoder's batch shapes, the model's own pooling; after a warm-up pass
the candidates take turns for up to 3 rounds; on a CPU of several threads each round runs one pass per thread side
by side, as the encoder runs its batches), and the fastest whose vectors stay within `TOLERANCE` (min cosine) of
fp32 on the probe wins. `model.precision` forces a precision
(fp32 for bit-stable vectors); the paths within it are still measured. The plan is cached per machine (CPU model
and flags, torch version, device, threads, model weights) under ~/.cache/embedpipe/kernels (or
$EMBEDPIPE_KERNEL_CACHE), behind a file lock, so the actors of one node probe once between them.

Candidates: fp32 through torch's kernels, fp32 with linear layers through oneDNN (pipeline/models/onednn.py), and
where the CPU has bf16 units (avx512_bf16, AMX) bf16 linears through oneDNN and bf16 under torch.autocast; on CUDA,
fp32, fp16 and bf16 (fp32 wins only where neither half precision stays within tolerance).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

from pipeline.config import ModelConfig
from pipeline.models import onednn
from pipeline.models.kernel_plan import KERNEL_FLAGS, TOLERANCE, Kernel, KernelPlan, ProbeResult, cpu_flags, cpu_model

PROBE_ROUNDS = 3  # timed passes per candidate at most, taken in turns
PROBE_BUDGET_S = 20.0  # what the timed rounds may take, estimated from the warm-up passes
CANDIDATES_VERSION = 3  # in the cache key: raised when a candidate's code changes, so no plan measured older code

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> last hidden state
T, R = TypeVar("T"), TypeVar("R")


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (avx512_bf16 or AMX), where oneDNN runs bf16 faster than fp32; elsewhere bf16 is
    emulated and slower, so it is not offered unless forced."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}) and bf16_onednn()


def bf16_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pinned(name: str, device: str) -> Kernel:
    """A kernel named in the config, as it runs on `device` (a GPU runs any precision natively; a CPU runs a GPU
    kernel's precision through autocast, or fp32 through oneDNN where it can)."""
    precision, path = name.split("-", 1)
    if device.startswith("cuda"):
        return Kernel(precision, "cuda")
    if path == "cuda":
        path = "autocast" if precision != "fp32" else "onednn"
    if path == "onednn" and not (onednn.available() and (precision == "fp32" or bf16_onednn())):
        path = "torch" if precision == "fp32" else "autocast"
    return Kernel(precision, path)


def candidates(device: str, precision: str, allow_onednn: bool = True) -> list[Kernel]:
    """The kernels worth probing on `device` for a configured `precision` ("auto" or one precision)."""
    if device.startswith("cuda"):  # fp32 first: what `choose` falls back to when no half precision is close enough
        found = [Kernel("fp32", "cuda"), Kernel("fp16", "cuda")]
        if torch.cuda.is_bf16_supported():
            found.append(Kernel("bf16", "cuda"))
        return found if precision == "auto" else [k for k in found if k.precision == precision] or [
            Kernel(precision, "cuda")]
    found = [Kernel("fp32", "torch")]
    if allow_onednn and onednn.available():
        found.append(Kernel("fp32", "onednn"))
    if cpu_has_bf16() or precision == "bf16":
        if allow_onednn and onednn.available() and bf16_onednn():
            found.append(Kernel("bf16", "onednn"))
        found.append(Kernel("bf16", "autocast"))
    if precision == "fp16":
        found.append(Kernel("fp16", "autocast"))
    return found if precision == "auto" else [k for k in found if k.precision == precision]


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}  # precision name -> torch dtype


class _Autocast(torch.nn.Module):
    """The model under torch.autocast: matrix products in bf16/fp16, reductions (layer norm, softmax) in fp32."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(input_ids, attention_mask).float()


def apply(model: torch.nn.Module, kernel: Kernel) -> torch.nn.Module:
    """`model` (float32, on its device) made to run with `kernel`; changes it in place where it can."""
    if kernel.path == "cuda":
        return model.to(DTYPES[kernel.precision])
    if kernel.path == "onednn":
        dtype = torch.bfloat16 if kernel.precision == "bf16" else torch.float32
        if hasattr(model, "use_onednn"):  # a model that knows its layers (BERT) fuses more than its linears
            model.use_onednn(dtype)
        else:
            onednn.use_onednn_linears(model, dtype)
        return model
    if kernel.path == "autocast":
        return _Autocast(model, torch.bfloat16 if kernel.precision == "bf16" else torch.float16)
    return model


def probe_shapes(max_tokens: int, batch_tokens: int) -> list[tuple[int, int]]:
    """(texts, tokens) of the probe's batches, shaped like the encoder's own: one of full-length texts (chunks are
    mostly full windows, and attention weighs most there) and one of quarter-length texts, padded."""
    short = max(1, max_tokens // 4)  # the encoder's whole budget each: kernels' speed depends on the batch's size
    return [(max(1, batch_tokens // max_tokens), max_tokens), (max(1, batch_tokens // short), short)]


def probe_batches(vocab_size: int, device: str, shapes: list[tuple[int, int]]
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed random token ids (seeded, above the special tokens) and masks; batches after the first are padded."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, (texts, tokens) in enumerate(shapes):
        ids = torch.randint(min(1000, vocab_size - 1), vocab_size, (texts, tokens), generator=gen)
        mask = torch.ones_like(ids)
        if i:
            lengths = torch.randint(max(1, tokens // 4), tokens + 1, (texts,), generator=gen)
            mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
            ids = ids * mask
        out.append((ids.to(device), mask.to(device)))
    return out


def _one_torch_thread() -> None:
    """A side-by-side worker's torch ops run on that worker alone. torch sets a thread's count when it first uses
    torch, from whatever was set last anywhere: so first use, then set."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def map_side_by_side(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """`fn` over `items`, in order: with several workers and items, side by side on threads of one torch thread
    each (CPU batches, pipeline/models/transformer.py), else one after another on the calling thread. No thread
    outlives the call (or a fork). torch.set_num_threads also sets the count a thread takes when it first uses
    torch, so the caller's is set back after (a thread started elsewhere meanwhile may take 1: slower, never wrong)."""
    if workers <= 1 or len(items) <= 1:
        return list(map(fn, items))
    caller = torch.get_num_threads()
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="encode",
                            initializer=_one_torch_thread) as pool:
        out = list(pool.map(fn, items))
    torch.set_num_threads(caller)
    return out


def _pass_seconds(model: Model, batches) -> float:
    """One pass over the batches, timed as the encoder runs them: on a CPU of several threads, one pass per thread
    side by side (the seconds per pass); on a GPU, until the device is done."""
    @torch.inference_mode()  # per thread
    def one_pass() -> None:
        for ids, mask in batches:
            model(ids, mask)

    cuda = batches[0][0].is_cuda
    threads = 1 if cuda else torch.get_num_threads()
    start = time.perf_counter()
    map_side_by_side(lambda _: one_pass(), range(threads), threads)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / threads


def probe(model: torch.nn.Module, kernels: list[Kernel], batches, pool: Callable) -> list[ProbeResult]:
    """Each kernel on a copy of `model` (float32), against the float32 model's vectors. The candidates take turns
    for up to PROBE_ROUNDS rounds and each keeps its fastest pass, so a neighbour's burst of load on a shared machine
    (single passes here varied by 30%) slows one pass, not one candidate. Rounds fit PROBE_BUDGET_S, judged by the
    warm-up passes: a 110M-parameter model's pass takes ~8 s on 2 cores, where one round is enough to tell kernels
    apart and three took 2.4 minutes."""
    tokens = sum(int(mask.sum()) for _, mask in batches)

    def vectors(m: Model) -> torch.Tensor:
        return torch.cat([pool(m(ids, mask).float(), mask) for ids, mask in batches])

    with torch.inference_mode():
        start = time.perf_counter()
        reference = vectors(model)  # fp32 through torch's kernels: that candidate's warm-up, when it is one
        applied, cosines = [], []
        for kernel in kernels:
            if kernel == Kernel("fp32", "torch"):
                applied.append(model)
                cosines.append(1.0)
                continue
            candidate = apply(copy.deepcopy(model), kernel)
            cosines.append(torch.nn.functional.cosine_similarity(vectors(candidate), reference, dim=1).min().item())
            applied.append(candidate)
        warm_up = time.perf_counter() - start
        best = [float("inf")] * len(applied)
        for _ in range(max(1, min(PROBE_ROUNDS, int(PROBE_BUDGET_S / warm_up)))):
            best = [min(b, _pass_seconds(m, batches)) for b, m in zip(best, applied, strict=True)]
    return [ProbeResult(k.name, round(tokens / b, 1), round(c, 7))
            for k, b, c in zip(kernels, best, cosines, strict=True)]


def choose(results: list[ProbeResult], kernels: list[Kernel], tolerance: float = TOLERANCE) -> Kernel:
    """The fastest kernel within tolerance; the first candidate (fp32, or the forced precision's first path) when
    none is."""
    by_name = {k.name: k for k in kernels}
    fine = [r for r in results if r.min_cosine >= tolerance]
    return by_name[max(fine, key=lambda r: r.tokens_per_s).kernel] if fine else kernels[0]


def cache_dir() -> Path:
    return Path(os.environ.get("EMBEDPIPE_KERNEL_CACHE") or Path.home() / ".cache" / "embedpipe" / "kernels")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one prober per machine and key; the others wait and read its plan
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def plan_kernels(model: torch.nn.Module, device: str, cfg: ModelConfig, weights: str, vocab_size: int,
                 pool: Callable, shapes: list[tuple[int, int]], offer: list[str] | None = None) -> KernelPlan:
    """The kernel plan for `model` (float32, loaded on `device`): pinned by the config, from this machine's cache,
    or probed now; among this device's candidates, or among the kernels named in `offer` as this device runs them
    (to compare one kernel across unlike machines)."""
    if cfg.kernel:
        kernels = [pinned(cfg.kernel, device)]
    elif offer:
        kernels = list(dict.fromkeys(pinned(name, device) for name in offer))
    else:
        kernels = candidates(device, cfg.precision, cfg.cpu_onednn)
    threads = torch.get_num_threads()
    hardware = torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_model()
    if len(kernels) == 1:
        why = "only candidate"
        if cfg.kernel:  # a kernel this device runs another way (fp16-cuda on a CPU) says so
            why = "pinned by model.kernel"
            if kernels[0].name != cfg.kernel:
                why += f" {cfg.kernel}, as it runs here"
        return KernelPlan(device.split(":")[0], hardware, threads, kernels[0].precision, kernels[0].path, why)
    key = {"hardware": hardware, "flags": sorted(cpu_flags() & KERNEL_FLAGS),
           "torch": torch.__version__, "device": device, "threads": threads, "weights": weights,
           "kernels": [k.name for k in kernels], "tolerance": TOLERANCE, "shapes": shapes,
           "candidates_version": CANDIDATES_VERSION}
    path = cache_dir() / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]}.json"
    with _locked(path):
        if path.is_file():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                return KernelPlan.from_dict(json.loads(path.read_text()) | {"chosen_by": "cache"})
        # said, since it can take minutes (a large model on a few CPUs) before anything else shows
        logging.getLogger(__name__).warning("measuring %d kernels of this model on %s (%s); once on this machine, "
                                            "then read from %s", len(kernels), hardware, device, path.parent)
        results = probe(model, kernels, probe_batches(vocab_size, device, shapes), pool)
        best = choose(results, kernels)
        plan = KernelPlan(device.split(":")[0], hardware, threads, best.precision, best.path, "probe", results)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(plan.to_dict(), indent=2))
        tmp.replace(path)
    return plan
