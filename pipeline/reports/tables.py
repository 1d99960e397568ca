"""The tables of a build summary, defined once: the Prefect artifact renders them as markdown, the CLI as rich
tables (flows/cli/common.py), so both show the same figures."""

from __future__ import annotations

from dataclasses import dataclass

# Short headers, so the quality table of the CLI fits 80 columns; the artifact shows every figure.
SHORT_HEADERS = {"ndcg@10": "nDCG@10", "recall@10": "R@10", "recall@100": "R@100", "mrr@10": "MRR@10",
                 "recall@10_vs_exact": "R@10/exact", "ndcg@10_retention": "kept"}
# The counts a person reads first (the artifact and --json have all of them)
MAIN_COUNTS = ("read", "accepted", "quarantined", "blank_lines", "docs_new", "docs_changed", "docs_deleted",
               "docs_kept", "files_unread", "chunks", "embedded", "reused_from_cache")


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    numeric: bool = True  # every column after the first is right-aligned

    def markdown(self) -> str:
        align = "|---" + ("|---:" if self.numeric else "|---") * (len(self.columns) - 1) + "|"
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |", align]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])


def num(x: float | None, missing: str = "-") -> str:
    return missing if x is None else f"{x:.4f}"


def figure(x: float | None, missing: str = "-") -> str:
    """A drift statistic: six significant digits, for variances of ~1e-3 and row counts alike."""
    return missing if x is None else f"{x:.6g}"


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def quality_table(title: str, modes: dict[str, dict[str, float]], short: bool = False) -> Table:
    """One row per search mode: its golden-set metrics (all of them, or the short headers' subset)."""
    if short:
        metrics = [m for m in SHORT_HEADERS if any(m in values for values in modes.values())]
        headers = [SHORT_HEADERS[m] for m in metrics]
    else:
        metrics = headers = list(dict.fromkeys(m for values in modes.values() for m in values))
    return Table(title, ["mode", *headers], [[mode, *(_cell(v[m]) if m in v else "" for m in metrics)]
                                             for mode, v in modes.items()])


def timings_table(timings: dict[str, float]) -> Table:
    """Seconds per stage, one column each: fits 80 columns where a sentence would wrap."""
    return Table("seconds per stage", list(timings), [[f"{s:.1f}" for s in timings.values()]])


def counts_table(counts: dict) -> Table:
    return Table("counts", ["count", "value"], [[k, str(v)] for k, v in counts.items()], numeric=False)
