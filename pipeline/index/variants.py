"""Index variants: one FAISS index per `kind[@dims]` spec, all built from the same float vectors. Each kind is
one class below that knows how to build its index, what a reader needs (its manifest parameters), and how a
query is represented to search it.

    exact        fp32 flat, inner product            4*d bytes/vector
    fp16         flat, half precision (FAISS SQfp16) 2*d
    ivfpq        IVF + product quantizer codes        pq_m*nbits/8
    int8         flat, 8-bit scalar quantizer         d
    int8-ivf     IVF, 8-bit scalar quantizer          d
    binary       flat Hamming on packed sign bits     d/8
    binary-ivf   IVF Hamming on packed sign bits      d/8
    `@k` on any kind first takes the Matryoshka prefix of k dims (e.g. `exact@64`).

IVF kinds share the planned nlist/nprobe (pipeline/index/plan.py); every trained part uses the same seeded
sample, so a config and seed always give the same index.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from pipeline.config import VARIANT_KINDS, VARIANT_PATTERN, IndexConfig
from pipeline.errors import IndexBuildError, SnapshotError
from pipeline.index.faiss_ops import build_exact, build_ivfpq, check_vectors
from pipeline.index.plan import IvfPlan, IvfPqPlan, plan_ivf, plan_ivfpq
from pipeline.index.ranking import rerank
from pipeline.index.representations import Int8Ranges, asymmetric_binary_scores, matryoshka, pack_signs
from pipeline.storage.layout import variant_file

IvfPqBuilder = Callable[[np.ndarray, IvfPqPlan, int], faiss.Index]
Trained = tuple[faiss.Index, dict]  # a built index of the variant and its manifest parameters


@dataclass(frozen=True)
class Training:
    """IVF-PQ training a build may reuse: a committed version's IVF-PQ variants (name -> index and manifest
    parameters), and why they may be reused, or none and why not. Recorded per variant in the manifest."""

    variants: dict[str, Trained] = field(default_factory=dict)
    why: str = "trained on this build's vectors: a full build"


FULL_BUILD = Training()


@dataclass(frozen=True)
class BuildContext:
    """What every kind's build may use: the index config, the seed, the IVF plan and its training sample (for
    the kinds that train), the IVF-PQ builder (serial or parallel) and any training to reuse."""

    cfg: IndexConfig
    seed: int
    ivfpq_builder: IvfPqBuilder
    training: Training
    ivf: IvfPlan | None = None
    sample: np.ndarray | None = None  # sorted row numbers of the training sample


class Kind:
    """One variant kind. `build` returns the index and its manifest parameters; `query_side` what a search needs
    besides the index (int8 ranges, binary codes), checked against the index; `search` the candidates."""

    name = ""
    binary = False  # a faiss.IndexBinary: faiss.read_index_binary reads its file
    trains = False  # needs the IVF plan and a training sample

    def build(self, x: np.ndarray, spec: VariantSpec, ctx: BuildContext) -> tuple[object, dict]:
        raise NotImplementedError

    def query_side(self, index, params: dict, where: str) -> object:
        return None

    def represent(self, x: np.ndarray, state: object) -> np.ndarray:
        """Full-precision queries (the variant's dims) as the index holds its vectors."""
        return x

    def search(self, index, x: np.ndarray, fetch: int, state: object, hamming_only: bool, keep: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
        return index.search(self.represent(x, state), fetch)


class Exact(Kind):
    name = "exact"

    def build(self, x, spec, ctx):
        return build_exact(x), {"factory": "Flat", "bytes_per_vector": 4 * x.shape[1]}


class Fp16(Kind):
    name = "fp16"

    def build(self, x, spec, ctx):
        index = faiss.index_factory(x.shape[1], "SQfp16", faiss.METRIC_INNER_PRODUCT)  # needs no training
        index.add(x)
        return index, {"factory": "SQfp16", "bytes_per_vector": 2 * x.shape[1]}


class IvfPq(Kind):
    name = "ivfpq"
    trains = True

    def build(self, x, spec, ctx):
        n, d = x.shape
        plan = plan_ivfpq(n, d, ctx.cfg.ivf)
        earlier = ctx.training.variants.get(spec.name)
        if earlier is not None and earlier[1]["factory"] == plan.factory and earlier[1]["dims"] == d:
            # The earlier version's coarse quantizer and PQ codebooks, emptied and refilled: training is most
            # of an incremental run's index time. The plan changing (the corpus grew) retrains.
            index = faiss.clone_index(earlier[0])
            index.reset()
            index.add(x)
            params = {k: v for k, v in earlier[1].items() if k not in ("index_bytes", "quality", "training")}
            return index, params | {"training": f"reused from version {params['trained_in']}: {ctx.training.why}"}
        why = ctx.training.why if earlier is None else \
            f"trained on this build's vectors: the plan changed ({earlier[1]['factory']} -> {plan.factory})"
        return ctx.ivfpq_builder(x, plan, ctx.seed), {**plan.to_dict(), "seed": ctx.seed,
                                                      "bytes_per_vector": plan.code_bytes, "training": why}


class Int8(Kind):
    """8-bit scalar quantizer; its per-dimension ranges go into the manifest, and queries are quantised with
    them (`represent`), so they are represented exactly like the indexed vectors."""

    name = "int8"
    trains = True

    def factory(self, ivf: IvfPlan) -> str:
        return "SQ8"

    def quantizer(self, index) -> faiss.ScalarQuantizer:
        return faiss.downcast_index(index).sq

    def build(self, x, spec, ctx):
        d = x.shape[1]
        index = faiss.index_factory(d, self.factory(ctx.ivf), faiss.METRIC_INNER_PRODUCT)
        params = self.prepare(index, ctx)
        index.train(x[ctx.sample])
        index.add(x)
        return index, {"factory": self.factory(ctx.ivf), "bytes_per_vector": d,
                       "int8_ranges": Int8Ranges.from_index(self.quantizer(index)).to_dict(),
                       "train_points": ctx.ivf.train_points, "seed": ctx.seed, **params}

    def prepare(self, index, ctx: BuildContext) -> dict:
        return {}

    def query_side(self, index, params, where):
        ranges = Int8Ranges.from_dict(params.get("int8_ranges"), where)
        if not np.allclose(Int8Ranges.from_index(self.quantizer(index)).vmin, ranges.vmin):
            raise SnapshotError(f"{where}: the manifest's int8 ranges differ from the index's own")
        return ranges

    def represent(self, x, state):
        return state.round_trip(x)


class Int8Ivf(Int8):
    name = "int8-ivf"

    def factory(self, ivf: IvfPlan) -> str:
        return f"IVF{ivf.nlist},SQ8"

    def quantizer(self, index) -> faiss.ScalarQuantizer:
        return faiss.downcast_index(faiss.extract_index_ivf(index)).sq

    def prepare(self, index, ctx):
        ivf = faiss.extract_index_ivf(index)
        ivf.by_residual = False  # quantise the vectors themselves, so one set of ranges serves queries too
        ivf.cp.seed, ivf.nprobe = ctx.seed, ctx.ivf.nprobe
        return {"nlist": ctx.ivf.nlist, "nprobe": ctx.ivf.nprobe}


class Binary(Kind):
    """Sign bits packed 8 per byte, Hamming distance. Its own scoring re-ranks the Hamming candidates by the float
    query against the sign bits (asymmetric: needs nothing but the codes); `hamming_only` keeps plain Hamming."""

    name = "binary"
    binary = True

    def make(self, d: int, ctx: BuildContext, codes: np.ndarray) -> tuple[faiss.IndexBinary, dict]:
        return faiss.IndexBinaryFlat(d), {"factory": "BFlat"}

    def build(self, x, spec, ctx):
        d, codes = x.shape[1], pack_signs(x)
        index, params = self.make(d, ctx, codes)
        index.add(codes)
        return index, {**params, "bytes_per_vector": d // 8, "threshold": 0.0}

    def query_side(self, index, params, where):
        return index.reconstruct_n(0, index.ntotal)  # the codes, for the asymmetric re-rank

    def search(self, index, x, fetch, state, hamming_only, keep):
        dist, rows = index.search(pack_signs(x), fetch)
        if hamming_only:
            return (1 - 2 * dist / index.d).astype(np.float32), rows
        # bytes per candidate: its codes, their flat lookup offsets (int64) and the looked-up floats
        return rerank(rows, lambda sl, r: asymmetric_binary_scores(x[sl], state[r]), state.shape[1] * 13, keep)


class BinaryIvf(Binary):
    name = "binary-ivf"
    trains = True

    def make(self, d, ctx, codes):
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, ctx.ivf.nlist)
        index.cp.seed = ctx.seed
        index.train(codes[ctx.sample])
        index.nprobe = ctx.ivf.nprobe
        return index, {"factory": f"BIVF{ctx.ivf.nlist}", "nlist": ctx.ivf.nlist, "nprobe": ctx.ivf.nprobe,
                       "train_points": ctx.ivf.train_points, "seed": ctx.seed}

    def query_side(self, index, params, where):
        index.make_direct_map()  # reconstruct_n needs it on an IVF index
        return super().query_side(index, params, where)


KINDS: dict[str, Kind] = {k.name: k for k in (Exact(), Fp16(), IvfPq(), Int8(), Int8Ivf(), Binary(), BinaryIvf())}
if tuple(KINDS) != VARIANT_KINDS:  # config validates names against VARIANT_KINDS: the two must be the same list
    raise ImportError(f"variant kinds {tuple(KINDS)} differ from pipeline.config.VARIANT_KINDS {VARIANT_KINDS}")


@dataclass(frozen=True)
class VariantSpec:
    kind: Kind
    dims: int | None = None

    @classmethod
    def parse(cls, name: str) -> VariantSpec:
        m = re.fullmatch(VARIANT_PATTERN, name)
        if not m:
            raise IndexBuildError(f"index variant {name!r}: expected one of {list(KINDS)}, optionally @<dims>")
        return cls(KINDS[m.group(1)], int(m.group(2)[1:]) if m.group(2) else None)

    @property
    def name(self) -> str:
        return self.kind.name + (f"@{self.dims}" if self.dims else "")

    @property
    def file(self) -> str:
        return variant_file(self.name)

    @property
    def lossless(self) -> bool:
        """Rescoring with the fp16 store cannot improve on it: full-dims fp32."""
        return isinstance(self.kind, Exact) and self.dims is None


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def build_variant(spec: VariantSpec, vectors: np.ndarray, cfg: IndexConfig, seed: int,
                  ivfpq_builder: IvfPqBuilder = build_ivfpq, training: Training = FULL_BUILD) -> tuple[object, dict]:
    """The FAISS index of one variant and the parameters a reader needs (recorded in the manifest).
    `ivfpq_builder` lets an engine build IVF-PQ in parallel (operators/ivfpq.py); `training` holds an
    earlier version's IVF-PQ variants, whose training is reused while the plan is unchanged."""
    check_vectors(vectors)
    x = matryoshka(vectors, spec.dims)
    ivf = plan_ivf(len(x), cfg.ivf) if spec.kind.trains else None
    sample = _sample(len(x), ivf.train_points, seed) if ivf else None
    index, params = spec.kind.build(x, spec, BuildContext(cfg, seed, ivfpq_builder, training, ivf, sample))
    return index, {"kind": spec.kind.name, "dims": x.shape[1], "file": spec.file, **params}


def build_variants(cfg: IndexConfig, vectors: np.ndarray, seed: int, ivfpq_builder: IvfPqBuilder = build_ivfpq,
                   training: Training = FULL_BUILD) -> tuple[dict[str, object], dict]:
    indexes, params = {}, {}
    for name in cfg.vector_variants:
        spec = VariantSpec.parse(name)
        indexes[spec.name], params[spec.name] = build_variant(spec, vectors, cfg, seed, ivfpq_builder, training)
    return indexes, params


@dataclass(frozen=True)
class Variant:
    """A loaded index with what its query side needs (int8 ranges, binary codes)."""

    spec: VariantSpec
    index: object
    state: object = None

    @classmethod
    def load(cls, name: str, index, params: dict) -> Variant:
        spec = VariantSpec.parse(name)
        return cls(spec, index, spec.kind.query_side(index, params, f"variant {name}"))

    @property
    def dims(self) -> int:
        return self.index.d

    def candidates(self, q: np.ndarray, fetch: int, hamming_only: bool = False,
                   keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), best first, for full-dim float queries `q`; binary candidates re-ranked by the float
        query are cut to the best `keep` (default all)."""
        return self.spec.kind.search(self.index, matryoshka(q, self.spec.dims), fetch, self.state, hamming_only, keep)
