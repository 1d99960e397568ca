"""Index variants: one FAISS index per `kind[@dims]` spec, all built from the same float vectors. Each kind is
one class below that knows how to train its index (once, on a bounded sample), fill it with vectors (shard by
shard, at any row offset), what a reader needs (its manifest parameters), and how a query is represented to
search it.

    exact        fp32 flat, inner product            4*d bytes/vector
    fp16         flat, half precision (FAISS SQfp16) 2*d
    ivfpq        IVF + product quantizer codes        pq_m*nbits/8
    int8         flat, 8-bit scalar quantizer         d
    int8-ivf     IVF, 8-bit scalar quantizer          d
    binary       flat Hamming on packed sign bits     d/8
    binary-ivf   IVF Hamming on packed sign bits      d/8
    `@k` on any kind first takes the Matryoshka prefix of k dims (e.g. `exact@64`).

Flat kinds keep their rows in order, so shard files concatenate into one file; IVF kinds carry global row ids,
so shard files merge list by list (pipeline/index/assemble.py). IVF kinds share the planned nlist/nprobe
(pipeline/index/plan.py) and one seeded training sample, so a config and seed always give the same index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import faiss
import numpy as np

from pipeline.config import VARIANT_KINDS, VARIANT_PATTERN, IndexConfig
from pipeline.errors import IndexBuildError, SnapshotError
from pipeline.index.faiss_ops import check_vectors, from_bytes, reconstruction_error, to_bytes, train_ivfpq
from pipeline.index.plan import IvfPlan, plan_ivf, plan_ivfpq
from pipeline.index.ranking import rerank
from pipeline.index.representations import Int8Ranges, asymmetric_binary_scores, matryoshka, pack_signs
from pipeline.index.training import FULL_BUILD, Training, kept_training
from pipeline.storage.layout import trained_file, variant_file


@dataclass(frozen=True)
class TrainContext:
    """What training may use: the index config, the seed, the IVF plan (for the kinds that train) and any
    training to reuse."""

    cfg: IndexConfig
    seed: int
    training: Training
    name: str  # the variant's name (training is reused by name)
    n: int  # rows the index will hold
    ivf: IvfPlan | None = None
    fit_only: bool = False  # the sample is only fit_rows(training rows): enough to check a kept training's fit



class Kind:
    """One variant kind. `train` returns its trained, empty index and its manifest parameters; `fill` adds rows to
    such an index; `query_side` what a search needs besides the index (int8 ranges, binary codes), checked
    against the index; `search` the candidates."""

    name = ""
    binary = False  # a faiss.IndexBinary: faiss.read_index_binary reads its file
    trains = False  # needs the IVF plan and a training sample
    ivf = False  # inverted lists: shard files merge by list, rows carry their ids
    keeps_training = False  # an incremental build may keep live's training while it fits (training.kept_training)

    def train(self, sample: np.ndarray, dims: int, ctx: TrainContext) -> tuple[object, dict]:
        raise NotImplementedError

    def fill(self, index, x: np.ndarray, rows: int | np.ndarray) -> None:
        """Add x (float vectors of the variant's dims) as rows `rows`: their ids, or the first of consecutive ones
        (flat kinds keep rows in the order they are added, and need no ids)."""
        codes = pack_signs(x) if self.binary else x
        if self.ivf:
            ids = np.arange(rows, rows + len(x), dtype=np.int64) if np.ndim(rows) == 0 else \
                np.ascontiguousarray(rows, dtype=np.int64)
            index.add_with_ids(codes, ids)
        else:
            index.add(codes)

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

    def train(self, sample, dims, ctx):
        return faiss.index_factory(dims, "Flat", faiss.METRIC_INNER_PRODUCT), {"factory": "Flat",
                                                                               "bytes_per_vector": 4 * dims}


class Fp16(Kind):
    name = "fp16"

    def train(self, sample, dims, ctx):  # needs no training
        return faiss.index_factory(dims, "SQfp16", faiss.METRIC_INNER_PRODUCT), {"factory": "SQfp16",
                                                                                 "bytes_per_vector": 2 * dims}


class IvfPq(Kind):
    name = "ivfpq"
    trains = ivf = keeps_training = True

    def train(self, sample, dims, ctx):
        # The earlier version's coarse quantizer and PQ codebooks: training is most of an incremental run's index
        # time. The plan changing (the corpus grew), or the vectors moving away from what it was trained on (new
        # topics: its lists fill unevenly and its codes lose the nearest neighbours), retrains.
        plan = plan_ivfpq(ctx.n, dims, ctx.cfg.ivf)
        kept = kept_training(ctx, sample, dims, plan.factory, plan.nprobe)
        if not isinstance(kept, str):
            return kept
        index = train_ivfpq(sample, plan, ctx.seed)
        return index, {**plan.to_dict(), "seed": ctx.seed, "bytes_per_vector": plan.code_bytes, "training": kept,
                       "reconstruction_error": reconstruction_error(index, sample)}


class Int8(Kind):
    """8-bit scalar quantizer; its per-dimension ranges go into the manifest, and queries are quantised with
    them (`represent`), so they are represented exactly like the indexed vectors."""

    name = "int8"
    trains = keeps_training = True

    def factory(self, ivf: IvfPlan) -> str:
        return "SQ8"

    def quantizer(self, index) -> faiss.ScalarQuantizer:
        return faiss.downcast_index(index).sq

    def train(self, sample, dims, ctx):
        # ranges kept from an earlier version while they fit: a kept training lets an incremental build copy the
        # kept chunks' codes instead of encoding every vector again (pipeline/jobs/kept_codes.py)
        factory = self.factory(ctx.ivf)
        kept = kept_training(ctx, sample, dims, factory, ctx.ivf.nprobe if self.ivf else None)
        if not isinstance(kept, str):
            return kept
        index = faiss.index_factory(dims, factory, faiss.METRIC_INNER_PRODUCT)
        params = self.prepare(index, ctx)
        index.train(sample)
        return index, {"factory": factory, "bytes_per_vector": dims,
                       "int8_ranges": Int8Ranges.from_index(self.quantizer(index)).to_dict(),
                       "train_points": ctx.ivf.train_points, "seed": ctx.seed, **params, "training": kept,
                       "reconstruction_error": reconstruction_error(index, sample)}

    @staticmethod
    def trained_of(params: dict) -> bytes:
        """A flat int8 variant's trained, empty index from its manifest parameters: its ranges are all its
        training, so a later build keeps them without reading the index."""
        index = faiss.index_factory(params["dims"], "SQ8", faiss.METRIC_INNER_PRODUCT)
        ranges = Int8Ranges.from_dict(params.get("int8_ranges"), f"variant {params['kind']}")
        faiss.copy_array_to_vector(np.concatenate([ranges.vmin, ranges.vdiff]), faiss.downcast_index(index).sq.trained)
        index.is_trained = True
        return to_bytes(index)

    def prepare(self, index, ctx: TrainContext) -> dict:
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
    ivf = True

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

    def train(self, sample, dims, ctx):
        return faiss.IndexBinaryFlat(dims), {"factory": "BFlat", "bytes_per_vector": dims // 8, "threshold": 0.0}

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
    trains = ivf = True

    def train(self, sample, dims, ctx):
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dims), dims, ctx.ivf.nlist)
        index.cp.seed = ctx.seed
        index.train(pack_signs(sample))
        index.nprobe = ctx.ivf.nprobe
        return index, {"factory": f"BIVF{ctx.ivf.nlist}", "nlist": ctx.ivf.nlist, "nprobe": ctx.ivf.nprobe,
                       "train_points": ctx.ivf.train_points, "seed": ctx.seed, "bytes_per_vector": dims // 8,
                       "threshold": 0.0}

    def query_side(self, index, params, where):
        if not index.direct_map.type:  # reconstruct_n needs one on an IVF index
            index.make_direct_map()
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


def training_rows(n: int, cfg: IndexConfig, seed: int) -> np.ndarray:
    """The rows every variant that trains is trained on: a seeded sample of the planned size, in row order."""
    size = plan_ivf(n, cfg.ivf).train_points
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def may_keep_training(cfg: IndexConfig, training: Training) -> bool:
    """Whether every variant that trains may keep an earlier training (of a kind that keeps it, with one to keep):
    then its fit is checked on fit_rows of the sample first, and the whole sample read only to train anew."""
    specs = [VariantSpec.parse(name) for name in cfg.vector_variants]
    return all(s.kind.keeps_training and s.name in training.variants for s in specs if s.kind.trains)


@dataclass(frozen=True)
class TrainedVariant:
    """A variant ready to be filled, shard by shard: its trained, empty index and its manifest parameters."""

    spec: VariantSpec
    empty: bytes
    params: dict

    def fill(self, vectors: np.ndarray, rows: int | np.ndarray = 0) -> object:
        """The trained index holding `vectors` (full dims) as rows `rows` (ids, or the first of consecutive ones;
        an empty copy, filled)."""
        index = from_bytes(self.empty, binary=self.spec.kind.binary)
        self.spec.kind.fill(index, matryoshka(vectors, self.spec.dims), rows)
        return index


def check_prefixes(cfg: IndexConfig, dims: int, model: str) -> None:
    """Every Matryoshka prefix fits the model's vectors: a build checks this once the model is known, before any
    document is read."""
    for name in cfg.vector_variants:
        spec = VariantSpec.parse(name)
        if spec.dims and spec.dims > dims:
            raise IndexBuildError(f"index.variants: {name!r} asks for a {spec.dims}-dim prefix of {model}'s "
                                  f"{dims}-dim vectors")


def train_variants(cfg: IndexConfig, n: int, dims: int, sample: np.ndarray, seed: int,
                   training: Training = FULL_BUILD, fit_only: bool = False) -> list[TrainedVariant]:
    """Every configured vector variant trained once: `sample` holds the vectors of training_rows(n) (full dims), or
    with `fit_only` of their fit_rows (NeedsWholeSample where a variant must train anew)."""
    check_prefixes(cfg, dims, "the model")
    out = []
    for name in cfg.vector_variants:
        spec = VariantSpec.parse(name)
        kind = spec.kind
        x = matryoshka(sample, spec.dims) if len(sample) else np.empty((0, spec.dims or dims), np.float32)
        d = spec.dims or dims
        ctx = TrainContext(cfg, seed, training, spec.name, n, plan_ivf(n, cfg.ivf) if kind.trains else None,
                           fit_only)
        index, params = kind.train(x, d, ctx)
        params = {"kind": kind.name, "dims": d, "file": spec.file, **params}
        if kind.ivf:
            params["trained_file"] = trained_file(spec.name)
        out.append(TrainedVariant(spec, to_bytes(index), params))
    return out


def build_variant(spec: VariantSpec, vectors: np.ndarray, cfg: IndexConfig, seed: int,
                  training: Training = FULL_BUILD) -> tuple[object, dict]:
    """The FAISS index of one variant over every row of `vectors`, in memory, and its manifest parameters: the
    one-shard build (the sharded build trains and fills the same way, pipeline/jobs/indexing.py)."""
    check_vectors(vectors)
    rows = training_rows(len(vectors), cfg, seed) if spec.kind.trains else np.empty(0, dtype=np.int64)
    one = IndexConfig.model_validate({**cfg.model_dump(), "variants": [spec.name]})
    [trained] = train_variants(one, len(vectors), vectors.shape[1], vectors[rows], seed, training)
    return trained.fill(vectors), trained.params


def build_variants(cfg: IndexConfig, vectors: np.ndarray, seed: int,
                   training: Training = FULL_BUILD) -> tuple[dict[str, object], dict]:
    check_vectors(vectors)
    trains = any(VariantSpec.parse(v).kind.trains for v in cfg.vector_variants)
    rows = training_rows(len(vectors), cfg, seed) if trains else np.empty(0, dtype=np.int64)
    trained = train_variants(cfg, len(vectors), vectors.shape[1], vectors[rows], seed, training)
    return {t.spec.name: t.fill(vectors) for t in trained}, {t.spec.name: t.params for t in trained}


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
