"""Prometheus metrics of the gateway, served at `GET /metrics`; every metric is defined in deploy/METRICS.md.

The request path never touches this module directly: `observability.RequestMonitor` feeds it once per request
from the finished `RequestTrace`. Histograms and counters are plain Python lists and ints updated on the event
loop (bisect + increment, no lock, about a microsecond per observation) and turned into Prometheus families only
when /metrics is scraped; prometheus-client's own Histogram costs several microseconds per observation, which
adds up over one inter-token gap per generated token.

The adapter registry reports through two calls (labels stay bounded, see `AdapterLabels`):

    metrics.adapter_load("vlmgate-demo", "success")   # result: success | failure | rejected
    metrics.set_live_adapters("vlmgate-demo", 3)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from vlmgate.serve.lifecycle import RequestTrace

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_ADAPTER = "other"
ADAPTER_LOAD_RESULTS = ("success", "failure", "rejected")

# Bucket upper bounds (seconds). Each default SLO target is a bound (TTFT 0.5, TPOT 0.033, image 0.2), so that
# "share of requests under the target" is exact in PromQL, with finer steps below the target than above it.
BUCKETS: dict[str, tuple[float, ...]] = {
    "ttft": (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0),
    "tpot": (0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.033, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
    "itl": (0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.033, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5),
    "e2e": (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    "queue": (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    "image_preprocess": (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
}
HISTOGRAMS: dict[str, tuple[str, str]] = {  # key -> (metric name, help)
    "ttft": ("vlmgate_time_to_first_token_seconds", "Arrival to first generated text, streaming requests."),
    "tpot": ("vlmgate_time_per_output_token_seconds", "(last - first token) / (tokens - 1), streaming requests."),
    "itl": ("vlmgate_inter_token_latency_seconds", "Gap between successive chunks with generated text (streaming)."),
    "e2e": ("vlmgate_e2e_request_latency_seconds", "Arrival to last byte sent, completed (200) requests."),
    "queue": ("vlmgate_queue_time_seconds", "Arrival to forwarded to the engine (checks, adapter load, admission)."),
    "image_preprocess": ("vlmgate_image_preprocess_seconds", "Gateway-side image decoding and checks per request."),
}


class Histogram:
    """Counts per bucket and a sum; observe() is a bisect and two additions (event-loop thread only)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: value == bound counts in that bucket
        self.total += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, total = self.counts, self.bounds, 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.total += total

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


class Series:
    """Everything measured for one (model, adapter) label pair."""

    __slots__ = ("hist", "requests", "prompt_tokens", "generation_tokens", "slo_met", "slo_missed", "objective")

    def __init__(self, objective: float) -> None:
        self.hist = {key: Histogram(bounds) for key, bounds in BUCKETS.items()}
        self.requests: dict[str, int] = {}  # HTTP status -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.slo_met = 0
        self.slo_missed = 0
        self.objective = objective


