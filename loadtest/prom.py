"""Server-side figures from Prometheus text: scrape `/metrics` before and after a run, report the difference.

Understands vLLM's names (`vllm:time_to_first_token_seconds`, ...) and the gateway's (`vlmgate_...`), so the
report can put the server's view next to the client's. Histogram percentiles are estimated from the bucket
deltas by linear interpolation inside the bucket, as Prometheus' histogram_quantile() does, so they are only
as fine as the buckets. Series are summed over all labels: other traffic during the run is counted too.

    before = parse_prometheus(text_before); after = parse_prometheus(text_after)
    server_side(before, after)  # {"vllm": {"ttft_ms": {"count", "mean", "p50", ...}, "generation_tokens": ...}}
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

# quantity -> metric name (without prefix) per server family
PREFIXES = {"vllm": "vllm:", "vlmgate": "vlmgate_"}
HISTOGRAMS = {
    "vllm": {
        "ttft_ms": "time_to_first_token_seconds",
        "tpot_ms": "request_time_per_output_token_seconds",
        "itl_ms": "inter_token_latency_seconds",
        "e2e_ms": "e2e_request_latency_seconds",
        "queue_ms": "request_queue_time_seconds",
    },
    "vlmgate": {
        "ttft_ms": "time_to_first_token_seconds",
        "tpot_ms": "time_per_output_token_seconds",
        "itl_ms": "inter_token_latency_seconds",
        "e2e_ms": "e2e_request_latency_seconds",
        "queue_ms": "queue_time_seconds",
        "image_preprocess_ms": "image_preprocess_seconds",
    },
}
COUNTERS = {
    "vllm": {
        "prompt_tokens": "prompt_tokens_total",
        "generation_tokens": "generation_tokens_total",
        "requests": "request_success_total",
    },
    "vlmgate": {
        "prompt_tokens": "prompt_tokens_total",
        "generation_tokens": "generation_tokens_total",
        "requests": "requests_total",
    },
}
_LINE = re.compile(r"^([^\s{]+)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset], float]


def parse_prometheus(text: str) -> Samples:
    """{(metric name, frozenset of (label, value)): value} for every sample line."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
        except ValueError:
            continue
    return samples


def _sum(samples: Samples, name: str, where: frozenset = frozenset()) -> float | None:
    """Sum of the series of `name` whose labels include every (label, value) pair of `where`."""
    values = [v for (n, labels), v in samples.items() if n == name and where <= labels]
    return sum(values) if values else None


def _delta(before: Samples, after: Samples, name: str, where: frozenset = frozenset()) -> float | None:
    end = _sum(after, name, where)
    return None if end is None else end - (_sum(before, name, where) or 0.0)


def _buckets(samples: Samples, name: str, where: frozenset = frozenset()) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for (n, labels), value in samples.items():
        if n == f"{name}_bucket" and where <= labels:
            le = dict(labels).get("le")
            if le is not None:
                out[float(le)] += value
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus-style quantile from cumulative bucket counts {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # the top finite bound, as Prometheus does
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def _histogram_delta(before: Samples, after: Samples, name: str, where: frozenset = frozenset()) -> dict | None:
    count = _delta(before, after, f"{name}_count", where)
    total = _delta(before, after, f"{name}_sum", where)
    if count is None or total is None or count <= 0:
        return None
    start, end = _buckets(before, name, where), _buckets(after, name, where)
    buckets = {bound: end[bound] - start.get(bound, 0.0) for bound in end}
    result = {"count": int(round(count)), "mean": 1000 * total / count}
    for q in (50, 90, 95, 99):
        value = histogram_quantile(q / 100, buckets)
        result[f"p{q}"] = None if value is None else 1000 * value
    return result


def server_side(before: Samples, after: Samples) -> dict[str, dict]:
    """Per server family found ("vllm", "vlmgate"): histogram deltas in ms and counter deltas."""
    out: dict[str, dict] = {}
    for family, prefix in PREFIXES.items():
        figures: dict = {}
        for quantity, name in HISTOGRAMS[family].items():
            if (hist := _histogram_delta(before, after, prefix + name)) is not None:
                figures[quantity] = hist
        for quantity, name in COUNTERS[family].items():
            if (value := _delta(before, after, prefix + name)) is not None:
                figures[quantity] = int(round(value))
        if family == "vlmgate" and (per_model := _per_adapter(before, after, prefix)):
            figures["per_model"] = per_model
        if figures:
            out[family] = figures
    return out


def _per_adapter(before: Samples, after: Samples, prefix: str) -> dict[str, dict]:
    """The gateway labels latency by `model` (base) and `adapter` ("" for the base): figures per name a client
    would send, i.e. the adapter, or the base model for base traffic."""
    ttft = prefix + HISTOGRAMS["vlmgate"]["ttft_ms"]
    series = {labels for (n, labels) in after if n == f"{ttft}_count"}
    out: dict[str, dict] = {}
    for labels in series:
        label = dict(labels)
        if "model" not in label or "adapter" not in label:
            continue
        where = frozenset({("model", label["model"]), ("adapter", label["adapter"])})
        figures = {q: h for q in ("ttft_ms", "tpot_ms", "e2e_ms")
                   if (h := _histogram_delta(before, after, prefix + HISTOGRAMS["vlmgate"][q], where))}  # fmt: skip
        if figures:
            out[label["adapter"] or label["model"]] = figures
    return out
