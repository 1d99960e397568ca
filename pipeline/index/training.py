"""Training a build may keep from an earlier version, and whether it still fits this build's vectors.

An incremental build may keep live's IVF-PQ coarse centroids and PQ codebooks (training is most of its index time),
and its int8 ranges (int8-ivf: both), while the plan is unchanged and the training fits: its reconstruction error on
this build's sample stays within `index.ivf.max_reuse_error_ratio` times the error on the sample it was trained on
(benchmarks/training_reuse.py, for IVF-PQ). A kept training also lets the build copy the kept chunks' codes from live
instead of encoding their vectors (pipeline/jobs/kept_codes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Trained = tuple[bytes, dict]  # a variant's trained, empty index (FAISS bytes) and its manifest parameters


@dataclass(frozen=True)
class Training:
    """Training a build may reuse: a committed version's trained, empty indexes of the kinds that keep it and their
    manifest parameters (variant name -> Trained), and why they may be reused, or none and why not. Recorded per
    variant in the manifest."""

    variants: dict[str, Trained] = field(default_factory=dict)
    why: str = "trained on this build's vectors: a full build"


FULL_BUILD = Training()


def _growth(params: dict, now: float) -> float:
    """This build's reconstruction error over the one measured on the sample the index was trained on."""
    then = params["reconstruction_error"]
    return now / then if then else (1.0 if now == 0 else float("inf"))


def misfit(params: dict, now: float, limit: float) -> str | None:
    """Why an earlier version's trained IVF-PQ index no longer fits this build's vectors (their reconstruction
    error `now` beyond `limit` times its error on the vectors it was trained on), or None while it does."""
    version = params["trained_in"]
    if "reconstruction_error" not in params:
        return (f"trained on this build's vectors: version {version}'s training recorded no reconstruction error "
                "(an older embedpipe), so its fit to these vectors cannot be checked")
    if _growth(params, now) <= limit:
        return None
    return (f"trained on this build's vectors: they fit version {version}'s training {_growth(params, now):.2f}x "
            f"worse than the vectors it was trained on (reconstruction error {now:.4g} against "
            f"{params['reconstruction_error']:.4g}; index.ivf.max_reuse_error_ratio {limit:g})")


def kept_note(params: dict, now: float, why: str) -> str:
    """The manifest's `training` line for a kept training: whose, how well it fits, why it may be kept."""
    return (f"reused from version {params['trained_in']} (reconstruction error {_growth(params, now):.2f}x its value "
            f"when trained): {why}")
