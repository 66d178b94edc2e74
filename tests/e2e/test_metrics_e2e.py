"""Monitoring on the real engine: /metrics counts known traffic per model and adapter, /v1/slo reports a target
that is deliberately impossible, and overload is shed with 429 while admitted requests complete.

The session gateway serves the traffic whose counts are checked (as deltas: other tests share it). A second
gateway, attached to the same vLLM (no second engine), has a config of its own: a 1 microsecond first-token
target and one admission slot with one queue place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningGateway, png_data_url, start_gateway, stop_gateway

pytestmark = pytest.mark.engine

MODEL = "vlmgate-demo"
ADAPTER = "metrics-probe"
Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def stream(client: OpenAI, model: str, content: object, max_tokens: int = 6) -> tuple[int, int]:
    """(token chunks, completion tokens) of one streamed greedy answer. A token chunk is any chunk but the opening
    role announcement: vLLM sends one per token, even for a token that decodes to "" (vlmgate/streaming.py)."""
    chunks, tokens = 0, 0
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ):  # fmt: skip
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None and delta.content is not None and (delta.content or delta.role is None):
            chunks += 1
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return chunks, tokens


@pytest.fixture(scope="module")
def probe_adapter(gateway: RunningGateway, adapter_store: Path) -> str:
    """One PEFT adapter registered in the session gateway, so that traffic carries an adapter label."""
    from tests.adapter_factory import make_peft_adapter

    make_peft_adapter(gateway.model_dir, adapter_store / ADAPTER, seed=11)
    reply = httpx.post(f"{gateway.url}/v1/adapters", json={"name": ADAPTER, "path": ADAPTER}, timeout=120)
    assert reply.status_code == 201, reply.text
    return ADAPTER


def test_metrics_count_known_traffic_per_model_and_adapter(gateway: RunningGateway, probe_adapter: str) -> None:
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    before = scrape(gateway.url)
    base = [stream(client, MODEL, "Describe the shape."), stream(client, MODEL, "Name a colour.")]
    image = [{"type": "image_url", "image_url": {"url": png_data_url("blue")}}, {"type": "text", "text": "Colour?"}]
    base.append(stream(client, MODEL, image))
    adapter = [stream(client, probe_adapter, "Describe the shape.", max_tokens=5)]
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    after = scrape(gateway.url)

    b, a = {"model": MODEL, "adapter": ""}, {"model": MODEL, "adapter": probe_adapter}
    assert delta(before, after, "vlmgate_requests_total", **b, status="200") == 4
    assert delta(before, after, "vlmgate_requests_total", **a, status="200") == 1
    assert delta(before, after, "vlmgate_time_to_first_token_seconds_count", **b) == 3  # streaming only
    assert delta(before, after, "vlmgate_time_to_first_token_seconds_count", **a) == 1
    assert delta(before, after, "vlmgate_e2e_request_latency_seconds_count", **b) == 4
    assert delta(before, after, "vlmgate_image_preprocess_seconds_count", **b) == 1
    assert delta(before, after, "vlmgate_inter_token_latency_seconds_count", **b) == sum(c - 1 for c, _ in base)
    assert delta(before, after, "vlmgate_inter_token_latency_seconds_count", **a) == adapter[0][0] - 1
    generated = sum(t for _, t in base) + whole.usage.completion_tokens
    assert delta(before, after, "vlmgate_generation_tokens_total", **b) == generated
    assert delta(before, after, "vlmgate_generation_tokens_total", **a) == adapter[0][1] == 5
    assert (
        delta(before, after, "vlmgate_slo_requests_total", **b, result="met")
        + delta(before, after, "vlmgate_slo_requests_total", **b, result="missed")
        == 4
    )
    assert after[("vlmgate_requests_in_flight", frozenset())] == 0
    # The adapter manager reports through the hooks observability.install wires: the probe adapter was loaded.
    assert after[("vlmgate_adapter_loads_total", frozenset({("result", "ok")}))] >= 1
    assert after[("vlmgate_live_adapters", frozenset({("model", MODEL)}))] >= 1


@pytest.fixture(scope="module")
def strict_gateway(gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A second gateway on the same engine: impossible TTFT target, one admission slot, one queue place."""
    work = tmp_path_factory.mktemp("strict-gateway")
    config = {
        "slo": {"models": {MODEL: {"ttft_ms": 0.001}}},
        "admission": {"max_concurrent": 1, "max_queue": 1, "retry_after_s": 2},
    }
    (work / "gateway.yaml").write_text(yaml.safe_dump(config))
    running = start_gateway(
        gateway.model_dir, work / "gateway.log",
        extra_args=["--engine-url", gateway.engine_url, "--config", str(work / "gateway.yaml")],
        env={"VLMGATE_ADAPTER_STORE": str(work / "store")},
    )  # fmt: skip
    yield running
    stop_gateway(running.process)


def test_slo_report_shows_a_violated_target(strict_gateway: RunningGateway) -> None:
    client = OpenAI(base_url=f"{strict_gateway.url}/v1", api_key="unused", max_retries=0)
    for _ in range(2):
        stream(client, MODEL, "Describe the shape.")
    report = httpx.get(f"{strict_gateway.url}/v1/slo", timeout=30).json()
    [series] = [s for s in report["series"] if s["model"] == MODEL and s["adapter"] == ""]
    short = series["windows"]["short"]
    assert series["targets"]["ttft_ms"] == 0.001
    assert (short["requests"], short["met"], short["misses_by_target"]["ttft"]) == (2, 0, 2)
    assert short["attainment"] == 0
    assert short["meets_objective"] is False
    assert short["error_budget_burn_rate"] == pytest.approx(100.0)
    assert short["latency"]["ttft_ms"]["count"] == 2
    assert short["latency"]["ttft_ms"]["p50"] > 0.001


def test_overload_is_shed_with_429_while_admitted_requests_complete(strict_gateway: RunningGateway) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 48,
            "ignore_eos": True, "stream": True}  # fmt: skip

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=strict_gateway.url, timeout=300) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(6)))

    before = scrape(strict_gateway.url)
    replies = asyncio.run(burst())
    after = scrape(strict_gateway.url)
    ok = [r for r in replies if r.status_code == 200]
    shed = [r for r in replies if r.status_code == 429]
    assert len(ok) + len(shed) == 6
    assert len(ok) >= 2  # the running one and the queued one
    assert len(shed) >= 1  # the rest, arriving while both places were taken, turned away at once
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in ok)
    assert {r.headers["retry-after"] for r in shed} == {"2"}
    assert delta(before, after, "vlmgate_admission_rejections_total", reason="queue_full") == len(shed)
    assert delta(before, after, "vlmgate_requests_total", model=MODEL, adapter="", status="429") == len(shed)
    assert after[("vlmgate_requests_in_flight", frozenset())] == 0
