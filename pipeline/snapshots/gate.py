"""The quality gate: a candidate version's golden-set metric against a floor and against the live version's."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.config import GateConfig


@dataclass(frozen=True)
class GateResult:
    passed: bool
    candidate: float | None
    live: float | None
    reasons: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def metric_of(evaluation: dict | None, gate: GateConfig) -> float | None:
    """The gate's metric and mode in a manifest's "evaluation" section, if measured."""
    return ((evaluation or {}).get("modes") or {}).get(gate.mode, {}).get(gate.metric)


def check_gate(gate: GateConfig, candidate: dict | None, live: dict | None) -> GateResult:
    """Compare the candidate's golden-set metric (both arguments in the manifest's "evaluation" shape) with the
    threshold and with the live version's; `live` None: nothing is live, only the floor applies."""
    cand, live_value, reasons = metric_of(candidate, gate), metric_of(live, gate) if live else None, []
    if cand is None:
        modes = list((candidate or {}).get("modes") or {})
        reasons.append(f"candidate has no {gate.metric} for mode {gate.mode!r}: " + (
            f"its evaluated modes are {modes}" if modes else "it was not evaluated (its build had no golden set)"))
    else:
        if cand < gate.min_value:
            reasons.append(f"{gate.metric} {cand:.4f} is below the minimum {gate.min_value:.4f}")
        if live_value is not None and cand < live_value - gate.max_drop:
            reasons.append(f"{gate.metric} {cand:.4f} is more than {gate.max_drop:.4f} below live's {live_value:.4f}"
                           + _fewer_judged(candidate, live))
    return GateResult(not reasons, cand, live_value, reasons)


def _fewer_judged(candidate: dict, live: dict) -> str:
    """Why a drop may not be the search's: relevant documents of the same golden set left the corpus (the
    evaluations' "coverage", pipeline/quality/golden.py), which lowers the metric whatever the search."""
    cand, before = candidate.get("coverage") or {}, live.get("coverage") or {}
    if cand.get("relevant") is None or cand.get("relevant") != before.get("relevant") or \
            cand["found"] >= before["found"]:
        return ""
    return (f" (of the golden set's {cand['relevant']} relevant documents, the index holds {cand['found']} against "
            f"live's {before['found']}: judged documents left the corpus, which lowers the metric whatever the search; "
            "promote with --force if that is expected)")
