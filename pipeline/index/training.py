"""Training a build may keep from an earlier version, and whether it still fits this build's vectors.

An incremental build may keep live's IVF-PQ coarse centroids and PQ codebooks (training is most of its index time),
its int8 ranges (int8-ivf: both) and binary-ivf's centroids, while the plan is unchanged and the training fits: its
error on this build's sample (the kind's `fit_error`, recorded as `reconstruction_error`) stays within a limit times
the error on the sample it was trained on (`index.ivf.max_reuse_error_ratio`; binary-ivf's Hamming distance to its
centroids: `max_reuse_hamming_ratio`; benchmarks/training_reuse.py). A kept training also lets the build copy the
kept chunks' codes from live instead of encoding their vectors (pipeline/jobs/kept_codes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.config import IndexConfig
from pipeline.index.faiss_ops import from_bytes, ivf_of
from pipeline.index.plan import IvfPlan

Trained = tuple[bytes, dict]  # a variant's trained, empty index (FAISS bytes) and its manifest parameters


@dataclass(frozen=True)
class Training:
    """Training a build may reuse: a committed version's trained, empty indexes of the kinds that keep it and their
    manifest parameters (variant name -> Trained), and why they may be reused, or none and why not. Recorded per
    variant in the manifest."""

    variants: dict[str, Trained] = field(default_factory=dict)
    why: str = "trained on this build's vectors: a full build"


FULL_BUILD = Training()


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


class FitsVectors(Protocol):
    """What kept_training asks of a variant kind (pipeline/index/variants.py Kind)."""

    binary: bool
    reuse_limit: str  # the IvfConfig field bounding fit_error's growth
    fit_measure: str  # what fit_error measures, as messages name it

    def fit_error(self, index, x: np.ndarray) -> float: ...


def _growth(params: dict, now: float) -> float:
    """This build's reconstruction error over the one measured on the sample the index was trained on."""
    then = params["reconstruction_error"]
    return now / then if then else (1.0 if now == 0 else float("inf"))


def misfit(params: dict, now: float, limit: float, setting: str, measure: str) -> str | None:
    """Why an earlier version's trained index no longer fits this build's vectors (their error `now`, the kind's
    `measure`, beyond `limit`, the config's `index.ivf.<setting>`, times its error on the vectors it was trained on),
    or None while it does."""
    version = params["trained_in"]
    if "reconstruction_error" not in params:
        return (f"trained on this build's vectors: version {version}'s training recorded no reconstruction error "
                "(an older embedpipe), so its fit to these vectors cannot be checked")
    if _growth(params, now) <= limit:
        return None
    return (f"trained on this build's vectors: they fit version {version}'s training {_growth(params, now):.2f}x "
            f"worse than the vectors it was trained on ({measure} {now:.4g} against "
            f"{params['reconstruction_error']:.4g}; index.ivf.{setting} {limit:g})")


def kept_note(params: dict, now: float, why: str, measure: str) -> str:
    """The manifest's `training` line for a kept training: whose, how well it fits, why it may be kept."""
    return (f"reused from version {params['trained_in']} ({measure} {_growth(params, now):.2f}x its value "
            f"when trained): {why}")


class NeedsWholeSample(Exception):  # noqa: N818 (a signal, not an error: the caller reads the whole sample)
    """Raised by a training given only the rows a fit is measured on, when it must train anew."""


def kept_training(ctx: TrainContext, kind: FitsVectors, sample: np.ndarray, dims: int, factory: str,
                  nprobe: int | None = None) -> tuple[object, dict] | str:
    """An earlier version's trained index and parameters for the variant `ctx.name` (of `kind`), kept while its plan
    is this build's (`factory`) and it still fits this build's sample (`kind.fit_error` within the config's
    `index.ivf.<kind.reuse_limit>`); else why the variant is trained anew (raised as NeedsWholeSample when the
    sample holds only the fit rows). `nprobe`: this build's, for IVF kinds."""
    earlier = ctx.training.variants.get(ctx.name)
    if earlier is None:
        why = ctx.training.why
    elif earlier[1]["factory"] != factory or earlier[1]["dims"] != dims:
        why = f"trained on this build's vectors: the plan changed ({earlier[1]['factory']} -> {factory})"
    else:
        params = {k: v for k, v in earlier[1].items() if k not in ("index_bytes", "quality", "training")}
        index = from_bytes(earlier[0], kind.binary)
        now = kind.fit_error(index, sample)
        why = misfit(params, now, getattr(ctx.cfg.ivf, kind.reuse_limit), kind.reuse_limit, kind.fit_measure)
        if why is None:
            params |= {"reconstruction_error_now": now, "training": kept_note(params, now, ctx.training.why,
                                                                                 kind.fit_measure)}
            if nprobe is not None:  # how a search scans, not training: this build's plan (its N) sets it
                ivf_of(index, kind.binary).nprobe = nprobe
                params["nprobe"] = nprobe
            return index, params
    if ctx.fit_only:
        raise NeedsWholeSample(f"{ctx.name}: {why}")
    return why
