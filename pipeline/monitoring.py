"""The monitoring job's logic: the live snapshot measured now against its baseline, and the results it keeps.

Baseline: the metrics recorded in the snapshot's manifest when it was published (its golden-set evaluation,
same search mode). A fixed reference per version: comparing each run with the previous run's result
instead would let quality decay unnoticed in steps smaller than the threshold. The previous run's stored
result is still read, for the drift of the score distributions and vector geometry since then.

    monitoring/<index>/<alias>/<checked_at>.json     one result per run, sortable by time
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pipeline.drift import check_thresholds, compare, drift_markdown
from pipeline.errors import SnapshotError
from pipeline.evaluation import METRICS
from pipeline.measure import GoldenSet, Measurement
from pipeline.storage import Storage


def baseline_of(manifest: dict, mode: str) -> dict[str, float]:
    """The golden-set metrics of `mode` recorded at publish time."""
    modes = (manifest.get("evaluation") or {}).get("modes") or {}
    if mode not in modes:
        raise SnapshotError(f"{manifest['index_name']} {manifest['version']}: no metrics for search mode {mode!r} "
                            f"were recorded at publish time (recorded: {sorted(modes) or 'none'}); the monitor's "
                            "baseline is the manifest's evaluation")
    return {m: v for m, v in modes[mode].items() if m in METRICS}


def check_metrics(current: dict[str, float], baseline: dict[str, float], max_drop: dict[str, float]
                  ) -> tuple[list[dict], list[str]]:
    """One row per watched metric (baseline, current, drop, allowed, ok) and the violations as sentences."""
    rows = []
    for name, allowed in max_drop.items():
        base, now = baseline.get(name), current.get(name)
        rows.append({"metric": name, "baseline": base, "current": now,
                     "drop": None if base is None or now is None else round(base - now, 6), "max_drop": allowed,
                     "ok": not check_thresholds(current, baseline, {name: allowed})})
    return rows, check_thresholds(current, baseline, max_drop)


def results_prefix(index: str, alias: str) -> str:
    return f"monitoring/{index}/{alias}"


def previous_result(storage: Storage, index: str, alias: str) -> dict | None:
    names = [n for n in storage.list(results_prefix(index, alias)) if n.endswith(".json")]
    return json.loads(storage.read_bytes(f"{results_prefix(index, alias)}/{names[-1]}")) if names else None


def monitor_result(alias: str, manifest: dict, golden: GoldenSet, measured: Measurement, max_drop: dict[str, float],
                   previous: dict | None, now: datetime | None = None) -> dict:
    """The run's verdict and evidence, as JSON (stored, returned by the flow, shown by the CLI)."""
    baseline = baseline_of(manifest, measured.mode)
    rows, violations = check_metrics(measured.metrics, baseline, max_drop)
    recorded = manifest.get("evaluation") or {}
    notes = []
    if (recorded.get("queries"), recorded.get("qrels")) != (golden.queries_url, golden.qrels_url):
        notes.append(f"the baseline was measured on {recorded.get('queries')} / {recorded.get('qrels')}, this run on "
                     f"{golden.queries_url} / {golden.qrels_url}: a change may come from the golden set")
    drift = None
    if previous is not None:
        drift = compare(previous["stats"], measured.stats, runs=None)
        if previous.get("version") != measured.version:
            notes.append(f"the previous run checked version {previous.get('version')}; the alias now serves "
                         f"{measured.version}")
    return {"index_name": measured.index_name, "alias": alias, "version": measured.version, "model": measured.model,
            "mode": measured.mode, "checked_at": (now or datetime.now(UTC)).isoformat(),
            "baseline_from": f"manifest of {measured.version} (published {manifest.get('created_at')})",
            "golden_set": {"queries": golden.queries_url, "qrels": golden.qrels_url,
                           "judged_queries": len(golden.qrels)},
            "passed": not violations, "rows": rows, "violations": violations, "notes": notes,
            "modes": measured.modes, "stats": measured.stats,
            "previous": {k: previous.get(k) for k in ("checked_at", "version", "passed")} if previous else None,
            "drift_vs_previous": drift}


def result_key(result: dict) -> str:
    stamp = datetime.fromisoformat(result["checked_at"]).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{results_prefix(result['index_name'], result['alias'])}/{stamp}.json"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def monitor_markdown(result: dict) -> str:
    verdict = "**PASSED**" if result["passed"] else "**FAILED**: " + "; ".join(result["violations"])
    lines = [f"# Monitoring `{result['index_name']}` alias `{result['alias']}`: version {result['version']}", "",
             verdict, "",
             f"Model `{result['model']}`, search mode `{result['mode']}`, golden set "
             f"`{result['golden_set']['queries']}` "
             f"({result['golden_set']['judged_queries']} judged queries). Baseline: {result['baseline_from']}.", "",
             "| metric | baseline | current | drop | max drop | status |", "|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['metric']} | {_num(r['baseline'])} | {_num(r['current'])} | {_num(r['drop'])} | "
                     f"{r['max_drop']:.4f} | {'ok' if r['ok'] else 'DROPPED'} |")
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if result["drift_vs_previous"]:
        prev = result["previous"]
        lines += ["", f"Drift since the previous run ({prev['checked_at']}, version {prev['version']}): blue is "
                  "that run, green this one.", ""]
        lines += ["#" + x if x.startswith("#") else x for x in drift_markdown(result["drift_vs_previous"]).splitlines()]
    return "\n".join(lines)
