"""SLO judging, rolling attainment / burn rate / percentiles, and the `slo:` config (no engine, no app)."""

from __future__ import annotations

import pytest

from vlmgate.serve.config import ConfigError, SLOConfig, SLOTargets, load_config
from vlmgate.serve.lifecycle import RequestTrace
from vlmgate.serve.slo import SLOTracker, judge


def streamed(ttft_s: float = 0.1, gap_s: float = 0.02, tokens: int = 5, status: int = 200, images: int = 0,
             image_s: float = 0.0, adapter: str = "") -> RequestTrace:  # fmt: skip
    trace = RequestTrace(model="m", adapter=adapter, stream=True, arrival=100.0)
    trace.forwarded = 100.001
    for i in range(tokens):
        trace.token(100.0 + ttft_s + i * gap_s)
    trace.completion_tokens = tokens
    trace.end = 100.0 + ttft_s + tokens * gap_s
    trace.status, trace.image_count, trace.image_preprocess_s = status, images, image_s
    return trace


def test_a_fast_stream_meets_every_default_target() -> None:
    assert judge(streamed(), SLOTargets()).met is True


@pytest.mark.parametrize(
    ("trace", "missed"),
    [
        (streamed(ttft_s=0.6), ("ttft",)),
        (streamed(gap_s=0.05), ("tpot",)),
        (streamed(images=1, image_s=0.25), ("image_preprocess",)),
        (streamed(ttft_s=0.6, gap_s=0.05), ("ttft", "tpot")),
        (streamed(status=429), ("error",)),
        (streamed(status=502), ("error",)),
    ],
)
def test_each_missed_target_is_named(trace: RequestTrace, missed: tuple[str, ...]) -> None:
    verdict = judge(trace, SLOTargets())
    assert verdict.counted
    assert verdict.misses == missed
    assert verdict.met is False


def test_client_errors_do_not_count_and_a_disconnect_counts_only_when_already_late() -> None:
    assert judge(streamed(status=400), SLOTargets()).counted is False
    assert judge(streamed(status=499), SLOTargets()).counted is False  # left while on time
    assert judge(streamed(status=499, ttft_s=0.7), SLOTargets()).misses == ("ttft",)


def test_non_streaming_is_judged_on_the_time_a_streamed_answer_would_take() -> None:
    targets = SLOTargets(ttft_ms=500, tpot_ms=33)
    trace = RequestTrace(model="m", arrival=0.0)
    trace.forwarded, trace.first_token, trace.last_token, trace.completion_tokens = 0.0, 0.7, 0.7, 11
    trace.end = 0.8  # allowed: 0.5 + 10 x 0.033 = 0.83 s
    assert judge(trace, targets).met is True
    trace.end = 0.9
    assert judge(trace, targets).misses == ("e2e",)
    assert judge(trace, SLOTargets(e2e_ms=1000)).met is True  # an explicit e2e target replaces the derived one


def test_targets_inherit_default_then_model_then_adapter() -> None:
    config = load_config(
        None,
        {"slo.models": {"m": {"ttft_ms": 100, "adapters": {"a": {"tpot_ms": 10, "e2e_ms": None}}}}},
        environ={},
    ).slo
    assert config.targets_for("m", "a") == SLOTargets(ttft_ms=100, tpot_ms=10, image_preprocess_ms=200)
    assert config.targets_for("m", "b") == SLOTargets(ttft_ms=100)
    assert config.targets_for("other-model", "a") == SLOTargets()


def test_slo_config_errors_are_reported_with_the_setting() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"slo.models": {"m": {"ttft": 1}}, "slo.default.objective": 1.5}, environ={})
    assert "slo.models.m.ttft: unknown setting; did you mean 'ttft_ms'?" in str(err.value)
    with pytest.raises(ConfigError, match="short_window_s"):
        load_config(None, {"slo.short_window_s": 600, "slo.long_window_s": 60}, environ={})
    env = {"VLMGATE_SLO__DEFAULT__TTFT_MS": "50"}
    assert load_config(None, environ=env).slo.default.ttft_ms == 50


def test_tracker_reports_attainment_burn_rate_and_percentiles_per_window() -> None:
    tracker = SLOTracker(SLOConfig(short_window_s=60, long_window_s=600))
    targets = SLOTargets()  # objective 0.99: a 1% error budget
    for i in range(10):  # 10 old requests, all good (500 s before "now")
        trace = streamed(ttft_s=0.1)
        trace.end = 1000.0 + i
        tracker.record("m", "a", trace, judge(trace, targets))
    for i in range(10):  # 10 recent: 5 with a slow first token
        trace = streamed(ttft_s=0.9 if i % 2 else 0.1)
        trace.end = 1490.0 + i
        tracker.record("m", "a", trace, judge(trace, targets))
    report = tracker.report(now=1500.0)
    [series] = report["series"]
    assert (series["model"], series["adapter"]) == ("m", "a")
    short, long = series["windows"]["short"], series["windows"]["long"]
    assert (short["requests"], short["met"], short["misses_by_target"]["ttft"]) == (10, 5, 5)
    assert (long["requests"], long["met"]) == (20, 15)
    assert short["attainment"] == pytest.approx(0.5)
    # burn rate = error ratio / error budget
    assert short["error_budget_burn_rate"] == pytest.approx(0.5 / 0.01)
    assert long["error_budget_burn_rate"] == pytest.approx(0.25 / 0.01)
    assert short["meets_objective"] is False
    assert short["latency"]["ttft_ms"]["count"] == 10
    assert short["latency"]["ttft_ms"]["p50"] == pytest.approx(500.0)  # halfway between 100 and 900 ms
    assert long["latency"]["ttft_ms"]["p90"] == pytest.approx(900.0)
    assert tracker.report(model="x")["series"] == []


def test_old_seconds_leave_the_long_window() -> None:
    tracker = SLOTracker(SLOConfig(short_window_s=10, long_window_s=100))
    for end in (0.0, 50.0, 1000.0):
        trace = streamed()
        trace.end = end
        tracker.record("m", "", trace, judge(trace, SLOTargets()))
    assert len(tracker._windows[("m", "")].seconds) == 1  # memory stays bounded by the long window
    assert tracker.report(now=1000.5)["series"][0]["windows"]["long"]["requests"] == 1