class AdapterLabels:
    """Bounded `adapter` label values: the first `limit` adapters of each model keep their name, later ones
    share "other" (an adapter named "other" is reported as such too). The base model is "" and always kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def label(self, model: str, adapter: str) -> str:
        if not adapter:
            return ""
        seen = self._seen.setdefault(model, set())
        if adapter in seen:
            return adapter
        if len(seen) < self.limit and adapter != OTHER_ADAPTER:
            seen.add(adapter)
            return adapter
        return OTHER_ADAPTER


class GatewayMetrics:
    """The gateway's metric store and its Prometheus exposition (its own registry: one per app, test-friendly)."""

    def __init__(self, max_adapter_labels: int = 32) -> None:
        self.labels = AdapterLabels(max_adapter_labels)
        self.series: dict[tuple[str, str], Series] = {}
        self.unresolved: dict[str, int] = {}  # status -> requests refused before a model was known
        self.adapter_loads: dict[tuple[str, str], int] = {}
        self.live_adapters: dict[str, int] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, str, Callable[[], dict[str, int]]]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total etc. of the gateway itself

    # -- fed by the request monitor --------------------------------------------------------------------------
    def series_for(self, model: str, adapter_label: str, objective: float) -> Series:
        key = (model, adapter_label)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(objective)
        return series

    def record_unresolved(self, trace: RequestTrace) -> None:
        """A request refused before its model was resolved (bad JSON, unknown model): counted as model=""."""
        status = str(trace.status)
        self.unresolved[status] = self.unresolved.get(status, 0) + 1

    def record(self, series: Series, trace: RequestTrace, slo_met: bool | None) -> None:
        """One finished request. slo_met None: the request does not count for the SLO (e.g. a 400)."""
        status = str(trace.status)
        series.requests[status] = series.requests.get(status, 0) + 1
        hist = series.hist
        if trace.forwarded is not None:
            hist["queue"].observe(trace.forwarded - trace.arrival)
        if trace.image_count:
            hist["image_preprocess"].observe(trace.image_preprocess_s)
        if trace.stream and trace.first_token is not None:
            hist["ttft"].observe(trace.first_token - trace.arrival)
            tpot = trace.tpot_s
            if tpot is not None:
                hist["tpot"].observe(tpot)
            if trace.inter_token_s:
                hist["itl"].observe_many(trace.inter_token_s)
        if trace.status == 200 and trace.end is not None:
            hist["e2e"].observe(trace.end - trace.arrival)
        if trace.prompt_tokens:
            series.prompt_tokens += trace.prompt_tokens
        if trace.completion_tokens:
            series.generation_tokens += trace.completion_tokens
        if slo_met is True:
            series.slo_met += 1
        elif slo_met is False:
            series.slo_missed += 1

    # -- called by the adapter registry ------------------------------------------------------------------------
    def adapter_load(self, model: str, result: str) -> None:
        """Count one adapter load attempt on `model`'s engine: success, failure (engine said no) or rejected
        (the gateway's own validation refused it before the engine saw it)."""
        if result not in ADAPTER_LOAD_RESULTS:
            raise ValueError(f"adapter load result must be one of {ADAPTER_LOAD_RESULTS}, not {result!r}")
        key = (model, result)
        self.adapter_loads[key] = self.adapter_loads.get(key, 0) + 1

    def set_live_adapters(self, model: str, count: int) -> None:
        """How many adapters of `model` are live (loaded and serving) right now."""
        self.live_adapters[model] = count

    # -- other sources read at scrape time --------------------------------------------------------------------
    def gauge_function(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge without labels whose value is read when /metrics is scraped (e.g. admission state)."""
        self.gauges[name] = (help_text, read)

    def counter_function(self, name: str, help_text: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        """A counter with one label whose values ({label value: count}) are read when /metrics is scraped."""
        self.counters[name] = (help_text, label, read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        items: Sequence[tuple[tuple[str, str], Series]] = sorted(m.series.items())
        for key, (name, help_text) in HISTOGRAMS.items():
            family = HistogramMetricFamily(name, help_text, labels=("model", "adapter"))
            for labels, series in items:
                hist = series.hist[key]
                family.add_metric(labels, hist.cumulative(), hist.total)
            yield family
        requests = CounterMetricFamily(
            "vlmgate_requests", "Finished chat requests by HTTP status.", labels=("model", "adapter", "status")
        )
        prompt = CounterMetricFamily(
            "vlmgate_prompt_tokens", "Prompt tokens (engine usage).", labels=("model", "adapter")
        )
        generation = CounterMetricFamily(
            "vlmgate_generation_tokens", "Generated tokens (engine usage).", labels=("model", "adapter")
        )
        slo = CounterMetricFamily(
            "vlmgate_slo_requests", "Requests judged against their SLO targets.", labels=("model", "adapter", "result")
        )
        objective = GaugeMetricFamily(
            "vlmgate_slo_objective",
            "Configured share of requests that must meet every target.",
            labels=("model", "adapter"),
        )
        for labels, series in items:
            for status, count in sorted(series.requests.items()):
                requests.add_metric((*labels, status), count)
            prompt.add_metric(labels, series.prompt_tokens)
            generation.add_metric(labels, series.generation_tokens)
            slo.add_metric((*labels, "met"), series.slo_met)
            slo.add_metric((*labels, "missed"), series.slo_missed)
            objective.add_metric(labels, series.objective)
        for status, count in sorted(m.unresolved.items()):
            requests.add_metric(("", "", status), count)
        yield from (requests, prompt, generation, slo, objective)
        loads = CounterMetricFamily("vlmgate_adapter_loads", "Adapter load attempts.", labels=("model", "result"))
        for (model, result), count in sorted(m.adapter_loads.items()):
            loads.add_metric((model, result), count)
        yield loads
        live = GaugeMetricFamily("vlmgate_live_adapters", "Adapters loaded and serving.", labels=("model",))
        for model, count in sorted(m.live_adapters.items()):
            live.add_metric((model,), count)
        yield live
        for name, (help_text, read) in m.gauges.items():
            yield GaugeMetricFamily(name, help_text, value=read())
        for name, (help_text, label, read) in m.counters.items():
            family = CounterMetricFamily(name, help_text, labels=(label,))
            for value, count in sorted(read().items()):
                family.add_metric((value,), count)
            yield family
