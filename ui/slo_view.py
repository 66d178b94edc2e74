"""Turn the gateway's `GET /v1/slo` report into a table and plots for the admin tab.

The report (serve/slo.py; definitions in deploy/METRICS.md) has one series per (model, adapter), each with a
short and a long window holding request counts, attainment, error-budget burn rate and latency percentiles in
ms. The plots show the short window's percentiles against the targets, attainment against the objective, and
the burn rate of both windows (1 = spending the error budget exactly). Missing fields read as "no data yet":
the demo must keep working while the gateway's report evolves.

Run as: python -m vlmgate.ui.slo_view http://127.0.0.1:8000 slo.png    (renders the current status once)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

METRICS = ("ttft", "tpot", "e2e")
METRIC_LABELS = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end"}
PERCENTILES = ("p50", "p90", "p95", "p99")
LATENCY_WINDOW = "short"  # the live view: what happened in the last few minutes
TABLE_HEADERS = [
    "model / adapter",
    "requests (short)",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "TPOT p50 ms",
    "TPOT p95 ms",
    "e2e p50 ms",
    "e2e p95 ms",
    "attainment % (short)",
    "objective %",
    "burn short",
    "burn long",
]


@dataclass
class SloSeries:
    """What the UI shows for one model or adapter."""

    label: str
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> percentile -> ms
    targets_ms: dict[str, float] = field(default_factory=dict)  # metric -> target
    requests: int | None = None
    attainment: float | None = None  # share in [0, 1] of counted requests that met every target
    objective: float | None = None
    burn_rates: dict[str, float] = field(default_factory=dict)  # window name -> burn rate


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_slo(report: Any) -> list[SloSeries]:
    """The series of a `/v1/slo` body, in the gateway's order; malformed parts are skipped, never raised."""
    out = []
    for entry in _dict(report).get("series") or []:
        if not isinstance(entry, dict):
            continue
        model, adapter = str(entry.get("model") or "?"), entry.get("adapter") or ""
        windows = _dict(entry.get("windows"))
        live = _dict(windows.get(LATENCY_WINDOW))
        targets = _dict(entry.get("targets"))
        series = SloSeries(label=f"{model} / {adapter}" if adapter else model)
        for metric in METRICS:
            values = {
                p: v
                for p in PERCENTILES
                if (v := _number(_dict(_dict(live.get("latency")).get(f"{metric}_ms")).get(p))) is not None
            }
            if values:
                series.latency_ms[metric] = values
            target = _number(targets.get(f"{metric}_ms"))
            if target is not None:
                series.targets_ms[metric] = target
        requests = _number(live.get("requests"))
        series.requests = None if requests is None else int(requests)
        series.attainment = _number(live.get("attainment"))
        series.objective = _number(live.get("objective")) or _number(targets.get("objective"))
        for name, window in windows.items():
            burn = _number(_dict(window).get("error_budget_burn_rate"))
            if burn is not None:
                series.burn_rates[str(name)] = burn
        out.append(series)
    return out


def table_rows(series: list[SloSeries]) -> list[list[Any]]:
    def ms(s: SloSeries, metric: str, pct: str) -> float | None:
        value = s.latency_ms.get(metric, {}).get(pct)
        return None if value is None else round(value, 1)

    def pct(share: float | None) -> float | None:
        return None if share is None else round(100 * share, 2)

    def burn(s: SloSeries, window: str) -> float | None:
        value = s.burn_rates.get(window)
        return None if value is None else round(value, 2)

    return [
        [
            s.label,
            s.requests,
            ms(s, "ttft", "p50"),
            ms(s, "ttft", "p95"),
            ms(s, "tpot", "p50"),
            ms(s, "tpot", "p95"),
            ms(s, "e2e", "p50"),
            ms(s, "e2e", "p95"),
            pct(s.attainment),
            pct(s.objective),
            burn(s, "short"),
            burn(s, "long"),
        ]
        for s in series
    ]


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])


def _group_ticks(ax: Any, labels: list[str], width: float, groups: int) -> None:
    ax.set_xticks([i + width * (groups - 1) / 2 for i in range(len(labels))], labels, fontsize=8)


def latency_figure(series: list[SloSeries]) -> Figure:
    """One panel per metric: percentile bars per model/adapter, the target as a dashed line."""
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(METRICS)), METRICS, strict=True):
        ax.set_title(f"{METRIC_LABELS[metric]} ({LATENCY_WINDOW} window)", fontsize=10)
        ax.set_ylabel("ms")
        present = [s for s in series if metric in s.latency_ms]
        if not present:
            _no_data(ax)
            continue
        pcts = [p for p in PERCENTILES if any(p in s.latency_ms[metric] for s in present)]
        width = 0.8 / len(pcts)
        for j, p in enumerate(pcts):
            ax.bar(
                [i + j * width for i in range(len(present))],
                [s.latency_ms[metric].get(p, 0.0) for s in present],
                width,
                label=p,
            )
        targets = {s.targets_ms[metric] for s in present if metric in s.targets_ms}
        for k, target in enumerate(sorted(targets)):
            ax.axhline(target, color="red", linestyle="--", linewidth=1, label="target" if k == 0 else None)
        _group_ticks(ax, [s.label for s in present], width, len(pcts))
        ax.legend(fontsize=7)
    return fig


def attainment_figure(series: list[SloSeries]) -> Figure:
    """Left: share of requests meeting every target vs the objective. Right: burn rate per window."""
    fig = Figure(figsize=(11, 3.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.set_title(f"SLO attainment ({LATENCY_WINDOW} window)", fontsize=10)
    left.set_ylabel("% of requests meeting every target")
    left.set_ylim(0, 105)
    with_attainment = [s for s in series if s.attainment is not None]
    if with_attainment:
        colors = [
            "tab:green" if s.objective is None or (s.attainment or 0) >= s.objective else "tab:red"
            for s in with_attainment
        ]
        bars = left.bar(
            [s.label for s in with_attainment], [100 * (s.attainment or 0) for s in with_attainment], color=colors
        )
        left.bar_label(bars, fmt="%.1f", fontsize=8)
        objectives = {s.objective for s in with_attainment if s.objective is not None}
        for k, objective in enumerate(sorted(objectives)):
            left.axhline(
                100 * objective, color="black", linestyle="--", linewidth=1, label="objective" if k == 0 else None
            )
        if objectives:
            left.legend(fontsize=7, loc="lower right")
    else:
        _no_data(left)
    right.set_title("error-budget burn rate (1 = on budget)", fontsize=10)
    with_burn = [s for s in series if s.burn_rates]
    if with_burn:
        windows = sorted({w for s in with_burn for w in s.burn_rates}, key=lambda w: (w != "short", w))
        width = 0.8 / len(windows)
        for j, window in enumerate(windows):
            right.bar(
                [i + j * width for i in range(len(with_burn))],
                [s.burn_rates.get(window, 0.0) for s in with_burn],
                width,
                label=f"{window} window",
            )
        right.axhline(1.0, color="red", linestyle="--", linewidth=1, label="budget")
        _group_ticks(right, [s.label for s in with_burn], width, len(windows))
        right.legend(fontsize=7)
    else:
        _no_data(right)
    return fig


if __name__ == "__main__":
    import asyncio
    import sys

    from vlmgate.ui.client import GatewayClient

    parsed = parse_slo(asyncio.run(GatewayClient(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000").slo()))
    for row in table_rows(parsed):
        print(row)
    if len(sys.argv) > 2:
        latency_figure(parsed).savefig(sys.argv[2])
