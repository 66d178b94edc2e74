"""The demo's gateway client against a stub gateway (httpx.MockTransport): streaming, timing, errors, admin."""

from __future__ import annotations

import json

import httpx
import pytest

from vlmgate.ui.client import AnswerStats, GatewayClient, GatewayError, error_from_response, parse_sse_line


def sse(*chunks: dict | str) -> bytes:
    lines = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    return "".join(lines).encode()


def delta(text: str, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


STREAM = sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    delta("A red "),
    delta("circle."),
    delta("", "stop"),
    {"choices": [], "usage": {"prompt_tokens": 57, "completion_tokens": 3, "total_tokens": 60}},
    "[DONE]",
)


def stub(handler) -> GatewayClient:
    return GatewayClient("http://gw.test/v1", api_key="sk-user", admin_key="sk-admin",
                         transport=httpx.MockTransport(handler))  # fmt: skip


def error_response(status: int, message: str, code: str | None = None, headers: dict | None = None) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


async def collect(client: GatewayClient, model: str = "vlmgate-demo") -> list:
    return [item async for item in client.stream_chat(model, [{"role": "user", "content": "hi"}], max_tokens=5)]


async def test_stream_yields_deltas_then_stats_and_sends_what_the_gateway_expects() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})

    items = await collect(stub(handler))
    assert items[:-1] == ["A red ", "circle."]
    stats = items[-1]
    assert isinstance(stats, AnswerStats)
    assert (stats.prompt_tokens, stats.completion_tokens, stats.finish_reason) == (57, 3, "stop")
    assert stats.ttft_s is not None
    assert stats.e2e_s >= stats.ttft_s
    # The /v1 suffix is accepted and not doubled; the inference key is the bearer token; usage is requested.
    assert str(seen[0].url) == "http://gw.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-user"
    body = json.loads(seen[0].content)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"]) == ("vlmgate-demo", 5)
    assert "ignore_eos" not in body


async def test_exact_tokens_asks_the_engine_to_ignore_end_of_sequence() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=STREAM)

    [_ async for _ in stub(handler).stream_chat("m", [], max_tokens=9, ignore_eos=True)]
    assert bodies[0]["ignore_eos"] is True


@pytest.mark.parametrize(
    ("status", "code", "expected_hint"),
    [
        (400, "invalid_image", ""),
        (404, "model_not_found", "Refresh the model list"),
        (413, "payload_too_large", "smaller image"),
        (401, "invalid_api_key", "API key"),
    ],
)
async def test_http_errors_become_readable_gateway_errors(status: int, code: str, expected_hint: str) -> None:
    client = stub(lambda request: error_response(status, f"the gateway says {code}", code))
    with pytest.raises(GatewayError) as info:
        await collect(client)
    err = info.value
    assert (err.status, err.code) == (status, code)
    assert f"the gateway says {code}" in err.readable()
    assert f"Gateway error {status} ({code})" in err.readable()
    assert expected_hint in err.readable()


async def test_rate_limit_error_carries_retry_after() -> None:
    client = stub(lambda request: error_response(429, "Too many requests queued.", "rate_limit_exceeded",
                                                 {"Retry-After": "3"}))  # fmt: skip
    with pytest.raises(GatewayError) as info:
        await collect(client)
    assert info.value.retry_after_s == 3.0
    assert "retry after 3 s" in info.value.readable()


async def test_error_event_inside_a_200_stream_raises() -> None:
    body = sse(delta("par"), {"error": {"message": "engine died", "type": "server_error", "code": 500}})
    client = stub(lambda request: httpx.Response(200, content=body))
    got: list = []

    async def consume() -> None:
        async for item in client.stream_chat("m", []):
            got.append(item)

    with pytest.raises(GatewayError, match="engine died"):
        await consume()
    assert got == ["par"]


async def test_unreachable_gateway_is_a_readable_error_not_an_exception_zoo() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(GatewayError) as info:
        await stub(handler).models()
    assert info.value.status is None
    assert "Could not reach the gateway at http://gw.test" in info.value.readable()


async def test_models_marks_adapters_by_parent() -> None:
    payload = {"object": "list", "data": [{"id": "base", "root": "/m", "parent": None},
                                          {"id": "shapes", "root": "/a", "parent": "base"}]}  # fmt: skip
    models = await stub(lambda request: httpx.Response(200, json=payload)).models()
    assert [(m.id, m.is_adapter) for m in models] == [("base", False), ("shapes", True)]
    assert models[1].label == "shapes  (adapter on base)"


async def test_admin_calls_use_the_admin_key_and_the_documented_routes() -> None:
    seen: list[tuple[str, str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization", ""), request.content))
        if request.method == "GET":
            return httpx.Response(200, json={"object": "list", "data": [{"name": "a", "state": "live"}]})
        return httpx.Response(201 if request.method == "POST" else 200, json={"name": "a", "state": "live"})

    client = stub(handler)
    assert await client.adapters() == [{"name": "a", "state": "live"}]
    await client.register_adapter("a", "/store/a", version="2", pinned=True)
    await client.remove_adapter("a", admin_key="typed-in-ui")
    assert [(m, p, k) for m, p, k, _ in seen] == [
        ("GET", "/v1/adapters", "Bearer sk-admin"),
        ("POST", "/v1/adapters", "Bearer sk-admin"),
        ("DELETE", "/v1/adapters/a", "Bearer typed-in-ui"),
    ]
    assert json.loads(seen[1][3]) == {"name": "a", "path": "/store/a", "pinned": True, "version": "2"}


def test_error_parsing_tolerates_non_openai_bodies() -> None:
    assert error_from_response(502, b"<html>Bad Gateway</html>").message == "<html>Bad Gateway</html>"
    assert error_from_response(422, b'{"detail": "field required"}').message == "field required"
    assert error_from_response(500, b"").message == "Internal Server Error"


def test_sse_parsing_skips_keepalives_and_done() -> None:
    assert parse_sse_line(": ping") is None
    assert parse_sse_line("data: [DONE]") is None
    assert parse_sse_line("data: not json") is None
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}


def test_tokens_per_second_excludes_the_first_token() -> None:
    stats = AnswerStats(model="m", ttft_s=0.5, e2e_s=1.5, completion_tokens=11)
    assert stats.tokens_per_s == pytest.approx(10.0)
    assert AnswerStats(model="m", ttft_s=0.5, e2e_s=0.9, completion_tokens=1).tokens_per_s is None
