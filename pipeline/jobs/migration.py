"""A model migration's decision and report: blue (live) and green (the new model's snapshot) measured on
the same golden set, the quality gate applied to those numbers, and the drift between them.

Blue's metrics are recomputed from its snapshot rather than read from its manifest: its manifest may hold
numbers from another golden set or an older evaluation, and the gate must compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import GateConfig
from pipeline.quality.drift import compare
from pipeline.quality.golden import GoldenSet
from pipeline.quality.measure import Measurement
from pipeline.snapshots.aliases import Promotion
from pipeline.snapshots.gate import GateResult, check_gate

TOPK = 10  # the overlap of the top-10 documents per golden query


def gate_check(gate: GateConfig, blue: Measurement, green: Measurement) -> GateResult:
    return check_gate(gate, green.evaluation(), blue.evaluation())


def _side(m: Measurement) -> dict:
    return {"version": m.version, "model": m.model, "dims": m.dims, "modes": m.modes}


def migration_report(alias: str, golden: GoldenSet, gate: GateConfig, result: GateResult, promotion: Promotion,
                     blue: Measurement, green: Measurement) -> dict:
    """Everything the decision rests on, as a JSON document: both sides' metrics per search mode, the gate, what
    happened to the alias, and the drift comparison (top-k overlap only when both index the same corpus)."""
    return {"index_name": green.index_name, "alias": alias,
            "golden_set": {"queries": golden.queries_url, "qrels": golden.qrels_url,
                           "judged_queries": len(golden.qrels)},
            "gate": gate.model_dump(), "gate_result": result.to_dict(), "promotion": promotion.to_dict(),
            "blue": _side(blue), "green": _side(green),
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

        return {"job": "migrate", "index_name": self.index_name, "alias": self.alias, "run_id": self.run_id,
                "flow_run_id": self.flow_run_id, "blue": side(self.blue),
                "green": side(self.green) | {"snapshot": self.green_snapshot, "counts": self.green_counts},
                "mode": self.gate.mode,
                "gate": {**self.gate.model_dump(), "passed": self.result.passed, "reasons": self.result.reasons},
                "promotion": self.promotion.to_dict(), "topk_overlap": self.report["drift"].get("topk_overlap"),
                "drift_notes": self.report["drift"]["notes"], "report": self.report_url, "timings_s": self.timings_s}
