"""Index variants: one FAISS index per `kind[@dims]` spec, all built from the same float vectors.

    exact        fp32 flat, inner product            4*d bytes/vector
    fp16         flat, half precision (FAISS SQfp16) 2*d
    ivfpq        IVF + product quantizer codes        pq_m*nbits/8
    int8         flat, 8-bit scalar quantizer         d
    int8-ivf     IVF, 8-bit scalar quantizer          d
    binary       flat Hamming on packed sign bits     d/8
    binary-ivf   IVF Hamming on packed sign bits      d/8
    `@k` on any kind first takes the Matryoshka prefix of k dims (e.g. `exact@64`).

IVF kinds share the planned nlist/nprobe (pipeline/index_plan.py); every trained part uses the same
seeded sample, so a config and seed always give the same index.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from pipeline.config import VARIANT_PATTERN, IndexConfig
from pipeline.errors import IndexBuildError
from pipeline.index_build import build_exact, build_ivfpq, check_vectors
from pipeline.index_plan import IvfPqPlan, plan_ivf, plan_ivfpq
from pipeline.representations import Int8Ranges, matryoshka, pack_signs

KINDS = ("exact", "fp16", "ivfpq", "int8", "int8-ivf", "binary", "binary-ivf")


@dataclass(frozen=True)
class VariantSpec:
    kind: str
    dims: int | None = None

    @classmethod
    def parse(cls, name: str) -> VariantSpec:
        m = re.fullmatch(VARIANT_PATTERN, name)
        if not m:
            raise IndexBuildError(f"index variant {name!r}: expected one of {list(KINDS)}, optionally @<dims>")
        return cls(m.group(1), int(m.group(2)[1:]) if m.group(2) else None)

    @property
    def name(self) -> str:
        return self.kind + (f"@{self.dims}" if self.dims else "")

    @property
    def binary(self) -> bool:
        return self.kind.startswith("binary")

    @property
    def file(self) -> str:
        return f"index/{self.name}.faiss"


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


IvfPqBuilder = Callable[[np.ndarray, IvfPqPlan, int], faiss.Index]
Trained = tuple[faiss.Index, dict]  # a built index of the variant and its manifest parameters


@dataclass(frozen=True)
class Training:
    """IVF-PQ training a build may reuse: a committed version's IVF-PQ variants (name -> index and manifest
    parameters), and why they may be reused, or none and why not. Recorded per variant in the manifest."""

    variants: dict[str, Trained] = field(default_factory=dict)
    why: str = "trained on this build's vectors: a full build"


FULL_BUILD = Training()


def build_variant(spec: VariantSpec, vectors: np.ndarray, cfg: IndexConfig, seed: int,
                  ivfpq_builder: IvfPqBuilder = build_ivfpq, training: Training = FULL_BUILD) -> tuple[object, dict]:
    """The FAISS index of one variant and the parameters a reader needs (recorded in the manifest).
    `ivfpq_builder` lets an engine build IVF-PQ in parallel (operators/index_build.py); `training` holds an
    earlier version's IVF-PQ variants, whose training is reused while the plan is unchanged."""
    check_vectors(vectors)
    x = matryoshka(vectors, spec.dims)
    n, d = x.shape
    params: dict = {"kind": spec.kind, "dims": d, "file": spec.file}
    plan = plan_ivf(n, cfg.ivf) if spec.kind not in ("exact", "fp16", "binary") else None
    sample = _sample(n, plan.train_points, seed) if plan else None
    if spec.kind == "exact":
        index = build_exact(x)
        params.update(factory="Flat", bytes_per_vector=4 * d)
    elif spec.kind == "fp16":
        index = faiss.index_factory(d, "SQfp16", faiss.METRIC_INNER_PRODUCT)  # needs no training
        index.add(x)
        params.update(factory="SQfp16", bytes_per_vector=2 * d)
    elif spec.kind == "ivfpq":
        plan = plan_ivfpq(n, d, cfg.ivf)
        earlier = training.variants.get(spec.name)
        if earlier is not None and earlier[1]["factory"] == plan.factory and earlier[1]["dims"] == d:
            # The earlier version's coarse quantizer and PQ codebooks, emptied and refilled: training is most
            # of an incremental run's index time. The plan changing (the corpus grew) retrains.
            index = faiss.clone_index(earlier[0])
            index.reset()
            index.add(x)
            params.update({k: v for k, v in earlier[1].items() if k not in ("index_bytes", "quality", "training")})
            params["training"] = f"reused from version {params['trained_in']}: {training.why}"
        else:
            index = ivfpq_builder(x, plan, seed)
            why = training.why if earlier is None else \
                f"trained on this build's vectors: the plan changed ({earlier[1]['factory']} -> {plan.factory})"
            params.update(plan.to_dict(), seed=seed, bytes_per_vector=plan.code_bytes, training=why)
    elif spec.kind.startswith("int8"):
        factory = "SQ8" if spec.kind == "int8" else f"IVF{plan.nlist},SQ8"
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        if spec.kind == "int8-ivf":
            ivf = faiss.extract_index_ivf(index)
            ivf.by_residual = False  # quantise the vectors themselves, so one set of ranges serves queries too
            ivf.cp.seed, ivf.nprobe = seed, plan.nprobe
        index.train(x[sample])
        index.add(x)
        sq = faiss.downcast_index(faiss.extract_index_ivf(index) if spec.kind == "int8-ivf" else index).sq
        params.update(factory=factory, bytes_per_vector=d, int8_ranges=Int8Ranges.from_index(sq).to_dict(),
                      train_points=plan.train_points, seed=seed)
        if spec.kind == "int8-ivf":
            params.update(nlist=plan.nlist, nprobe=plan.nprobe)
    else:  # binary kinds: Hamming over packed sign bits
        codes = pack_signs(x)
        if spec.kind == "binary":
            index = faiss.IndexBinaryFlat(d)
        else:
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, plan.nlist)
            index.cp.seed = seed
            index.train(codes[sample])
            index.nprobe = plan.nprobe
            params.update(nlist=plan.nlist, nprobe=plan.nprobe, train_points=plan.train_points, seed=seed)
        index.add(codes)
        params.update(factory="BFlat" if spec.kind == "binary" else f"BIVF{plan.nlist}", bytes_per_vector=d // 8,
                      threshold=0.0)
    return index, params


def build_variants(cfg: IndexConfig, vectors: np.ndarray, seed: int, ivfpq_builder: IvfPqBuilder = build_ivfpq,
                   training: Training = FULL_BUILD) -> tuple[dict[str, object], dict]:
    indexes, params = {}, {}
    for name in cfg.variants:
        spec = VariantSpec.parse(name)
        indexes[spec.name], params[spec.name] = build_variant(spec, vectors, cfg, seed, ivfpq_builder, training)
    return indexes, params
