"""Every configured vector variant trained once on one seeded sample, then filled: in memory over all rows (the
one-shard build, for small runs, tests and benchmarks) or shard by shard (pipeline/jobs/indexing.py trains with
train_variants and fills TrainedVariant per shard, at any row offset)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import IndexConfig
from pipeline.errors import IndexBuildError
from pipeline.index.faiss_ops import check_finite, check_vectors, from_bytes, to_bytes
from pipeline.index.plan import plan_ivf, training_points
from pipeline.index.representations import matryoshka
from pipeline.index.training import FULL_BUILD, TrainContext, Training
from pipeline.index.variants import VariantSpec
from pipeline.storage.layout import trained_file


def training_rows(n: int, cfg: IndexConfig, seed: int) -> np.ndarray:
    """The rows every variant that trains is trained on: a seeded sample of the planned size, in row order."""
    size = training_points(n, cfg.ivf)
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
        check_finite(vectors, rows)
        index = from_bytes(self.empty, binary=self.spec.kind.binary)
        self.spec.kind.fill(index, matryoshka(vectors, self.spec.dims), rows)
        return index


def check_variant_dims(cfg: IndexConfig, dims: int, model: str) -> None:
    """Every vector variant fits the model's vectors (a Matryoshka prefix no wider; binary codes pack 8 signs a
    byte; PQ's sub-vectors split the dims evenly): a build checks this once the model is known, before any document
    is read, rather than FAISS failing after every document was embedded."""
    for name in cfg.vector_variants:
        spec = VariantSpec.parse(name)
        if spec.dims and spec.dims > dims:
            raise IndexBuildError(f"index.variants: {name!r} asks for a {spec.dims}-dim prefix of {model}'s "
                                  f"{dims}-dim vectors")
        d = spec.dims or dims
        if spec.kind.binary and d % 8:
            raise IndexBuildError(f"index.variants: {name!r} packs {d} dims' signs 8 to a byte: expected dims that "
                                  "are a multiple of 8")
        if spec.kind.name == "ivfpq" and cfg.ivf.pq_m and d % cfg.ivf.pq_m:
            raise IndexBuildError(f"index.ivf.pq_m ({cfg.ivf.pq_m}) must divide {name!r}'s {d} dims")


def train_variants(cfg: IndexConfig, n: int, dims: int, sample: np.ndarray, seed: int,
                   training: Training = FULL_BUILD, fit_only: bool = False) -> list[TrainedVariant]:
    """Every configured vector variant trained once: `sample` holds the vectors of training_rows(n) (full dims), or
    with `fit_only` of their fit_rows (NeedsWholeSample where a variant must train anew)."""
    check_variant_dims(cfg, dims, "the model")
    check_finite(sample)
    out = []
    for name in cfg.vector_variants:
        spec = VariantSpec.parse(name)
        kind = spec.kind
        x = matryoshka(sample, spec.dims) if len(sample) else np.empty((0, spec.dims or dims), np.float32)
        d = spec.dims or dims
        ctx = TrainContext(cfg, seed, training, spec.name, n, plan_ivf(n, cfg.ivf) if kind.ivf else None,
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
