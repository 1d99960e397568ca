"""PNG charts as bytes, so a flow can both attach them as an artifact and store them in a snapshot.

Figures are built on matplotlib's object API with the Agg canvas, never pyplot: no global backend is
switched and no figure outlives the call, however many a long-running flow process renders.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.quality.fusion import CONVEX, RRF, parse_hybrid
from pipeline.quality.metrics import METRICS

BLUE, GREEN = "tab:blue", "tab:green"
_KIND_COLORS = {"exact": "tab:gray", "fp16": "tab:purple", "int8": "tab:orange", "ivfpq": "tab:red",
                "binary": "tab:cyan", "bm25": "tab:green"}
_SUFFIX_MARKERS = {"": "o", "rescore": "^", "hamming": "x"}
_LEXICAL_MARKERS = {"bm25": "D", CONVEX: "*", RRF: "P"}  # bm25, and hybrid modes (colour: their dense side's)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _point(mode: str, name: str, v: Mapping, variants: Mapping) -> tuple[float, str, str]:
    """(bytes per vector, colour family, marker) of a search mode: a hybrid mode reads its dense variant's bytes
    and bm25's (per chunk), and takes its dense side's colour."""
    kind = v.get("kind", name.partition("@")[0])
    if hybrid := parse_hybrid(mode):
        dense = variants.get(hybrid[1].partition("+")[0], {})
        kind = dense.get("kind", hybrid[1])
        return v["bytes_per_vector"] + dense.get("bytes_per_vector", 0), kind, _LEXICAL_MARKERS[hybrid[0]]
    if kind == "bm25":
        return v["bytes_per_vector"], kind, _LEXICAL_MARKERS["bm25"]
    return v["bytes_per_vector"], kind, _SUFFIX_MARKERS.get(mode.partition("+")[2], "s")


def quality_vs_bytes_png(variants: Mapping, title: str | None = None) -> bytes:
    """nDCG@10 (y) against bytes per vector of the index codes (x, log scale), one labelled point per
    search mode. `variants` is the manifest's "index" section (or its "variants" mapping): each variant
    has "bytes_per_vector" and "quality" {mode: metrics}. Rescored modes also read the fp16 store; bm25's bytes
    are per chunk, and a hybrid mode's are its dense variant's plus bm25's."""
    variants = variants.get("variants", variants)
    points = [(mode, *_point(mode, name, v, variants), q["ndcg@10"])
              for name, v in variants.items() for mode, q in (v.get("quality") or {}).items() if "ndcg@10" in q]
    if not points:
        raise ValueError("no variant has an evaluated search mode (quality with ndcg@10) to plot")
    fig = Figure(figsize=(10, 6.5))
    ax = fig.add_subplot()
    for _, x, kind, marker, y in points:
        family = next((k for k in _KIND_COLORS if kind.startswith(k)), "exact")
        ax.scatter([x], [y], color=_KIND_COLORS[family], marker=marker, s=40)
    xs = [p[1] for p in points]
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.5, max(xs) * 4)  # room on the right for the largest variant's labels
    ax.autoscale_view()
    _label(ax, [(x, y, f"{mode} {y:.3f}") for mode, x, _, _, y in points])
    for suffix, marker in _SUFFIX_MARKERS.items():
        ax.scatter([], [], color="black", marker=marker, label=f"+{suffix}" if suffix else "own scoring")
    xlabel = "bytes per vector (index codes, log scale; +rescore also reads 2 x dims of fp16)"
    if any(marker in _LEXICAL_MARKERS.values() for _, _, _, marker, _ in points):
        for label, marker in (("bm25", "D"), (f"{CONVEX}: (convex fusion)", "*"), (f"{RRF}:", "P")):
            ax.scatter([], [], color="black", marker=marker, label=label)
        xlabel += "; bm25: per chunk; hybrid: dense + bm25"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("nDCG@10 on the golden queries")
    ax.set_title(title or "nDCG@10 against bytes per vector, per search mode")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _label(ax, points: list[tuple[float, float, str]]) -> None:
    """Label every point to its right; labels of points sharing an x (IVF twins, +rescore modes of one
    variant) are pushed apart vertically, with a leader line, so none is printed over another."""
    lo, hi = ax.get_ylim()
    gap = (hi - lo) * 0.035
    by_x: dict[float, list[tuple[float, str]]] = {}
    for x, y, text in points:
        by_x.setdefault(x, []).append((y, text))
    lowest = lo
    for x, group in by_x.items():
        previous = None
        for y, text in sorted(group, reverse=True):
            at = y if previous is None else min(y, previous - gap)
            ax.annotate(text, (x, y), xytext=(x * 1.12, at), textcoords="data", fontsize=7, va="center",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if at != y else None)
            previous, lowest = at, min(lowest, at - gap)
    ax.set_ylim(lowest, hi)


