"""The metric store: bucket semantics, bounded adapter labels, registry hooks, and docs for every metric."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vlmgate.serve.admission import Admission
from vlmgate.serve.config import SLOConfig
from vlmgate.serve.lifecycle import RequestTrace
from vlmgate.serve.metrics import BUCKETS, GatewayMetrics, Histogram
from vlmgate.serve.observability import RequestMonitor, register_admission_metrics
from vlmgate.serve.slo import SLOTracker

METRICS_DOC = Path(__file__).resolve().parents[2] / "deploy" / "METRICS.md"


def samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_buckets_are_inclusive_cumulative_and_hold_the_default_targets() -> None:
    hist = Histogram((0.1, 0.5))
    hist.observe_many([0.1, 0.3, 0.5, 0.7])
    assert hist.cumulative() == [("0.1", 1), ("0.5", 3), ("+Inf", 4)]
    assert hist.total == pytest.approx(1.6)
    assert 0.5 in BUCKETS["ttft"]
    assert 0.033 in BUCKETS["tpot"]
    assert 0.2 in BUCKETS["image_preprocess"]
    assert all(list(b) == sorted(b) for b in BUCKETS.values())


def test_adapter_labels_are_capped_per_model_and_the_rest_share_other() -> None:
    monitor = RequestMonitor(GatewayMetrics(max_adapter_labels=2), SLOTracker(SLOConfig()))
    for adapter in ("", "a1", "a2", "a3", "a4", "a1"):
        trace = RequestTrace(model="m", adapter=adapter, arrival=0.0)
        trace.forwarded, trace.end = 0.01, 0.2
        monitor.on_request_end(trace)
    got = samples(monitor.metrics)
    per_adapter = {dict(k[1])["adapter"]: v for k, v in got.items() if k[0] == "vlmgate_requests_total"}
    assert per_adapter == {"": 1, "a1": 2, "a2": 1, "other": 2}


def test_registry_hooks_appear_in_the_exposition_and_reject_unknown_results() -> None:
    metrics = GatewayMetrics()
    metrics.adapter_load("ok")
    metrics.adapter_load("ok")
    metrics.adapter_load("error")
    metrics.live_adapters_source = lambda: {"m": 3, "n": 0}
    got = samples(metrics)
    assert got[("vlmgate_adapter_loads_total", frozenset({("result", "ok")}))] == 2
    assert got[("vlmgate_adapter_loads_total", frozenset({("result", "error")}))] == 1
    assert got[("vlmgate_live_adapters", frozenset({("model", "m")}))] == 3
    assert got[("vlmgate_live_adapters", frozenset({("model", "n")}))] == 0
    with pytest.raises(ValueError, match="ok"):
        metrics.adapter_load("success")


def test_exposition_parses_with_escaped_labels_and_process_metrics() -> None:
    metrics = GatewayMetrics()
    trace = RequestTrace(model="m", adapter='we"ird\\name', arrival=0.0)
    trace.forwarded, trace.end = 0.01, 0.2
    RequestMonitor(metrics, SLOTracker(SLOConfig())).on_request_end(trace)
    got = samples(metrics)  # prometheus-client's own parser: the hand-written text format must satisfy it
    labels = frozenset({("model", "m"), ("adapter", 'we"ird\\name'), ("le", "+Inf")})
    assert got[("vlmgate_queue_time_seconds_bucket", labels)] == 1
    assert got[("process_cpu_seconds_total", frozenset())] > 0


def test_every_exported_metric_is_defined_in_metrics_md() -> None:
    monitor = RequestMonitor(GatewayMetrics(), SLOTracker(SLOConfig()))
    trace = RequestTrace(model="m", stream=True, arrival=0.0)
    trace.forwarded, trace.image_count, trace.image_preprocess_s = 0.01, 1, 0.002
    for t in (0.1, 0.12, 0.14):
        trace.token(t)
    trace.prompt_tokens, trace.completion_tokens, trace.end = 10, 3, 0.15
    monitor.on_request_end(trace)
    monitor.metrics.adapter_load("ok")
    monitor.metrics.live_adapters_source = lambda: {"m": 1}
    register_admission_metrics(monitor.metrics, Admission)
    documented = set(re.findall(r"`(vlmgate_[a-z0-9_]+)`", METRICS_DOC.read_text()))
    text = monitor.metrics.exposition().decode()
    exported = set(re.findall(r"^# TYPE (vlmgate_[a-z0-9_]+) ", text, re.MULTILINE))
    assert exported - documented == set()
    assert len(exported) == 17  # 6 histograms, 6 counters, 5 gauges
