"""Summarise request records: percentiles, throughput, goodput against the SLO, errors by kind.

Latency figures use successful requests only; goodput counts requests that succeeded AND met every target
(a single-token reply has no TPOT and passes the TPOT target, as in vLLM's benchmark). Throughput divides by
the measured duration (first send -> last reply). Percentiles are numpy's linear interpolation.

    summary = summarize(result.records, result.duration_s, config.slo, config.attainment)
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vlmgate.loadtest.client import RequestRecord
from vlmgate.loadtest.config import SLO

PERCENTILES = (50, 90, 95, 99)


def describe_ms(values_s: list[float]) -> dict | None:
    """count, mean, min, max and PERCENTILES of values given in seconds, returned in milliseconds."""
    if not values_s:
        return None
    ms = 1000 * np.asarray(values_s, dtype=float)
    out = {"count": int(ms.size), "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max())}
    out.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True)})
    return out


def meets_slo(record: RequestRecord, slo: SLO) -> bool:
    if not record.ok:
        return False
    observed = {"ttft_ms": record.ttft_s, "tpot_ms": record.tpot_s, "e2e_ms": record.e2e_s, "itl_ms": record.max_itl_s}
    return all(observed[key] is None or 1000 * observed[key] <= target for key, target in slo.targets().items())


def _latencies(records: list[RequestRecord]) -> dict[str, dict | None]:
    ok = [r for r in records if r.ok]
    return {
        "ttft_ms": describe_ms([r.ttft_s for r in ok]),
        "tpot_ms": describe_ms([r.tpot_s for r in ok if r.tpot_s is not None]),
        "itl_ms": describe_ms([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": describe_ms([r.e2e_s for r in ok]),
    }


def summarize(records: list[RequestRecord], duration_s: float, slo: SLO, attainment: float = 0.95) -> dict:
    """The `summary` object of report.json (schema in loadtest/README.md)."""
    ok = [r for r in records if r.ok]
    good = [r for r in records if meets_slo(r, slo)]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    duration = max(duration_s, 1e-9)
    share_good = len(good) / len(records) if records else 0.0
    per_model = {}
    for model in sorted({r.model for r in records}):
        mine = [r for r in records if r.model == model]
        per_model[model] = {
            "requests": len(mine),
            "succeeded": sum(r.ok for r in mine),
            "good": sum(meets_slo(r, slo) for r in mine),
            **_latencies(mine),
        }
        per_model[model].pop("itl_ms")
    lags = [r.sent_s - r.scheduled_s for r in records]
    return {
        "requests": {
            "total": len(records),
            "succeeded": len(ok),
            "failed": len(records) - len(ok),
            "errors_by_kind": dict(Counter(r.error_kind for r in records if not r.ok)),
            "sample_errors": sorted({f"{r.error_kind}: {r.error}" for r in records if not r.ok})[:5],
        },
        "duration_s": duration_s,
        "latency": _latencies(records),
        "throughput": {
            "requests_per_s": len(ok) / duration,
            "output_tokens_per_s": output_tokens / duration,
            "total_tokens_per_s": (output_tokens + prompt_tokens) / duration,
            "output_tokens": output_tokens,
            "prompt_tokens": prompt_tokens,
            "images": sum(r.images for r in ok),
        },
        "slo": {
            "targets": slo.targets(),
            "attainment_target": attainment,
            "good_requests": len(good),
            "attainment": share_good,
            "goodput_rps": len(good) / duration,
            # Without targets a request is good when it succeeded, so the share of successes decides.
            "met": bool(records) and share_good >= attainment,
        },
        "per_model": per_model,
        "generator": {"schedule_lag_ms": describe_ms(lags)},
    }
