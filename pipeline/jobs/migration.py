"""A model migration's decision and report: blue (live) and green (the new model's snapshot) measured on
the same golden set, the quality gate applied to those numbers, and the drift between them.

Blue's metrics are recomputed from its snapshot rather than read from its manifest: its manifest may hold
numbers from another golden set or an older evaluation, and the gate must compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import BM25, GateConfig
from pipeline.quality.drift import compare
from pipeline.quality.fusion import CONVEX, parse_hybrid
from pipeline.quality.golden import GoldenSet
from pipeline.quality.measure import Measurement
from pipeline.quality.metrics import METRICS
from pipeline.snapshots.aliases import Promotion
from pipeline.snapshots.gate import GateResult, check_gate

TOPK = 10  # the overlap of the top-10 documents per golden query


def hybrid_mode(gate: GateConfig, blue: Measurement, green: Measurement) -> str | None:
    """The hybrid mode the report sets side by side beside the gate's: hybrid over the gate's dense mode, when
    both sides carry bm25 (None when the gate's mode is itself bm25 or hybrid, or a side lacks it)."""
    mode = gate.mode if gate.mode == BM25 or parse_hybrid(gate.mode) else f"{CONVEX}:{gate.mode}"
    return None if mode == gate.mode or mode not in blue.modes or mode not in green.modes else mode


def gate_check(gate: GateConfig, blue: Measurement, green: Measurement) -> GateResult:
    return check_gate(gate, green.evaluation(), blue.evaluation())


def _side(m: Measurement) -> dict:
    return {"version": m.version, "model": m.model, "dims": m.dims, "modes": m.modes}


def migration_report(alias: str, golden: GoldenSet, gate: GateConfig, result: GateResult, promotion: Promotion,
                     blue: Measurement, green: Measurement) -> dict:
    """Everything the decision rests on, as a JSON document: both sides' metrics per search mode, the gate, what
    happened to the alias, and the drift comparison (top-k overlap only when both index the same corpus)."""
    hybrid = hybrid_mode(gate, blue, green)
    return {"index_name": green.index_name, "alias": alias,
            "golden_set": {"queries": golden.queries_url, "qrels": golden.qrels_url,
                           "judged_queries": len(golden.qrels)},
            "gate": gate.model_dump(), "gate_result": result.to_dict(), "promotion": promotion.to_dict(),
            "blue": _side(blue), "green": _side(green), **({"hybrid_mode": hybrid} if hybrid else {}),
            "drift": compare(blue.stats, green.stats, runs=(blue.run, green.run), k=TOPK)}


@dataclass(frozen=True)
class MigrationSummary:
    """What the migration flow returns (and the CLI prints; `to_dict` is its --json form)."""

    index_name: str
    alias: str
    run_id: str
    flow_run_id: str
    blue: Measurement
    green: Measurement
    green_snapshot: str  # its URL, redacted
    green_counts: dict
    gate: GateConfig
    result: GateResult
    promotion: Promotion
    report: dict  # migration_report's document
    report_url: str
    timings_s: dict[str, float]

    def to_dict(self) -> dict:
        def side(m: Measurement) -> dict:
            return {"version": m.version, "model": m.model, "dims": m.dims, "metrics": m.metrics}

        hybrid = {}
        if mode := self.report.get("hybrid_mode"):  # blue against green on hybrid search too
            hybrid = {"hybrid": {"mode": mode, **{name: {m: v for m, v in s.modes[mode].items() if m in METRICS}
                                                  for name, s in (("blue", self.blue), ("green", self.green))}}}
        return hybrid | {"job": "migrate", "index_name": self.index_name, "alias": self.alias, "run_id": self.run_id,
                "flow_run_id": self.flow_run_id, "blue": side(self.blue),
                "green": side(self.green) | {"snapshot": self.green_snapshot, "counts": self.green_counts},
                "mode": self.gate.mode,
                "gate": {**self.gate.model_dump(), "passed": self.result.passed, "reasons": self.result.reasons},
                "promotion": self.promotion.to_dict(), "topk_overlap": self.report["drift"].get("topk_overlap"),
                "drift_notes": self.report["drift"]["notes"], "report": self.report_url, "timings_s": self.timings_s}
