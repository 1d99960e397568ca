"""The quality gate: a candidate version's golden-set metric against a floor and against the live version's.

When judged documents left the corpus (or arrived), the metric moves whatever the search; the gate then judges the
drop on the judgments both versions can find (`SharedJudgments`, computed from the rankings each build kept:
pipeline/quality/golden_runs.py), so a nightly reindex is not refused for a deletion."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipeline.config import GateConfig


@dataclass(frozen=True)
class SharedJudgments:
    """The gate's metric for both versions on the judgments both can find: judged documents either index lacks are
    dropped from the judgments and from both rankings (the rest move up, as if the documents had never been)."""

    candidate: float
    live: float
    relevant: int  # relevant judgments both versions hold
    dropped: int  # judged documents one of them lacks


@dataclass(frozen=True)
class GateResult:
    passed: bool
    candidate: float | None
    live: float | None
    reasons: list[str]  # why it refused
    notes: list[str] = field(default_factory=list)  # why it passed although the metric fell
    shared: SharedJudgments | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def metric_of(evaluation: dict | None, gate: GateConfig) -> float | None:
    """The gate's metric and mode in a manifest's "evaluation" section, if measured."""
    return ((evaluation or {}).get("modes") or {}).get(gate.mode, {}).get(gate.metric)


def check_gate(gate: GateConfig, candidate: dict | None, live: dict | None,
               shared: SharedJudgments | None = None) -> GateResult:
    """Compare the candidate's golden-set metric (both arguments in the manifest's "evaluation" shape) with the
    threshold and with the live version's; `live` None: nothing is live, only the floor applies. A drop beyond
    `max_drop` passes if `shared` (the two on the judgments both hold) shows none."""
    cand, live_value, reasons, notes = metric_of(candidate, gate), metric_of(live, gate) if live else None, [], []
    if cand is None:
        modes = list((candidate or {}).get("modes") or {})
        reasons.append(f"candidate has no {gate.metric} for mode {gate.mode!r}: " + (
            f"its evaluated modes are {modes}" if modes else "it was not evaluated (its build had no golden set)"))
    else:
        if cand < gate.min_value:
            reasons.append(f"{gate.metric} {cand:.4f} is below the minimum {gate.min_value:.4f}")
        if live_value is not None and cand < live_value - gate.max_drop:
            drop = f"{gate.metric} {cand:.4f} is more than {gate.max_drop:.4f} below live's {live_value:.4f}"
            if shared is None:
                reasons.append(drop + _fewer_judged(candidate, live))
            elif shared.candidate < shared.live - gate.max_drop:
                reasons.append(f"{drop}, and {_on_shared(shared)}")
            else:
                notes.append(f"{drop}, but {_on_shared(shared)}: the drop is the corpus's, not the search's")
    return GateResult(not reasons, cand, live_value, reasons, notes, shared)


def _on_shared(shared: SharedJudgments) -> str:
    plural = "" if shared.dropped == 1 else "s"
    return (f"{shared.candidate:.4f} against {shared.live:.4f} on the {shared.relevant} relevant judgments both "
            f"versions can find (leaving out {shared.dropped} judged document{plural} only one of them holds)")


def _fewer_judged(candidate: dict, live: dict) -> str:
    """Why a drop may not be the search's, when the two could not be compared on shared judgments (a version
    published without its golden rankings): relevant documents of the same golden set left the corpus (the
    evaluations' "coverage", pipeline/quality/golden.py), which lowers the metric whatever the search."""
    cand, before = candidate.get("coverage") or {}, live.get("coverage") or {}
    if cand.get("relevant") is None or cand.get("relevant") != before.get("relevant") or \
            cand["found"] >= before["found"]:
        return ""
    return (f" (of the golden set's {cand['relevant']} relevant documents, the index holds {cand['found']} against "
            f"live's {before['found']}: judged documents left the corpus, which lowers the metric whatever the search; "
            "promote with --force if that is expected)")
