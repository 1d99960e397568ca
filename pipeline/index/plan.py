"""IVF-PQ parameters planned from the number of vectors N and their dims, as pure functions.

Rules (in the spirit of autofaiss, documented so a reader can predict the plan):
- nlist: the power of two nearest 4*sqrt(N), but at most train_points/39 (FAISS wants >= 39 training
  points per centroid) and at least 1.
- PQ: m sub-quantizers of dims/m dims each, m the divisor of dims nearest dims/8 (8 dims per byte-code;
  384 dims -> 48 bytes, 1/32 of fp32). nbits 8 (256 centroids per sub-quantizer) when the training
  sample has >= 2,560 points, else the largest that keeps >= 10 points per centroid (min 1): small
  demo corpora still get a valid, if coarse, PQ.
- nprobe: enough lists to scan at least 2,560 vectors, and at least 1/64 of the lists (at most nlist).
  Small corpora have small lists, so they probe a large share (SciFact: 66 of 132 lists, which gives
  Recall@10 0.99 of the coarse quantizer; nlist/8 gave 0.90); at 1M vectors it is 64 of 4,096.
- training sample: min(N, max_train_points), drawn with the run's seed. max_train_points is the memory
  budget of training (200k x 384 dims x 4 bytes = 307 MB): it caps nlist at 5,128 lists (1M vectors
  plan 4,096); raise it for larger corpora. So the sample holds >= 39 * nlist points, or all N vectors
  when there are fewer (N < 39, or an explicit nlist above N/39). An explicit `ivf.nlist` that would need more
  points than the budget allows is refused when the config loads (pipeline/config.py), not trained short.
The factory string ends in `np`, which skips polysemous training (3-5x slower, unused here).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.config import IvfConfig
from pipeline.errors import IndexBuildError

MIN_POINTS_PER_CENTROID = 39  # coarse quantizer
MIN_POINTS_PER_PQ_CENTROID = 10
MIN_VECTORS_SCANNED = 2560
RESCORE_FACTOR_PER_1M = 10  # re-scoring depth (x k) that keeps Recall@10 ~0.97 up to 1M vectors


@dataclass(frozen=True)
class IvfPlan:
    """Shared by every IVF variant (ivfpq, int8-ivf, binary-ivf)."""

    nlist: int
    nprobe: int
    train_points: int


@dataclass(frozen=True)
class IvfPqPlan:
    nlist: int
    pq_m: int
    nbits: int
    nprobe: int
    train_points: int

    @property
    def factory(self) -> str:
        return f"IVF{self.nlist},PQ{self.pq_m}x{self.nbits}np"

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.pq_m * self.nbits / 8)

    def to_dict(self) -> dict:
        return {**asdict(self), "factory": self.factory, "code_bytes": self.code_bytes}


def plan_nlist(n: int) -> int:
    target = 4 * math.sqrt(n)
    nearest_pow2 = 2 ** round(math.log2(max(target, 1)))
    return max(1, min(nearest_pow2, n // MIN_POINTS_PER_CENTROID))


def plan_pq_m(dims: int) -> int:
    divisors = [m for m in range(1, dims + 1) if dims % m == 0]
    return min(divisors, key=lambda m: (abs(m - dims / 8), -m))


def plan_nbits(train_points: int) -> int:
    return max(1, min(8, int(math.log2(max(train_points // MIN_POINTS_PER_PQ_CENTROID, 1)))))


def plan_rescore_factor(n: int) -> int:
    """Candidates re-scored per result asked for: 10 up to 1M vectors, then 10 x ceil(sqrt(N / 1M)). With the lists
    probed growing slower than N, more vectors compete for the PQ top candidates: at 10M, 10 gave Recall@10 0.9025
    against 0.9689 at 1M, and 40 gave 0.9805 (docs/BENCHMARKS.md, the out-of-core index stage)."""
    return RESCORE_FACTOR_PER_1M * max(1, math.ceil(math.sqrt(n / 1_000_000)))


def training_points(n: int, cfg: IvfConfig) -> int:
    """How many of n vectors every variant that trains is trained on (one sample for all of them)."""
    return min(n, cfg.max_train_points)


def plan_ivf(n: int, cfg: IvfConfig) -> IvfPlan:
    if n < 2:
        raise IndexBuildError(f"an IVF index (ivfpq, int8-ivf, binary-ivf) needs at least 2 vectors to train its "
                              f"lists, and this corpus has {n}: leave those out of index.variants")
    train = training_points(n, cfg)
    nlist = cfg.nlist or min(plan_nlist(n), max(1, train // MIN_POINTS_PER_CENTROID))
    if nlist > train:
        raise IndexBuildError(f"index.ivf.nlist ({nlist}) exceeds the {train} training vectors available")
    nprobe = cfg.nprobe or max(math.ceil(MIN_VECTORS_SCANNED * nlist / n), nlist // 64, 1)
    return IvfPlan(nlist=nlist, nprobe=min(nprobe, nlist), train_points=train)


def plan_ivfpq(n: int, dims: int, cfg: IvfConfig) -> IvfPqPlan:
    if cfg.pq_m and dims % cfg.pq_m:
        raise IndexBuildError(f"index.ivf.pq_m ({cfg.pq_m}) must divide the vector dims ({dims})")
    ivf = plan_ivf(n, cfg)
    if cfg.nbits and 2 ** cfg.nbits > ivf.train_points:  # FAISS's k-means needs a point per codebook entry
        raise IndexBuildError(f"index.ivf.nbits ({cfg.nbits}) needs {2 ** cfg.nbits} training vectors; this build "
                              f"has {ivf.train_points}: expected nbits <= {int(math.log2(ivf.train_points))}, or "
                              "leave it unset (planned from N)")
    return IvfPqPlan(nlist=ivf.nlist, pq_m=cfg.pq_m or plan_pq_m(dims), nbits=cfg.nbits or plan_nbits(ivf.train_points),
                     nprobe=ivf.nprobe, train_points=ivf.train_points)
