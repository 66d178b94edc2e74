"""Prometheus metrics of the gateway, served at `GET /metrics`; every metric is defined in deploy/METRICS.md.

The request path never touches this module directly: `observability.RequestMonitor` feeds it once per request
from the finished `RequestTrace`. Histograms and counters are plain Python lists and ints updated on the event
loop (bisect + increment, no lock, about a microsecond per observation) and turned into Prometheus families only
when /metrics is scraped; prometheus-client's own Histogram costs several microseconds per observation, which
adds up over one inter-token gap per generated token.

Adapter figures come from the adapter manager (wired by observability.install, nothing to call by hand):

    metrics.adapter_load("ok")                                  # its on_load hook; result: ok | error
    metrics.live_adapters_source = lambda: {"vlmgate-demo": 3}  # read when /metrics is scraped
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from vlmgate.serve.lifecycle import RequestTrace

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_ADAPTER = "other"
ADAPTER_LOAD_RESULTS = ("ok", "error")

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

    __slots__ = ("bounds", "counts", "les", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.les = (*map(_le, bounds), "+Inf")  # the `le` label values
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
        running = 0
        return [(le, running := running + count) for le, count in zip(self.les, self.counts, strict=True)]


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
    """The gateway's metric store and its Prometheus exposition (one per app: tests build as many as they like)."""

    def __init__(self, max_adapter_labels: int = 32) -> None:
        self.labels = AdapterLabels(max_adapter_labels)
        self.series: dict[tuple[str, str], Series] = {}
        self.unresolved: dict[str, int] = {}  # status -> requests refused before a model was known
        self.adapter_loads: dict[str, int] = {}  # result -> count
        self.live_adapters_source: Callable[[], dict[str, int]] = dict  # model -> live adapters, read at scrape
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, str, Callable[[], dict[str, int]]]] = {}
        self.process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process)  # process_cpu_seconds_total etc. of the gateway itself

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
    def adapter_load(self, result: str) -> None:
        """Count one attempt to load an adapter onto an engine: ok, or error (the engine refused, failed or went
        away). Signature of AdapterManager's `on_load` hook."""
        if result not in ADAPTER_LOAD_RESULTS:
            raise ValueError(f"adapter load result must be one of {ADAPTER_LOAD_RESULTS}, not {result!r}")
        self.adapter_loads[result] = self.adapter_loads.get(result, 0) + 1

    # -- other sources read at scrape time --------------------------------------------------------------------
    def gauge_function(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge without labels whose value is read when /metrics is scraped (e.g. admission state)."""
        self.gauges[name] = (help_text, read)

    def counter_function(self, name: str, help_text: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        """A counter with one label whose values ({label value: count}) are read when /metrics is scraped."""
        self.counters[name] = (help_text, label, read)

    def exposition(self) -> bytes:
        return ("\n".join(_render(self)) + "\n").encode() + generate_latest(self.process)


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render(m: GatewayMetrics) -> Iterator[str]:
    """Prometheus text format 0.0.4, written directly: ~10x cheaper than building prometheus-client families."""
    items = sorted(m.series.items())
    for key, (name, help_text) in HISTOGRAMS.items():
        yield f"# HELP {name} {help_text}\n# TYPE {name} histogram"
        for (model, adapter), series in items:
            hist, lab = series.hist[key], _labels(model=model, adapter=adapter)
            running = 0
            for le, count in zip(hist.les, hist.counts, strict=True):
                running += count
                yield f'{name}_bucket{{{lab},le="{le}"}} {running}'
            yield f"{name}_count{{{lab}}} {running}\n{name}_sum{{{lab}}} {hist.total!r}"
    counters: list[tuple[str, str, list[tuple[str, float]]]] = [
        ("vlmgate_requests_total", "Finished chat requests by HTTP status.", [
            (_labels(model=mo, adapter=ad, status=st), n)
            for (mo, ad), se in items for st, n in sorted(se.requests.items())
        ] + [(_labels(model="", adapter="", status=st), n) for st, n in sorted(m.unresolved.items())]),
        ("vlmgate_prompt_tokens_total", "Prompt tokens (engine usage).",
         [(_labels(model=mo, adapter=ad), se.prompt_tokens) for (mo, ad), se in items]),
        ("vlmgate_generation_tokens_total", "Generated tokens (engine usage).",
         [(_labels(model=mo, adapter=ad), se.generation_tokens) for (mo, ad), se in items]),
        ("vlmgate_slo_requests_total", "Requests judged against their SLO targets.", [
            (_labels(model=mo, adapter=ad, result=r), n)
            for (mo, ad), se in items for r, n in (("met", se.slo_met), ("missed", se.slo_missed))
        ]),
        ("vlmgate_adapter_loads_total", "Adapter load attempts.",
         [(_labels(result=r), n) for r, n in sorted(m.adapter_loads.items())]),
    ]  # fmt: skip
    for name, (help_text, label, read) in m.counters.items():
        counters.append((f"{name}_total", help_text, [(_labels(**{label: v}), n) for v, n in sorted(read().items())]))
    for name, help_text, samples in counters:
        yield f"# HELP {name} {help_text}\n# TYPE {name} counter"
        yield from (f"{name}{{{lab}}} {value}" for lab, value in samples)
    gauges: list[tuple[str, str, list[tuple[str, float]]]] = [
        ("vlmgate_slo_objective", "Configured share of requests that must meet every target.",
         [(_labels(model=mo, adapter=ad), se.objective) for (mo, ad), se in items]),
        ("vlmgate_live_adapters", "Adapters loaded and serving.",
         [(_labels(model=mo), n) for mo, n in sorted(m.live_adapters_source().items())]),
    ]  # fmt: skip
    gauges += [(name, help_text, [("", read())]) for name, (help_text, read) in m.gauges.items()]
    for name, help_text, samples in gauges:
        yield f"# HELP {name} {help_text}\n# TYPE {name} gauge"
        yield from (f"{name}{{{lab}}} {value}" if lab else f"{name} {value}" for lab, value in samples)
