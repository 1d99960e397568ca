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

from pipeline.config import VARIANT_KINDS, VARIANT_PATTERN
from pipeline.errors import IndexBuildError, SnapshotError
from pipeline.index.faiss_ops import centroid_error, reconstruction_error, to_bytes, train_ivfpq
from pipeline.index.plan import IvfPlan, plan_ivfpq, training_points
from pipeline.index.ranking import rerank
from pipeline.index.representations import Int8Ranges, asymmetric_binary_scores, matryoshka, pack_signs
from pipeline.index.training import TrainContext, kept_training
from pipeline.storage.layout import variant_file


class Kind:
    """One variant kind. `train` returns its trained, empty index and its manifest parameters; `fill` adds rows to
    such an index; `query_side` what a search needs besides the index (int8 ranges, binary codes), checked
    against the index; `search` the candidates."""

    name = ""
    binary = False  # a faiss.IndexBinary: faiss.read_index_binary reads its file
    trains = False  # needs the IVF plan and a training sample
    ivf = False  # inverted lists: shard files merge by list, rows carry their ids
    keeps_training = False  # an incremental build may keep live's training while it fits (training.kept_training)
    reuse_limit = "max_reuse_error_ratio"  # the IvfConfig field bounding fit_error's growth for a kept training
    fit_measure = "reconstruction error"  # what fit_error measures, as messages name it

    def train(self, sample: np.ndarray, dims: int, ctx: TrainContext) -> tuple[object, dict]:
        raise NotImplementedError

    def fit_error(self, index, x: np.ndarray) -> float:
        """How well a trained index fits float vectors x (its manifest's `reconstruction_error`)."""
        return reconstruction_error(index, x)

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
        kept = kept_training(ctx, self, sample, dims, plan.factory, plan.nprobe)
        if not isinstance(kept, str):
            return kept
        index = train_ivfpq(sample, plan, ctx.seed)
        return index, {**plan.to_dict(), "seed": ctx.seed, "bytes_per_vector": plan.code_bytes, "training": kept,
                       "reconstruction_error": self.fit_error(index, sample)}


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
        kept = kept_training(ctx, self, sample, dims, factory, ctx.ivf.nprobe if self.ivf else None)
        if not isinstance(kept, str):
            return kept
        index = faiss.index_factory(dims, factory, faiss.METRIC_INNER_PRODUCT)
        params = self.prepare(index, ctx)
        index.train(sample)
        return index, {"factory": factory, "bytes_per_vector": dims,
                       "int8_ranges": Int8Ranges.from_index(self.quantizer(index)).to_dict(),
                       "train_points": training_points(ctx.n, ctx.cfg.ivf), "seed": ctx.seed, **params,
                       "training": kept,
                       "reconstruction_error": self.fit_error(index, sample)}

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
        own = Int8Ranges.from_index(self.quantizer(index))
        if not (np.allclose(own.vmin, ranges.vmin) and np.allclose(own.vdiff, ranges.vdiff)):
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
    """Binary codes in inverted lists. The codes are the vectors' signs whatever the training, which only places
    them in lists: its fit is the codes' Hamming distance to their nearest centroid (faiss_ops.centroid_error)."""

    name = "binary-ivf"
    trains = ivf = keeps_training = True
    reuse_limit = "max_reuse_hamming_ratio"
    fit_measure = "Hamming distance to its centroids"

    def fit_error(self, index, x):
        return centroid_error(index, pack_signs(x))

    def train(self, sample, dims, ctx):
        factory = f"BIVF{ctx.ivf.nlist}"
        kept = kept_training(ctx, self, sample, dims, factory, ctx.ivf.nprobe)
        if not isinstance(kept, str):
            return kept
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dims), dims, ctx.ivf.nlist)
        index.cp.seed = ctx.seed
        index.train(pack_signs(sample))
        index.nprobe = ctx.ivf.nprobe
        return index, {"factory": factory, "nlist": ctx.ivf.nlist, "nprobe": ctx.ivf.nprobe,
                       "train_points": ctx.ivf.train_points, "seed": ctx.seed, "bytes_per_vector": dims // 8,
                       "threshold": 0.0, "training": kept, "reconstruction_error": self.fit_error(index, sample)}

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
