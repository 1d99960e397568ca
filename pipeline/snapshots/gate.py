"""The quality gate: a candidate version's golden-set metric against a floor and against the live version's.

When judged documents left the corpus (or arrived), the metric moves whatever the search; the gate then judges the
drop on the judgments both versions can find (`SharedJudgments`, computed from the rankings each build kept:
pipeline/quality/golden_runs.py), so a nightly reindex is not refused for a deletion.

`max_drift` also holds chosen figures of the two versions' drift statistics (each build's evaluation.drift: vector
geometry, golden-query scores, the relevant/non-relevant gap) within a distance of each other: a corpus whose text
broke upstream (boilerplate for most documents) moves the vectors' geometry while the golden queries, whose documents
may be among those left, still score as before."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from numbers import Real

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
class DriftCheck:
    """One statistic of two drift summaries (a dotted path, e.g. "vectors.pairwise_cosine.mean"): its value in the
    reference and now, the change, and the largest allowed either way."""

    statistic: str
    reference: float | None
    current: float | None
    change: float | None
    max_change: float  # in the statistic's units (for a relative limit, that share of the reference's value)
    relative: float | None = None  # the limit as a share of the reference's value ("20%": 0.2), if given so

    @property
    def ok(self) -> bool:
        # both rounded (the change by check_drift): 0.78 - 0.73 must not exceed an allowed 0.05
        return self.change is not None and abs(self.change) <= round(self.max_change, 9)

    @property
    def limit(self) -> str:
        """The limit as configured: 0.05, or 20% (1036.6) with what it allows here."""
        return f"{self.max_change:.4g}" if self.relative is None else \
            f"{self.relative * 100:g}% ({self.max_change:.4g})"

    def problem(self, reference: str, current: str) -> str | None:
        """Why it failed, as a sentence naming the two sides (e.g. "live", "the candidate"); None when it passed."""
        if self.ok:
            return None
        if self.reference is None or self.current is None:
            return f"{self.statistic} is missing from {reference if self.reference is None else current}"
        return (f"{self.statistic} moved from {self.reference:.4g} ({reference}) to {self.current:.4g} "
                f"({self.change:+.4g}, more than the {self.limit} allowed either way)")

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def stat_at(summary: Mapping, path: str) -> float | None:
    """`path` as a key of `summary`, else as a dotted path into its nested dicts ("scores.top1.mean"); None unless
    a finite number."""
    value: object = summary.get(path)
    if value is None and "." in path:
        value = summary
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        return None
    return float(value)


def check_drift(reference: Mapping, current: Mapping, max_change: Mapping[str, float | str]) -> list[DriftCheck]:
    """One check per watched statistic: its change from `reference` to `current` (two drift summaries) may be at
    most `max_change` either way, in its units or as a share of the reference's value ("20%"). A statistic missing
    on either side fails: a silent pass would hide it."""
    checks = []
    for name, limit in max_change.items():
        before, now = stat_at(reference, name), stat_at(current, name)
        change = None if before is None or now is None else round(now - before, 9)
        relative = float(limit.removesuffix("%")) / 100 if isinstance(limit, str) else None
        allowed = float(limit) if relative is None else relative * abs(before or 0.0)
        checks.append(DriftCheck(name, before, now, change, allowed, relative))
    return checks


@dataclass(frozen=True)
class GateResult:
    passed: bool
    candidate: float | None
    live: float | None
    reasons: list[str]  # why it refused
    notes: list[str] = field(default_factory=list)  # why it passed although the metric fell; drift not checked
    shared: SharedJudgments | None = None
    drift: list[DriftCheck] = field(default_factory=list)  # gate.max_drift's statistics, candidate against live

    def to_dict(self) -> dict:
        return asdict(self) | {"drift": [c.to_dict() for c in self.drift]}


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
    elif not math.isfinite(cand):  # NaN compares False with everything: it would pass both checks
        reasons.append(f"candidate's {gate.metric} for mode {gate.mode!r} is {cand}: expected a number")
    else:
        if cand < gate.min_value:
            reasons.append(f"{gate.metric} {cand:.4f} is below the minimum {gate.min_value:.4f}")
        if live_value is not None and not math.isfinite(live_value):
            notes.append(f"live's {gate.metric} is {live_value}: only the minimum was checked")
        elif live_value is not None and (why := other_golden_set(candidate, live)):
            reasons.append(f"the candidate and live were measured {why}: their {gate.metric} do not compare (a build "
                           "measures live again on its own golden set; --force promotes past the gate)")
        elif live_value is not None and _below(cand, live_value, gate.max_drop):
            drop = f"{gate.metric} {cand:.4f} is more than {gate.max_drop:.4f} below live's {live_value:.4f}"
            if shared is None:
                reasons.append(drop + _fewer_judged(candidate, live))
            elif not shared.relevant:  # 0 against 0 on nothing: no evidence the drop is the corpus's
                reasons.append(f"{drop}, and no relevant judged document is held by both versions to compare them on "
                               f"({shared.dropped} judged documents only one of them holds)")
            elif _below(shared.candidate, shared.live, gate.max_drop):
                reasons.append(f"{drop}, and {_on_shared(shared)}")
            else:
                notes.append(f"{drop}, but {_on_shared(shared)}: the drop is the corpus's, not the search's")
        elif live is not None and live_value is None:
            notes.append(f"live has no {gate.metric} for mode {gate.mode!r}: only the minimum was checked")
    drift: list[DriftCheck] = []
    if gate.max_drift and live is not None:
        cand_stats, live_stats = (candidate or {}).get("drift"), live.get("drift")
        if not cand_stats:
            reasons.append("candidate recorded no drift statistics, which publish.gate.max_drift compares (a build "
                           "measures them in monitor.mode, from the fp16 store or a float variant)")
        elif why_not := _incomparable(live_stats, cand_stats):
            notes.append(f"drift not checked: {why_not}")
        else:
            drift = check_drift(live_stats, cand_stats, gate.max_drift)
            reasons += [c.problem("live", "the candidate") for c in drift if not c.ok]
    return GateResult(not reasons, cand, live_value, reasons, notes, shared, drift)


def _below(value: float, reference: float, max_drop: float) -> bool:
    """More than `max_drop` below: rounded, so that a drop of exactly max_drop passes (0.40 - 0.35 > 0.05 in
    floating point), as the monitor's thresholds do."""
    return round(reference - value, 9) > max_drop


def other_golden_set(candidate: dict | None, live: dict | None) -> str | None:
    """How two evaluations (the manifest's shape) were measured apart, where both record it: on other judgments or
    queries (the golden set's sha256), or to another depth (evaluation.k); None where their metrics compare."""
    c, lv = candidate or {}, live or {}
    if c.get("golden_sha256") and lv.get("golden_sha256") and c["golden_sha256"] != lv["golden_sha256"]:
        return "on different golden sets (the sha256 of their queries and judgments differ)"
    if c.get("k") and lv.get("k") and c["k"] != lv["k"]:
        return f"to different depths (evaluation.k {c['k']} for the candidate, {lv['k']} for live)"
    return None


def _incomparable(live: dict | None, candidate: dict) -> str | None:
    """Why two builds' drift statistics do not compare: the live version recorded none (built before they were
    kept), or they are of another model (different scales) or search mode."""
    if not live:
        return "the live version recorded no drift statistics"
    for what in ("model", "mode"):
        if candidate.get(what) != live.get(what):
            return f"the live version's statistics are of {what} {live.get(what)!r}, the candidate's of " \
                   f"{candidate.get(what)!r}"
    return None


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
