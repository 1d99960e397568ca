"""The monitoring job's logic: the live snapshot measured now against its baseline, and the results it keeps
(one JSON document per run, under layout.monitoring_prefix, sortable by time).

Baseline: the metrics recorded in the snapshot's manifest when it was published (its golden-set evaluation,
same search mode). A fixed reference per version: comparing each run with the previous run's result
instead would let quality decay unnoticed in steps smaller than the threshold. The previous run's stored
result is still read, for the drift of the score distributions and vector geometry since then, and the statistics
the build recorded (the manifest's evaluation.drift) for the drift since publish time, which `max_drift` bounds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pipeline.errors import SnapshotError
from pipeline.quality.drift import check_thresholds, compare
from pipeline.quality.golden import GoldenSet
from pipeline.quality.measure import Measurement
from pipeline.quality.metrics import METRICS
from pipeline.snapshots.gate import DriftCheck, check_drift
from pipeline.storage.backend import Storage
from pipeline.storage.layout import monitoring_prefix


def baseline_of(manifest: dict, mode: str) -> dict[str, float]:
    """The golden-set metrics of `mode` recorded at publish time."""
    modes = (manifest.get("evaluation") or {}).get("modes") or {}
    if mode not in modes:
        raise SnapshotError(f"{manifest['index_name']} {manifest['version']}: no metrics for search mode {mode!r} "
                            f"were recorded at publish time (recorded: {sorted(modes) or 'none'}); the monitor's "
                            "baseline is the manifest's evaluation")
    return {m: v for m, v in modes[mode].items() if m in METRICS}


@dataclass(frozen=True)
class MetricCheck:
    """One watched metric: its baseline, its value now, the drop, the largest allowed, and the verdict."""

    metric: str
    baseline: float | None
    current: float | None
    drop: float | None
    max_drop: float
    ok: bool


def check_metrics(current: dict[str, float], baseline: dict[str, float], max_drop: dict[str, float]
                  ) -> tuple[list[MetricCheck], list[str]]:
    """One check per watched metric and the violations as sentences."""
    rows = []
    for name, allowed in max_drop.items():
        base, now = baseline.get(name), current.get(name)
        rows.append(MetricCheck(name, base, now, None if base is None or now is None else round(base - now, 6),
                                allowed, not check_thresholds(current, baseline, {name: allowed})))
    return rows, check_thresholds(current, baseline, max_drop)


@dataclass(frozen=True)
class MonitorResult:
    """A monitoring run's verdict and evidence; `to_dict` is the JSON stored per run, returned and printed."""

    index_name: str
    alias: str
    version: str
    model: str
    mode: str
    checked_at: str
    baseline_from: str
    golden_set: dict
    passed: bool
    rows: list[MetricCheck]
    violations: list[str]
    notes: list[str]
    modes: dict
    stats: dict
    previous: dict | None  # the previous run's checked_at, version and verdict
    drift_vs_previous: dict | None
    drift_vs_publish: dict | None  # against the statistics the build recorded (evaluation.drift), same mode
    drift_rows: list[DriftCheck]  # monitor.max_drift's statistics, now against publish time

    def to_dict(self) -> dict:
        return asdict(self) | {"drift_rows": [c.to_dict() for c in self.drift_rows], "stored_at": self.key}

    @property
    def key(self) -> str:
        """Where the result is stored (one object per run, sortable by time)."""
        stamp = datetime.fromisoformat(self.checked_at).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{monitoring_prefix(self.index_name, self.alias)}/{stamp}.json"


def previous_result(storage: Storage, index: str, alias: str) -> dict | None:
    """The last stored result's document, or None."""
    names = [n for n in storage.list(monitoring_prefix(index, alias)) if n.endswith(".json")]
    return json.loads(storage.read_bytes(f"{monitoring_prefix(index, alias)}/{names[-1]}")) if names else None


def monitor_result(alias: str, manifest: dict, golden: GoldenSet, measured: Measurement, max_drop: dict[str, float],
                   previous: dict | None, now: datetime | None = None, max_drift: dict[str, float | str] | None = None
                   ) -> MonitorResult:
    """The run's verdict: the measured metrics against the manifest's, and the drift statistics against those
    recorded at publish time (`max_drift`), with notes and drift since last time."""
    baseline = baseline_of(manifest, measured.mode)
    rows, violations = check_metrics(measured.metrics, baseline, max_drop)
    recorded = manifest.get("evaluation") or {}
    notes = []
    if (recorded.get("queries"), recorded.get("qrels")) != (golden.queries_url, golden.qrels_url):
        notes.append(f"the baseline was measured on {recorded.get('queries')} / {recorded.get('qrels')}, this run on "
                     f"{golden.queries_url} / {golden.qrels_url}: a change may come from the golden set")
    elif recorded.get("golden_sha256") not in (None, golden.digest):  # the same files, edited since
        notes.append(f"the golden set's files ({golden.queries_url} / {golden.qrels_url}) changed since the baseline "
                     "was measured: a change may come from the golden set")
    drift = None
    if previous is not None:
        if previous.get("mode") == measured.mode:  # the scores of another search mode are not this one's drift
            drift = compare(previous["stats"], measured.stats, runs=None)
        else:
            notes.append(f"the previous run measured search mode {previous.get('mode')!r}: no drift since then")
        if previous.get("version") != measured.version:
            notes.append(f"the previous run checked version {previous.get('version')}; the alias now serves "
                         f"{measured.version}")
    at_publish = recorded.get("drift") or {}
    since_publish = compare({k: v for k, v in at_publish.items() if k != "mode"}, measured.stats, runs=None) \
        if at_publish.get("mode") == measured.mode else None
    drift_rows = []
    if max_drift and since_publish is None:
        notes.append(f"monitor.max_drift not checked: the manifest recorded no drift statistics of mode "
                     f"{measured.mode!r} at publish time" + (f" (it has {at_publish['mode']!r})" if at_publish else ""))
    elif max_drift:
        drift_rows = check_drift(at_publish, measured.stats, max_drift)
        violations += [c.problem("publish time", "this run") for c in drift_rows if not c.ok]
    checked_at = (now or datetime.now(UTC)).isoformat()
    return MonitorResult(
        measured.index_name, alias, measured.version, measured.model, measured.mode, checked_at,
        f"manifest of {measured.version} (published {manifest.get('created_at')})",
        {"queries": golden.queries_url, "qrels": golden.qrels_url, "judged_queries": len(golden.qrels)},
        not violations, rows, violations, notes, measured.modes, measured.stats,
        {k: previous.get(k) for k in ("checked_at", "version", "passed")} if previous else None, drift, since_publish,
        drift_rows)
