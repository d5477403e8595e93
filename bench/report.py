"""What the benchmark prints and saves: the metric table, the floors, the JSON record.

``METRICS`` is the one list of reported figures: which workload produces each, its label,
which direction is better and, for the three the project committed to, the floor on the
candidate/stunnel4 ratio.  A program's figure is its median over rounds.  The ratio is
*paired*: the median over rounds of (candidate / stunnel4 in that round).  The two runs of a
round are adjacent in time, so drift of a shared machine mostly cancels in their quotient,
which it does not in a quotient of medians.  ``spread%`` is (max - min) / median of those
per-round ratios: how far to trust the row.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Better = Literal["higher", "lower"]

# results[program label][workload] = one entry per round: numbers, or an error message.
RoundResult = dict[str, float] | str
Results = dict[str, dict[str, list[RoundResult]]]


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table."""

    workload: str
    key: str
    label: str
    better: Better
    floor: float | None = None  # the candidate/baseline ratio may not be worse than this


METRICS = (
    Metric("bulk", "gbps", "bulk Gbit/s (1 stream)", "higher"),
    Metric("bulk", "cpu_s_per_gb", "bulk CPU-s per GB", "lower", floor=1.5),
    Metric("bulk_reverse", "gbps", "bulk reverse Gbit/s", "higher"),
    Metric("bulk_reverse", "cpu_s_per_gb", "bulk reverse CPU-s per GB", "lower"),
    Metric("handshakes", "per_s", "handshakes/s", "higher"),
    Metric("handshakes", "cpu_ms", "server CPU ms per handshake", "lower", floor=1.0),
    Metric("idle_memory", "kb_per_conn", "RSS KB per idle connection", "lower", floor=0.5),
    Metric("idle_memory", "start_mb", "RSS MB before connections", "lower"),
    Metric("short", "per_s", "short conns/s (resumed TLS)", "higher"),
    Metric("short", "cpu_ms", "server CPU ms per short conn", "lower"),
    Metric("short", "resumed_pct", "short conns resumed %", "higher"),
    Metric("keepalive", "median_us", "keep-alive round trip median us", "lower"),
    Metric("keepalive", "p99_us", "keep-alive round trip p99 us", "lower"),
    Metric("keepalive", "cpu_us", "server CPU us per round trip", "lower"),
)

NOISE_NOTE = (
    "Throughput rows (Gbit/s, per second, latency) share 2 cores with the load generators "
    "and are noisy;\nCPU per unit and memory per connection are the steady figures."
)


def _values(rounds: list[RoundResult], key: str) -> list[float]:
    return [r[key] for r in rounds if isinstance(r, dict) and key in r]


def median(results: Results, program: str, metric: Metric) -> float | None:
    values = _values(results.get(program, {}).get(metric.workload, []), metric.key)
    return statistics.median(values) if values else None


def paired_ratios(results: Results, candidate: str, baseline: str, metric: Metric) -> list[float]:
    """candidate / baseline for each round in which both produced the metric."""
    ratios = []
    pairs = zip(
        results.get(candidate, {}).get(metric.workload, []),
        results.get(baseline, {}).get(metric.workload, []),
        strict=False,  # a run stopped by its deadline may end between the two
    )
    for cand, base in pairs:
        if not (isinstance(cand, dict) and isinstance(base, dict)):
            continue
        if metric.key in cand and base.get(metric.key):
            ratios.append(cand[metric.key] / base[metric.key])
    return ratios


def ratio(results: Results, candidate: str, baseline: str, metric: Metric) -> float | None:
    ratios = paired_ratios(results, candidate, baseline, metric)
    return statistics.median(ratios) if ratios else None


def spread_pct(results: Results, candidate: str, baseline: str, metric: Metric) -> float | None:
    ratios = paired_ratios(results, candidate, baseline, metric)
    if len(ratios) < 2:
        return None
    return 100 * (max(ratios) - min(ratios)) / statistics.median(ratios)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(results: Results, program: str, metric: Metric) -> str:
    rounds = results.get(program, {}).get(metric.workload, [])
    value = median(results, program, metric)
    if value is None and any(isinstance(r, str) for r in rounds):
        return "error"
    return _fmt(value)


def table(results: Results, candidate: str, baseline: str, workloads: list[str]) -> str:
    """The metric table, one row per metric of the workloads that were run."""
    rows = [("metric", candidate, baseline, "ratio", "better", "spread%")]
    for metric in METRICS:
        if metric.workload not in workloads:
            continue
        spread = spread_pct(results, candidate, baseline, metric)
        rows.append(
            (
                metric.label,
                _cell(results, candidate, metric),
                _cell(results, baseline, metric),
                _fmt(ratio(results, candidate, baseline, metric)),
                metric.better,
                "-" if spread is None else f"{spread:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width + 3) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append(first + "".join(rest))
    return "\n".join(lines)


def floors(
    results: Results, candidate: str, baseline: str, workloads: list[str]
) -> list[tuple[Metric, float | None, str]]:
    """(metric, ratio, PASS / FAIL / n/a) for each committed floor among ``workloads``."""
    verdicts = []
    for metric in METRICS:
        if metric.floor is None or metric.workload not in workloads:
            continue
        value = ratio(results, candidate, baseline, metric)
        if value is None:
            verdict = "n/a"
        elif metric.better == "lower":
            verdict = "PASS" if value <= metric.floor else "FAIL"
        else:
            verdict = "PASS" if value >= metric.floor else "FAIL"
        verdicts.append((metric, value, verdict))
    return verdicts


def floor_lines(verdicts: list[tuple[Metric, float | None, str]]) -> str:
    lines = []
    for metric, value, verdict in verdicts:
        bound = "<=" if metric.better == "lower" else ">="
        lines.append(
            f"{verdict:4}  {metric.label}: ratio {_fmt(value)} (floor {bound} {metric.floor:g}x)"
        )
    return "\n".join(lines)


def summary(results: Results, candidate: str, baseline: str) -> dict[str, object]:
    """Medians and ratios per metric, for the JSON record."""
    rows: dict[str, object] = {}
    for metric in METRICS:
        rows[f"{metric.workload}.{metric.key}"] = {
            "label": metric.label,
            "better": metric.better,
            "floor": metric.floor,
            candidate: median(results, candidate, metric),
            baseline: median(results, baseline, metric),
            "ratio": ratio(results, candidate, baseline, metric),
            "round_ratios": paired_ratios(results, candidate, baseline, metric),
        }
    return rows


def write_json(path: Path, record: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
