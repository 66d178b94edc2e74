"""SLO attainment per model and adapter: which requests met their latency targets, and `GET /v1/slo`'s report.

`judge(trace, targets)` decides, once per finished request, whether it counts for the SLO and whether it met
every target (config `slo:`; definitions in deploy/METRICS.md). `SLOTracker` keeps per (model, adapter):
- per-second counts (requests, met, misses per target) over the long window: exact attainment and burn rate;
- the latest `max_samples` latencies: rolling percentiles (over at most that many requests).
The report covers a short and a long window. Burn rate = (missed / requests) / (1 - objective): 1 spends the
error budget exactly over the SLO period, 14.4 spends a 30-day budget in about two days.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from vlmgate.serve.config import SLOConfig, SLOTargets
from vlmgate.serve.lifecycle import RequestTrace

TARGETS = ("ttft", "tpot", "image_preprocess", "e2e")
MISS_KINDS = (*TARGETS, "error")
LATENCIES = ("ttft", "tpot", "e2e", "queue", "image_preprocess")
QUANTILES = (0.5, 0.9, 0.95, 0.99)
_CLIENT_DISCONNECTED = 499


@dataclass(slots=True)
class Verdict:
    counted: bool  # does the request count for the SLO at all
    misses: tuple[str, ...] = ()  # which of MISS_KINDS it missed

    @property
    def met(self) -> bool | None:
        return None if not self.counted else not self.misses


NOT_COUNTED = Verdict(False)


def judge(trace: RequestTrace, targets: SLOTargets) -> Verdict:
    """Did this request meet every target? Client errors (4xx other than 429) do not count: the request was at
    fault, not the service. 429 (overload) and 5xx count as missed ("error"). A client that disconnected counts
    only if a target was already missed when it left (it may have left because of it)."""
    status = trace.status
    if status != 200 and status != 429 and status < 500 and status != _CLIENT_DISCONNECTED:
        return NOT_COUNTED
    if status == 429 or status >= 500:
        return Verdict(True, ("error",))
    misses = []
    ttft_s = trace.ttft_s
    if trace.stream:
        if targets.ttft_ms is not None:
            waited = ttft_s if ttft_s is not None else (trace.e2e_s or 0.0)
            if waited * 1000 > targets.ttft_ms:
                misses.append("ttft")
        tpot_s = trace.tpot_s
        if targets.tpot_ms is not None and tpot_s is not None and tpot_s * 1000 > targets.tpot_ms:
            misses.append("tpot")
    image_ms = trace.image_preprocess_s * 1000 if trace.image_count else 0.0
    if targets.image_preprocess_ms is not None and image_ms > targets.image_preprocess_ms:
        misses.append("image_preprocess")
    e2e_ms = (trace.e2e_s or 0.0) * 1000
    e2e_target = targets.e2e_ms
    if e2e_target is None and not trace.stream and status == 200 and targets.ttft_ms is not None:
        # Non-streaming: no first token to time; allow what a streamed answer of the same length would take.
        e2e_target = targets.ttft_ms + (targets.tpot_ms or 0.0) * max((trace.completion_tokens or 1) - 1, 0)
    if e2e_target is not None and e2e_ms > e2e_target:
        misses.append("e2e")
    if status == _CLIENT_DISCONNECTED and not misses:
        return NOT_COUNTED
    return Verdict(True, tuple(misses))


class _Window:
    """Per (model, adapter): per-second counts over the long window and the latest latency samples."""

    __slots__ = ("seconds", "samples")

    def __init__(self, max_samples: int) -> None:
        # [second, requests, met, ttft, tpot, image_preprocess, e2e, error] per second with traffic
        self.seconds: deque[list[int]] = deque()
        # (end time, ttft, tpot, e2e, queue, image_preprocess), seconds or None
        self.samples: deque[tuple[float, ...]] = deque(maxlen=max_samples)


class SLOTracker:
    """Rolling attainment, burn rate and percentiles per (model, adapter label); fed by the request monitor."""

    def __init__(self, config: SLOConfig) -> None:
        self.config = config
        self._windows: dict[tuple[str, str], _Window] = {}
        self._targets: dict[tuple[str, str], SLOTargets] = {}

    def targets_for(self, model: str, adapter: str) -> SLOTargets:
        key = (model, adapter)
        targets = self._targets.get(key)
        if targets is None:
            targets = self.config.targets_for(model, adapter)
            if len(self._targets) < 4096:  # adapter names are unbounded; the cache is not
                self._targets[key] = targets
        return targets

    def record(self, model: str, adapter_label: str, trace: RequestTrace, verdict: Verdict) -> None:
        window = self._windows.get((model, adapter_label))
        if window is None:
            window = self._windows[(model, adapter_label)] = _Window(self.config.max_samples)
        end = trace.end if trace.end is not None else time.perf_counter()
        if verdict.counted:
            second = int(end)
            seconds = window.seconds
            if not seconds or seconds[-1][0] != second:
                seconds.append([second, 0, 0, 0, 0, 0, 0, 0])
                horizon = second - self.config.long_window_s
                while seconds and seconds[0][0] < horizon:
                    seconds.popleft()
            row = seconds[-1]
            row[1] += 1
            if not verdict.misses:
                row[2] += 1
            for kind in verdict.misses:
                row[3 + MISS_KINDS.index(kind)] += 1
        if trace.status == 200:
            window.samples.append(
                (end, trace.ttft_s if trace.stream else None, trace.tpot_s if trace.stream else None, trace.e2e_s,
                 trace.queue_s, trace.image_preprocess_s if trace.image_count else None)
            )  # fmt: skip

    def report(self, model: str | None = None, adapter: str | None = None, now: float | None = None) -> dict[str, Any]:
        """The /v1/slo body: per (model, adapter), for the short and the long window."""
        now = time.perf_counter() if now is None else now
        windows = {"short": self.config.short_window_s, "long": self.config.long_window_s}
        series = []
        for (m, a), window in sorted(self._windows.items()):
            if (model is not None and m != model) or (adapter is not None and a != adapter):
                continue
            targets = self.targets_for(m, a)
            entry: dict[str, Any] = {"model": m, "adapter": a, "targets": targets.model_dump(), "windows": {}}
            for name, span_s in windows.items():
                entry["windows"][name] = _summarize(window, now - span_s, span_s, targets.objective)
            series.append(entry)
        return {
            "object": "slo_report",
            "windows_s": windows,
            "definitions": "deploy/METRICS.md#slo",
            "series": series,
        }


def _summarize(window: _Window, since: float, span_s: float, objective: float) -> dict[str, Any]:
    totals = [0] * 7
    first_second = int(since)
    for row in reversed(window.seconds):
        if row[0] < first_second:
            break
        for i in range(7):
            totals[i] += row[i + 1]
    requests, met = totals[0], totals[1]
    missed = requests - met
    attainment = met / requests if requests else None
    burn = (missed / requests) / (1 - objective) if requests else None
    samples = [s for s in window.samples if s[0] >= since]
    latency = {}
    for i, name in enumerate(LATENCIES, start=1):
        values = sorted(s[i] for s in samples if s[i] is not None)
        latency[f"{name}_ms"] = (
            {f"p{round(q * 100)}": round(_quantile(values, q) * 1000, 3) for q in QUANTILES} | {"count": len(values)}
            if values
            else None
        )
    return {
        "window_s": span_s,
        "requests": requests,
        "met": met,
        "missed": missed,
        "misses_by_target": dict(zip(MISS_KINDS, totals[2:], strict=True)),
        "attainment": attainment,
        "objective": objective,
        "meets_objective": None if attainment is None else attainment >= objective,
        "error_budget_burn_rate": burn,
        "latency": latency,
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)
