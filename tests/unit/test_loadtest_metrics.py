"""Summary statistics (TPOT convention, goodput, percentiles) and the Prometheus scrape arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from vlmgate.loadtest.client import RequestRecord
from vlmgate.loadtest.config import SLO
from vlmgate.loadtest.prom import histogram_quantile, parse_prometheus, server_side
from vlmgate.loadtest.stats import meets_slo, summarize


def _record(index: int, ttft_s: float, e2e_s: float, tokens: int, ok: bool = True, model: str = "m") -> RequestRecord:
    if not ok:
        return RequestRecord(index=index, model=model, images=0, error_kind="http_5xx")
    return RequestRecord(index=index, model=model, images=0, ok=True, ttft_s=ttft_s, e2e_s=e2e_s,
                         output_tokens=tokens, prompt_tokens=10)  # fmt: skip


def test_tpot_excludes_the_first_token_like_vllm():
    record = _record(0, ttft_s=0.2, e2e_s=1.2, tokens=11)
    assert record.tpot_s == pytest.approx((1.2 - 0.2) / 10)
    assert _record(1, ttft_s=0.2, e2e_s=0.2, tokens=1).tpot_s is None


def test_goodput_counts_successful_requests_meeting_every_target():
    records = [
        _record(0, 0.1, 0.5, 11),  # ttft 100 ms, tpot 40 ms
        _record(1, 0.6, 0.9, 11),  # ttft 600 ms: misses ttft
        _record(2, 0.1, 0.3, 11),  # tpot 20 ms: meets both
        _record(3, 0.1, 0.1, 1),  # single token: no TPOT, passes TPOT like vLLM's goodput
        _record(4, 0.0, 0.0, 0, ok=False),
    ]
    slo = SLO(ttft_ms=500, tpot_ms=33)
    assert [meets_slo(r, slo) for r in records] == [False, False, True, True, False]
    summary = summarize(records, duration_s=2.0, slo=slo, attainment=0.4)
    assert summary["slo"]["good_requests"] == 2
    assert summary["slo"]["goodput_rps"] == pytest.approx(1.0)
    assert summary["slo"]["attainment"] == pytest.approx(0.4)
    assert summary["slo"]["met"] is True
    assert summary["requests"]["errors_by_kind"] == {"http_5xx": 1}
    assert summary["throughput"]["output_tokens"] == 34
    assert summary["throughput"]["requests_per_s"] == pytest.approx(2.0)


def test_latency_percentiles_match_numpy_over_successful_requests():
    rng = np.random.default_rng(3)
    ttfts = rng.uniform(0.05, 0.5, 200)
    records = [_record(i, t, t + 1.0, 5, model="ab"[i % 2]) for i, t in enumerate(ttfts)]
    summary = summarize(records, 10.0, SLO())
    ttft = summary["latency"]["ttft_ms"]
    for q in (50, 90, 95, 99):
        assert ttft[f"p{q}"] == pytest.approx(1000 * np.percentile(ttfts, q))
    assert ttft["mean"] == pytest.approx(1000 * ttfts.mean())
    assert summary["per_model"]["a"]["requests"] == 100
    assert summary["slo"]["met"] is True  # no targets: every request succeeded


BEFORE = """# HELP vllm:time_to_first_token_seconds x
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 1
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 2
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 2
vllm:time_to_first_token_seconds_count{model_name="m"} 2
vllm:time_to_first_token_seconds_sum{model_name="m"} 0.3
vllm:generation_tokens_total{model_name="m"} 100
"""
AFTER = """vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 5
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 12
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 12
vllm:time_to_first_token_seconds_count{model_name="m"} 12
vllm:time_to_first_token_seconds_sum{model_name="m"} 2.3
vllm:generation_tokens_total{model_name="m"} 420
vlmgate_generation_tokens_total{model="m",adapter=""} 7
"""


def test_server_side_figures_are_deltas_between_scrapes():
    figures = server_side(parse_prometheus(BEFORE), parse_prometheus(AFTER))
    ttft = figures["vllm"]["ttft_ms"]
    assert ttft["count"] == 10
    assert ttft["mean"] == pytest.approx(200.0)
    # 4 of the 10 new observations are <= 0.1 s, 6 in (0.1, 0.5]: the median lies 1/6 into the second bucket.
    assert ttft["p50"] == pytest.approx(1000 * (0.1 + 0.4 * (1 / 6)))
    assert figures["vllm"]["generation_tokens"] == 320
    assert figures["vlmgate"]["generation_tokens"] == 7  # a family absent before the run counts from zero


def test_histogram_quantile_stays_below_the_top_finite_bound():
    assert histogram_quantile(0.99, {0.1: 0.0, 1.0: 0.0, float("inf"): 4.0}) == 1.0
    assert histogram_quantile(0.5, {}) is None


GATEWAY = """vlmgate_time_to_first_token_seconds_bucket{model="base",adapter="",le="0.1"} 3
vlmgate_time_to_first_token_seconds_bucket{model="base",adapter="",le="+Inf"} 4
vlmgate_time_to_first_token_seconds_count{model="base",adapter=""} 4
vlmgate_time_to_first_token_seconds_sum{model="base",adapter=""} 0.4
vlmgate_time_to_first_token_seconds_bucket{model="base",adapter="fr",le="0.1"} 0
vlmgate_time_to_first_token_seconds_bucket{model="base",adapter="fr",le="+Inf"} 2
vlmgate_time_to_first_token_seconds_count{model="base",adapter="fr"} 2
vlmgate_time_to_first_token_seconds_sum{model="base",adapter="fr"} 0.6
"""


def test_gateway_figures_are_split_per_adapter_and_shown_beside_the_clients():
    from vlmgate.loadtest.config import LoadTestConfig
    from vlmgate.loadtest.report import build_report, console_table

    server = server_side({}, parse_prometheus(GATEWAY))
    per_model = server["vlmgate"]["per_model"]
    assert per_model["base"]["ttft_ms"]["count"] == 4
    assert per_model["fr"]["ttft_ms"]["mean"] == pytest.approx(300.0)
    assert server["vlmgate"]["ttft_ms"]["count"] == 6  # the family total sums both label sets
    records = [_record(0, 0.1, 0.2, 3, model="base"), _record(1, 0.3, 0.5, 3, model="fr")]
    config = LoadTestConfig(url="http://x", concurrency=1)
    table = console_table(build_report(config, records, summarize(records, 1.0, SLO()), server))
    assert "gateway TTFT p50~" in table
    assert "vlmgate p50~" in table
    assert "queue ms" not in table  # no server reported a queue time


def test_server_only_quantities_get_their_own_rows():
    from vlmgate.loadtest.report import latency_rows

    text = AFTER.replace("time_to_first_token", "request_queue_time")
    server = server_side(parse_prometheus(BEFORE), parse_prometheus(text))
    rows = latency_rows(summarize([_record(0, 0.1, 0.2, 3)], 1.0, SLO()), server)
    queue = next(row for row in rows if row[0] == "queue ms")
    assert queue[1:6] == ["-"] * 5  # the client cannot see queueing
    assert float(queue[6]) == pytest.approx(2300 / 12, abs=0.05)  # mean: 2.3 s over 12 requests, shown to 0.1 ms