def _name(stats: Mapping) -> str:
    details = [f"{d}-d" for d in [stats.get("vectors", {}).get("dims")] if d] + [stats.get("version") or ""]
    return f"{stats.get('model', '?')} ({', '.join(filter(None, details))})" if any(details) else \
        str(stats.get("model", "?"))


def _bars(ax, names: list[str], blue: Mapping, green: Mapping, title: str) -> None:
    if not names:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return
    xs = range(len(names))
    for offset, stats, color, side in ((-0.2, blue, BLUE, "blue"), (0.2, green, GREEN, "green")):
        values = [stats.get(n, math.nan) for n in names]  # a figure one side lacks: no bar, not a 0 bar
        bars = ax.bar([x + offset for x in xs], values, width=0.4, color=color, label=side)
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.3f}" for v in values], fontsize=7)
    ax.set_xticks(list(xs), names, rotation=20, fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=8)


def blue_green_png(blue: Mapping, green: Mapping) -> bytes:
    """Blue (live) against green (candidate), from two `drift.snapshot_stats` summaries: golden-set
    metrics as paired bars, the top-1 and rank-10 score histograms, and the dimension-free vector figures."""
    fig = Figure(figsize=(16, 5))
    ax_metrics, ax_scores, ax_vectors = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
    bm, gm = blue.get("metrics", {}), green.get("metrics", {})
    _bars(ax_metrics, [m for m in METRICS if m in bm or m in gm], bm, gm, "golden-set metrics")

    occupied: list[float] = []
    for stats, color, side in ((blue, BLUE, "blue"), (green, GREEN, "green")):
        hist = stats.get("scores", {}).get("histograms", {})
        lo, hi = hist.get("range", (-1.0, 1.0))
        bins = hist.get("bins", 1)
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
        for key, style in (("top1", "-"), ("at10", ":")):
            if key in hist:
                ax_scores.stairs(hist[key], edges, color=color, linestyle=style, linewidth=2,
                                 label=f"{side} {'top-1' if key == 'top1' else 'rank 10'}")
                occupied += [edges[i] for i, c in enumerate(hist[key]) if c] + \
                    [edges[i + 1] for i, c in enumerate(hist[key]) if c]
    if occupied:  # the fixed bins span [-1, 1]; show where the scores are
        ax_scores.set_xlim(max(-1.0, min(occupied) - 0.05), min(1.0, max(occupied) + 0.05))
    ax_scores.set_title("golden-query scores (histogram over queries)")
    ax_scores.set_xlabel("score")
    ax_scores.set_ylabel("queries")
    if ax_scores.has_data():
        ax_scores.legend(fontsize=8)
    else:
        ax_scores.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax_scores.transAxes)

    def geometry(stats: Mapping) -> dict[str, float]:
        v = stats.get("vectors", {})
        return {"centroid_norm": v.get("centroid_norm"), "pairwise_cos": v.get("pairwise_cosine", {}).get("mean"),
                "total_var": v.get("total_variance"), "isotropy": v.get("isotropy")}

    bv, gv = geometry(blue), geometry(green)
    _bars(ax_vectors, [n for n in bv if bv[n] is not None or gv[n] is not None],
          {k: v for k, v in bv.items() if v is not None}, {k: v for k, v in gv.items() if v is not None},
          "vector geometry")
    fig.suptitle(f"blue (live): {_name(blue)}    vs    green (candidate): {_name(green)}", fontsize=12)
    fig.tight_layout()
    return _png(fig)
