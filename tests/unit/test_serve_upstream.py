"""serve/upstream.py in isolation: the client writer keeps order and applies backpressure when the server's send
has to wait, and the streaming pool reuses kept-alive engine connections. The relay through the whole gateway is
tested in test_gateway_stream.py (stub upstream) and tests/e2e (real vLLM)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from vlmgate.serve.engines.process import free_port
from vlmgate.serve.lifecycle import RequestTrace
from vlmgate.serve.upstream import ClientWriter, UpstreamPool


class SlowServer:
    """An ASGI `send` that completes at once, except when told to make a write wait (a client that reads slowly)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.gate: asyncio.Event | None = None

    async def send(self, message: dict) -> None:
        if self.gate is not None:
            await self.gate.wait()
            await asyncio.sleep(0)  # a bare yield too
        self.received.append(message["body"])


async def test_writes_go_out_at_once_then_queue_in_order_behind_a_waiting_one() -> None:
    server, paused = SlowServer(), []
    writer = ClientWriter(server.send, lambda: paused.append(True), lambda: paused.append(False))
    writer.write(b"a")
    assert server.received == [b"a"]  # synchronous: no task, no loop turn
    server.gate = asyncio.Event()
    writer.write(b"b")  # has to wait
    writer.write(b"c")
    writer.write(b"d")
    assert server.received == [b"a"]
    assert paused == [True]  # reading from the engine stops meanwhile
    server.gate.set()
    await writer.flush()
    server.gate = None
    writer.write(b"e")
    assert b"".join(server.received) == b"abcde"
    assert paused == [True, False]
    assert writer.error is None


async def test_a_send_that_fails_is_recorded_not_raised_into_the_engine_callback() -> None:
    async def refuse(message: dict) -> None:
        raise RuntimeError("client gone")

    writer = ClientWriter(refuse, lambda: None, lambda: None)
    writer.write(b"x")
    assert isinstance(writer.error, RuntimeError)


@pytest.fixture
async def engine_stub():
    """An engine stub that streams three events and counts the TCP connections it accepted."""
    connections: set[int] = set()

    async def chat(request: web.Request) -> web.StreamResponse:
        connections.add(id(request.transport))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"t%d"}}]}\n\n' % i)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", connections
    await runner.cleanup()


class _Engine:
    def __init__(self, url: str) -> None:
        self.base_url = url

    def auth_headers(self) -> dict[str, str]:
        return {}


async def test_pool_streams_events_and_reuses_the_kept_alive_connection(engine_stub) -> None:
    url, connections = engine_stub
    pool = UpstreamPool(_Engine(url), request_timeout_s=10)  # type: ignore[arg-type]
    for _ in range(3):
        trace, got = RequestTrace(model="m"), []
        connection = await pool.open("/v1/chat/completions", {"stream": True}, trace, client_wants_usage=False)
        connection.attach(got.append)
        await connection.finished
        pool.release(connection)
        assert b"".join(got).count(b"data: ") == 4
        assert trace.token_events == 3
    assert len(connections) == 1  # one engine connection served all three
    pool.close()


@pytest.mark.parametrize(
    "event",
    [
        {"choices": [{"index": 0, "delta": {"content": "red"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]},  # a token decoding to ""
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},  # the role announcement
        {"choices": [{"index": 0, "delta": {"content": '"delta":{"content":"'}}]},  # that text, generated
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": '"delta":{"content":"'}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]},
        {"choices": [{"index": 0, "delta": {"content": None, "tool_calls": [{"index": 0}]}}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        {"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
        {"choices": [{"index": 0, "delta": {"content": "x"}}], "error": {"message": "boom"}},
    ],
)
def test_token_events_are_told_apart_as_the_shared_rule_says(event: dict) -> None:
    from vlmgate.serve.proxy import _inspect_event
    from vlmgate.streaming import carries_token

    for encoded in (json.dumps(event, separators=(",", ":")), json.dumps(event)):  # vLLM's compact form and not
        trace = RequestTrace(model="m")
        kept = _inspect_event(b"data: " + encoded.encode(), trace)
        expected = any(carries_token(c.get("delta") or {}) for c in event["choices"])
        assert trace.token_events == int(expected), encoded
        assert kept == bool(event["choices"] or not event.get("usage"))
        if event.get("usage"):
            assert trace.completion_tokens == event["usage"]["completion_tokens"]
