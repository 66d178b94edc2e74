"""Where observers (metrics, SLO tracking) and their routes are attached to the app.

`install(app, gateway)` is called once by create_app; it is the single place to add an observer or an
observability route. It mounts
- `GET /metrics`: Prometheus text (serve/metrics.py; every metric defined in deploy/METRICS.md);
- `GET /v1/slo[?model=M&adapter=A]`: rolling SLO attainment, burn rate and percentiles (serve/slo.py);
and attaches `RequestMonitor`, which turns each finished request into metrics and an SLO verdict, once.

Try: curl -s 127.0.0.1:8000/metrics | grep '^vlmgate_'   and   curl -s 127.0.0.1:8000/v1/slo | python -m json.tool
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response

from vlmgate.serve.admission import Admission, Admissions
from vlmgate.serve.lifecycle import RequestTrace
from vlmgate.serve.metrics import CONTENT_TYPE, GatewayMetrics
from vlmgate.serve.slo import SLOTracker, judge

if TYPE_CHECKING:
    from fastapi import FastAPI

    from vlmgate.serve.app import Gateway


class RequestMonitor:
    """The request observer: bounded labels, one SLO verdict, then metrics and the SLO tracker."""

    def __init__(self, metrics: GatewayMetrics, tracker: SLOTracker) -> None:
        self.metrics = metrics
        self.tracker = tracker

    def on_request_end(self, trace: RequestTrace) -> None:
        model = trace.model
        adapter = self.metrics.labels.label(model, trace.adapter)
        if not model:  # rejected before a model was resolved (bad JSON, unknown model, ...): counted, not timed
            self.metrics.record_unresolved(trace)
            return
        targets = self.tracker.targets_for(model, trace.adapter)  # the adapter's own targets, even when folded
        verdict = judge(trace, targets)
        series = self.metrics.series_for(model, adapter, targets.objective)
        self.metrics.record(series, trace, verdict.met)
        self.tracker.record(model, adapter, trace, verdict)


def register_admission_metrics(metrics: GatewayMetrics, admission: Callable[[], Admission | Admissions]) -> None:
    """Admission gauges and counters, read at scrape time through `admission()` (the gateway may replace it)."""
    metrics.gauge_function(
        "vlmgate_requests_in_flight", "Requests admitted and at an engine now.", lambda: admission().in_flight
    )
    metrics.gauge_function(
        "vlmgate_requests_queued", "Requests waiting for an admission slot now.", lambda: admission().queued
    )
    metrics.gauge_function(
        "vlmgate_admission_max_concurrent",
        "Configured admission bound (0: unbounded).",
        lambda: admission().config.max_concurrent or 0,
    )
    metrics.counter_function(
        "vlmgate_admission_rejections", "Requests answered 429 by admission.", "reason", lambda: admission().rejected
    )


def live_adapters(gateway: Gateway) -> dict[str, int]:
    """Live adapters per base model, from the registry (the one source of truth: no update path can be missed)."""
    counts = dict.fromkeys(gateway.engines, 0)
    for record in gateway.adapters.registry.list("live"):
        counts[record.base_model] = counts.get(record.base_model, 0) + 1
    return counts


def install(app: FastAPI, gateway: Gateway) -> None:
    """Attach the request monitor to gateway.observers and mount /metrics and /v1/slo."""
    config = gateway.config
    metrics = getattr(gateway, "metrics", None)
    if metrics is None:
        metrics = gateway.metrics = GatewayMetrics(config.slo.max_adapter_labels)  # type: ignore[attr-defined]
    tracker = SLOTracker(config.slo)
    gateway.slo = tracker  # type: ignore[attr-defined]
    gateway.observers.add(RequestMonitor(metrics, tracker))

    register_admission_metrics(metrics, lambda: gateway.admission)
    adapters = getattr(gateway, "adapters", None)
    if adapters is not None:
        adapters.on_load = metrics.adapter_load  # the adapter manager's metrics hook (result ok | error)
        metrics.live_adapters_source = lambda: live_adapters(gateway)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics (definitions: deploy/METRICS.md).")
    async def prometheus_metrics() -> Response:
        # async: runs on the event loop, the only thread that updates the metric store.
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/slo", tags=["ops"], summary="SLO attainment, error-budget burn rate and latency percentiles.")
    async def slo_report(request: Request, model: str | None = None, adapter: str | None = None) -> Response:
        authorizer = getattr(gateway, "authorizer", None)
        if authorizer is not None:  # same keys as the OpenAI routes; /metrics stays open for Prometheus
            authorizer.inference(request)
        body = tracker.report(model=model, adapter=adapter)
        return Response(orjson.dumps(body), media_type="application/json")
