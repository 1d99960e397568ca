"""Every markdown renderer: build summaries, migration and monitoring reports, drift tables. Pure functions from
results to text, for Prefect artifacts, report files and the CLI."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.jobs.build import NOT_EVALUATED, BuildSummary
from pipeline.jobs.monitoring import MonitorResult
from pipeline.quality.drift import is_number
from pipeline.quality.golden import coverage_note
from pipeline.quality.metrics import METRICS
from pipeline.reports.tables import counts_table, figure, num, quality_table, timings_table


def build_markdown(summary: BuildSummary) -> str:
    """A build's summary, for its Prefect artifact: what it published, how, the counts, quality and timings."""
    lines = [f"# {summary.job}: `{summary.index_name}` {summary.version}", "", f"`{summary.snapshot}`", "",
             summary.delta, ""]
    if promotion := summary.promotion:
        outcome = "promoted to this version" if promotion.promoted else f"stays at {promotion.live}: {promotion.reason}"
        notes = "".join(f" (gate: {note})" for note in (promotion.gate.notes if promotion.gate else []))
        lines += [f"Alias `{promotion.alias}`: {outcome}{notes}", ""]
    for note in summary.training_notes():
        lines += [f"Training of {note}", ""]
    tables = [counts_table(summary.counts)]
    if modes := summary.evaluation.get("modes"):
        tables.append(quality_table("quality per search mode" if summary.published else
                                    f"quality of version {summary.version}, measured when it was published", modes))
        if note := coverage_note(summary.evaluation):
            lines += [f"Golden set: {note}", ""]
    else:
        lines += [f"Quality: not measured ({NOT_EVALUATED})", ""]
    tables.append(timings_table(summary.timings_s))
    return "\n".join([*lines, *(t.markdown() + "\n" for t in tables)])  # each after a blank line: its own block


def _flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        if key == "histograms":  # drawn by plots.blue_green_png, not tabulated
            continue
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cell(v: object, signed: bool = False) -> str:
    if not is_number(v):
        return "-"
    if isinstance(v, int | np.integer):
        return f"{v:+d}" if signed else str(v)
    return f"{v:+.4g}" if signed else f"{v:.4g}"  # significant digits: variances are ~1e-3


_SECTIONS = (("metrics", "Golden-set metrics"), ("scores", "Golden-query scores"),
             ("relevance", "Relevant vs non-relevant scores"), ("vectors", "Vector geometry"))


def drift_markdown(comparison: Mapping) -> str:
    """`compare`'s result as markdown: one blue | green | delta table per section, the top-k overlap and
    the notes; for a Prefect markdown artifact or a report file."""
    blue, green, delta = comparison["blue"], comparison["green"], comparison["delta"]

    def label(s: Mapping) -> str:
        return f"`{s.get('model', '?')}`" + (f" ({s['version']})" if s.get("version") else "")

    lines = [f"# Drift: blue {label(blue)} vs green {label(green)}", ""]
    overlap = comparison.get("topk_overlap")
    if overlap:
        lines += [f"Top-{overlap['k']} overlap over {overlap['queries']} golden queries: mean "
                  f"**{overlap['mean']:.4f}** (p10 {overlap['p10']:.4f}, p50 {overlap['p50']:.4f}); identical "
                  f"lists {overlap['identical']:.1%}, same top-1 {overlap['same_top1']:.1%}.", ""]
    for key, title in _SECTIONS:
        b, g = _flatten(blue.get(key, {})), _flatten(green.get(key, {}))
        d = _flatten(delta.get(key, {}))
        names = [n for n in dict.fromkeys([*b, *g]) if is_number(b.get(n)) or is_number(g.get(n))]
        if not names:
            continue
        lines += [f"## {title}", "", "| figure | blue | green | delta |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {_cell(b.get(n))} | {_cell(g.get(n))} | {_cell(d.get(n), signed=True)} |" for n in names]
        lines.append("")
    if comparison.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in comparison["notes"]] + [""]
    return "\n".join(lines)


def _metrics_rows(mode: str, blue: dict, green: dict) -> list[str]:
    """A mode's golden-set metrics, blue against green, as a markdown section."""
    lines = [f"## Golden-set metrics, mode `{mode}`", "", "| metric | blue | green | delta |", "|---|---:|---:|---:|"]
    b, g = blue["modes"].get(mode, {}), green["modes"].get(mode, {})
    for m in METRICS:
        if m in b or m in g:
            delta = g[m] - b[m] if m in b and m in g else None
            lines.append(f"| {m} | {num(b.get(m))} | {num(g.get(m))} | {'-' if delta is None else f'{delta:+.4f}'} |")
    return lines


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
             *_metrics_rows(gate["mode"], blue, green)]
    if hybrid := report.get("hybrid_mode"):  # with bm25 on both sides: blue against green on hybrid search too
        lines += ["", *_metrics_rows(hybrid, blue, green)]
    common = [mode for mode in green["modes"] if mode in blue["modes"]]
    if len(common) > 1:
        lines += ["", "## nDCG@10 per search mode", "", "| mode | blue | green | delta |", "|---|---:|---:|---:|"]
        for mode in common:
            bv, gv = blue["modes"][mode].get("ndcg@10"), green["modes"][mode].get("ndcg@10")
            delta = "-" if bv is None or gv is None else f"{gv - bv:+.4f}"
            lines.append(f"| {mode} | {num(bv)} | {num(gv)} | {delta} |")
    # The drift tables without their golden-set metrics (tabulated above), headings one level down.
    drift = drift_markdown({**report["drift"], **{side: {k: v for k, v in report["drift"][side].items()
                                                        if k != "metrics"} for side in ("blue", "green", "delta")}})
    lines += ["", *_one_level_down(drift)]
    return "\n".join(lines)


def _one_level_down(markdown: str) -> list[str]:
    """A markdown document's lines with its headings one level down, to nest it in another."""
    return ["#" + line if line.startswith("#") else line for line in markdown.splitlines()]


def monitor_markdown(result: MonitorResult) -> str:
    verdict = "**PASSED**" if result.passed else "**FAILED**: " + "; ".join(result.violations)
    lines = [f"# Monitoring `{result.index_name}` alias `{result.alias}`: version {result.version}", "",
             verdict, "",
             f"Model `{result.model}`, search mode `{result.mode}`, golden set `{result.golden_set['queries']}` "
             f"({result.golden_set['judged_queries']} judged queries). Baseline: {result.baseline_from}.", "",
             "| metric | baseline | current | drop | max drop | status |", "|---|---:|---:|---:|---:|---|"]
    for r in result.rows:
        lines.append(f"| {r.metric} | {num(r.baseline)} | {num(r.current)} | {num(r.drop)} | "
                     f"{r.max_drop:.4f} | {'ok' if r.ok else 'DROPPED'} |")
    if result.drift_rows:
        lines += ["", "| drift statistic | at publish | now | change | max change | status |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {c.statistic} | {figure(c.reference)} | {figure(c.current)} | {figure(c.change)} | "
                  f"{c.limit} | {'ok' if c.ok else 'MOVED'} |" for c in result.drift_rows]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    if result.drift_vs_publish:
        lines += ["", "Drift since publish time: blue is what the build recorded, green this run.", ""]
        lines += _one_level_down(drift_markdown(result.drift_vs_publish))
    if result.drift_vs_previous:
        prev = result.previous
        lines += ["", f"Drift since the previous run ({prev['checked_at']}, version {prev['version']}): blue is "
                  "that run, green this one.", ""]
        lines += _one_level_down(drift_markdown(result.drift_vs_previous))
    return "\n".join(lines)
