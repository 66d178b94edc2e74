"""/metrics, /v1/slo and admission through the real gateway app, in process, in front of a STUB upstream.

The stub (vlmgate.loadtest.stub) streams placeholder tokens with fixed delays; it is not a model. Two base models
point at it: "fast" with the default targets and "strict" with a first-token target no request can meet, so
/v1/slo must show one attained and one violated. The real-engine version of these checks is
tests/e2e/test_metrics_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vlmgate.loadtest.stub import StubUpstream
from vlmgate.serve.app import create_app
from vlmgate.serve.config import GatewayConfig, load_config
from vlmgate.serve.engines.base import Engine, EngineCapabilities


class StubEngine(Engine):
    """An engine attached to the stub upstream (always ready)."""

    kind = "stub"

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, f"stub/{name}")
        self._url = url

    @property
    def base_url(self) -> str:
        return self._url

    async def start(self) -> None:
        await self._set_ready(True)

    async def stop(self) -> None:
        pass

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(max_model_len=2048)


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    with StubUpstream(ttft_ms=5, itl_ms=2) as url:
        yield url


def app_config(tmp_path, **overrides: object) -> GatewayConfig:
    data: dict[str, object] = {
        "models": [{"path": "stub", "name": "fast"}, {"path": "stub", "name": "strict"}],
        "slo.models": {"strict": {"ttft_ms": 0.001}},
        **overrides,
    }
    if "adapters" in GatewayConfig.model_fields:  # the adapter registry keeps its files in a store directory
        data["adapters.store_dir"] = str(tmp_path / "store")
    return load_config(None, data, environ={})


@pytest.fixture
async def client(stub_url: str, tmp_path, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    overrides = getattr(request, "param", {})
    config = app_config(tmp_path, **overrides)
    app = create_app(config, engines={name: StubEngine(name, stub_url) for name in ("fast", "strict")})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as http:
            yield http


def chat(model: str, tokens: int = 4, stream: bool = True) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "stream": stream}


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await http.get("/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_known_traffic_gives_exact_counts_per_model_and_status(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=chat("fast", tokens=5))).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat("strict", tokens=2))).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat("nope"))).status_code == 404
    m = await scrape(client)
    fast = {"model": "fast", "adapter": ""}
    assert sample(m, "vlmgate_requests_total", **fast, status="200") == 3
    assert sample(m, "vlmgate_requests_total", model="", adapter="", status="404") == 1
    assert sample(m, "vlmgate_generation_tokens_total", **fast) == 15
    assert sample(m, "vlmgate_time_to_first_token_seconds_count", **fast) == 3
    assert sample(m, "vlmgate_time_per_output_token_seconds_count", **fast) == 3
    assert sample(m, "vlmgate_inter_token_latency_seconds_count", **fast) == 3 * 4  # 5 tokens, 4 gaps each
    assert sample(m, "vlmgate_e2e_request_latency_seconds_count", **fast) == 3
    assert sample(m, "vlmgate_queue_time_seconds_count", **fast) == 3
    assert sample(m, "vlmgate_e2e_request_latency_seconds_count", model="strict", adapter="") == 1
    assert sample(m, "vlmgate_slo_requests_total", **fast, result="met") == 3
    assert sample(m, "vlmgate_slo_requests_total", model="strict", adapter="", result="missed") == 1
    assert sample(m, "vlmgate_slo_objective", **fast) == 0.99
    assert sample(m, "vlmgate_requests_in_flight") == 0
    assert m[("process_cpu_seconds_total", ())] > 0


async def test_slo_report_shows_the_violated_target_and_the_met_one(client: httpx.AsyncClient) -> None:
    for model in ("fast", "strict", "strict"):
        assert (await client.post("/v1/chat/completions", json=chat(model))).status_code == 200
    report = (await client.get("/v1/slo")).json()
    by_model = {s["model"]: s for s in report["series"]}
    strict, fast = by_model["strict"]["windows"]["short"], by_model["fast"]["windows"]["short"]
    assert by_model["strict"]["targets"]["ttft_ms"] == 0.001
    assert (strict["requests"], strict["met"], strict["misses_by_target"]["ttft"]) == (2, 0, 2)
    assert strict["attainment"] == 0
    assert strict["meets_objective"] is False
    assert strict["error_budget_burn_rate"] == pytest.approx(100.0)  # all missed / 1% budget
    assert (fast["requests"], fast["attainment"], fast["error_budget_burn_rate"]) == (1, 1.0, 0.0)
    assert fast["latency"]["ttft_ms"]["count"] == 1
    only = (await client.get("/v1/slo", params={"model": "fast"})).json()["series"]
    assert [s["model"] for s in only] == ["fast"]


@pytest.mark.parametrize("client", [{"admission": {"max_concurrent": 2, "max_queue": 2}}], indirect=True)
async def test_overload_is_shed_with_429_while_admitted_requests_complete(client: httpx.AsyncClient) -> None:
    replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat("fast", 20)) for _ in range(8)))
    ok = [r for r in replies if r.status_code == 200]
    shed = [r for r in replies if r.status_code == 429]
    assert (len(ok), len(shed)) == (4, 4)  # 2 running + 2 queued; the rest turned away at once
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in ok)  # admitted streams ran to the end
    assert {r.headers["retry-after"] for r in shed} == {"1"}
    assert shed[0].json()["error"]["type"] == "rate_limit_error"
    m = await scrape(client)
    assert sample(m, "vlmgate_admission_rejections_total", reason="queue_full") == 4
    assert sample(m, "vlmgate_requests_total", model="fast", adapter="", status="429") == 4
    assert sample(m, "vlmgate_slo_requests_total", model="fast", adapter="", result="missed") == 4
    # queued requests waited for a slot, and that wait is in their queue time
    assert sample(m, "vlmgate_queue_time_seconds_count", model="fast", adapter="") == 4
    assert sample(m, "vlmgate_queue_time_seconds_bucket", model="fast", adapter="", le="0.01") < 4
