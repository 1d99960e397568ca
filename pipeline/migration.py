"""A model migration's decision and report: blue (live) and green (the new model's snapshot) measured on
the same golden set, the quality gate applied to those numbers, and the drift between them.

Blue's metrics are recomputed from its snapshot rather than read from its manifest: its manifest may hold
numbers from another golden set or an older evaluation, and the gate must compare like with like.
"""

from __future__ import annotations

from pipeline.aliases import GateResult, check_gate
from pipeline.config import GateConfig
from pipeline.drift import compare, drift_markdown
from pipeline.evaluation import METRICS
from pipeline.measure import GoldenSet, Measurement

TOPK = 10  # the overlap of the top-10 documents per golden query


def gate_check(gate: GateConfig, blue: Measurement, green: Measurement) -> GateResult:
    return check_gate(gate, {"evaluation": green.evaluation()}, {"evaluation": blue.evaluation()})


def _side(m: Measurement) -> dict:
    return {"version": m.version, "model": m.model, "dims": m.dims, "modes": m.modes}


def migration_report(alias: str, golden: GoldenSet, gate: GateConfig, result: GateResult, promotion: dict,
                     blue: Measurement, green: Measurement) -> dict:
    """Everything the decision rests on, as JSON: both sides' metrics per search mode, the gate, what
    happened to the alias, and the drift comparison (top-k overlap only when both index the same corpus)."""
    return {"index_name": green.index_name, "alias": alias,
            "golden_set": {"queries": golden.queries_url, "qrels": golden.qrels_url,
                           "judged_queries": len(golden.qrels)},
            "gate": gate.model_dump(), "gate_result": result.__dict__, "promotion": promotion,
            "blue": _side(blue), "green": _side(green),
            "drift": compare(blue.stats, green.stats, runs=(blue.run, green.run), k=TOPK)}


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def migration_markdown(report: dict) -> str:
    """The report side by side, for a Prefect markdown artifact and report.md."""
    blue, green, promotion, gate = report["blue"], report["green"], report["promotion"], report["gate"]
    alias = report["alias"]
    if promotion["promoted"]:
        decision = (f"**Promoted**: alias `{alias}` moved from blue {blue['version']} to green {green['version']}.")
    else:
        decision = (f"**Refused**: alias `{alias}` stays on blue {promotion.get('live') or blue['version']}; green "
                    f"{green['version']} is published but not live. Reason: {promotion['reason']}")
    golden = report["golden_set"]
    lines = [f"# Migration of `{report['index_name']}`: `{blue['model']}` -> `{green['model']}`", "", decision, "",
             f"Quality gate: {gate['metric']} of search mode `{gate['mode']}` at least {gate['min_value']} and at most "
             f"{gate['max_drop']} below blue's, both measured now on the golden set `{golden['queries']}` "
             f"({golden['judged_queries']} judged queries).", "",
             "| | blue (live) | green (candidate) |", "|---|---|---|",
             f"| version | {blue['version']} | {green['version']} |",
             f"| model | `{blue['model']}` | `{green['model']}` |", f"| dims | {blue['dims']} | {green['dims']} |", "",
             f"## Golden-set metrics, mode `{gate['mode']}`", "", "| metric | blue | green | delta |",
             "|---|---:|---:|---:|"]
    b, g = blue["modes"].get(gate["mode"], {}), green["modes"].get(gate["mode"], {})
    for m in METRICS:
        if m in b or m in g:
            delta = g[m] - b[m] if m in b and m in g else None
            lines.append(f"| {m} | {_num(b.get(m))} | {_num(g.get(m))} | "
                         f"{'-' if delta is None else f'{delta:+.4f}'} |")
    common = [mode for mode in green["modes"] if mode in blue["modes"]]
    if len(common) > 1:
        lines += ["", "## nDCG@10 per search mode", "", "| mode | blue | green | delta |", "|---|---:|---:|---:|"]
        for mode in common:
            bv, gv = blue["modes"][mode].get("ndcg@10"), green["modes"][mode].get("ndcg@10")
            delta = "-" if bv is None or gv is None else f"{gv - bv:+.4f}"
            lines.append(f"| {mode} | {_num(bv)} | {_num(gv)} | {delta} |")
    # The drift tables without their golden-set metrics (tabulated above), headings one level down.
    drift = drift_markdown({**report["drift"], **{side: {k: v for k, v in report["drift"][side].items()
                                                        if k != "metrics"} for side in ("blue", "green", "delta")}})
    lines += ["", *("#" + line if line.startswith("#") else line for line in drift.splitlines())]
    return "\n".join(lines)
