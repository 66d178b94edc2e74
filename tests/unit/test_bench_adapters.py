"""The adapter benchmark's figures: medians, maxima and ratios are computed from the runs it is given (ABBA runs
averaged per side), and the final table shows every figure. Pure arithmetic on made-up summaries; no engine."""

from __future__ import annotations

import pytest

from vlmgate.serve.bench_adapters import format_report, main, report


def _summary(tok_s: float, ttft_ms: float, tpot_ms: float) -> dict:
    return {"throughput": {"output_tokens_per_s": tok_s},
            "latency": {"ttft_ms": {"p50": ttft_ms}, "tpot_ms": {"p50": tpot_ms}}}  # fmt: skip


def test_report_computes_medians_and_ratios():
    hot = [{"register_s": r, "to_first_token_s": t} for r, t in ((0.2, 1.0), (0.4, 3.0), (0.3, 2.0))]
    runs = {"base": [_summary(100, 50, 10), _summary(120, 70, 12)], "adapters": [_summary(80, 60, 14)] * 2}
    fig = report(hot, {"ready_s": 18.0, "to_first_token_s": 20.0}, runs)
    assert fig["hot_load_median_s"] == 2.0
    assert fig["hot_load_max_s"] == 3.0
    assert fig["hot_register_median_s"] == pytest.approx(0.3)
    assert fig["restart_over_hot_load"] == 10.0
    assert fig["base"] == {"output_tokens_per_s": 110, "ttft_p50_ms": 60, "tpot_p50_ms": 11}
    assert fig["throughput_ratio"] == pytest.approx(80 / 110)
    table = format_report(fig, n_adapters=4, n_hot=3)
    for text in ("2.00", "20.00", "10.0x", "110.0", "4 adapters", "0.727"):
        assert text in table


def test_main_rejects_zero_adapters():
    with pytest.raises(SystemExit):
        main(["--adapters", "0"])
