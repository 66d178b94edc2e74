"""The gateway's relay against a STUB upstream (an aiohttp app that speaks the OpenAI streaming protocol), so that
the mechanics are shown without an engine: usage events kept or dropped as the client asked, engine errors mapped,
an unreachable engine is a 503, and a client that hangs up makes the gateway close the upstream connection.
The same behaviours are checked on the real engine in tests/e2e/."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import uvicorn
from aiohttp import web

from vlmgate.serve.app import create_app
from vlmgate.serve.config import load_config
from vlmgate.serve.engines.process import free_port
from vlmgate.serve.upstream import ClientWriter

TOKENS = 40


class StubUpstream:
    def __init__(self) -> None:
        self.sent_tokens: list[int] = []  # tokens written per streaming request
        self.fail_status: int | None = None
        self.first_token_delay_s = 0.0  # "prefill" time before the first token
        self.ended: list[str] = []  # per streaming request: "complete" or "aborted" (the gateway hung up)
        self.raw_stream: bytes | None = None  # if set, written as is, in raw_piece-byte writes
        self.raw_piece = 7  # (7: events split anywhere)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "stub"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.fail_status:
            return web.json_response({"object": "error", "message": "stub says no", "type": "BadRequestError"},
                                     status=self.fail_status)  # fmt: skip
        if not body.get("stream"):
            return web.json_response({"choices": [{"message": {"content": "hi"}}],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": 1}})  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.raw_stream is not None:
            for start in range(0, len(self.raw_stream), self.raw_piece):
                await resp.write(self.raw_stream[start : start + self.raw_piece])
            return resp
        sent = 0
        self.sent_tokens.append(0)
        try:
            await asyncio.sleep(self.first_token_delay_s)
            for i in range(TOKENS):
                chunk = {"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                sent += 1
                self.sent_tokens[-1] = sent
                await asyncio.sleep(0.02)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": TOKENS}}
                await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            self.ended.append("complete")
        except (ConnectionResetError, asyncio.CancelledError):
            self.ended.append("aborted")
            raise
        return resp


@pytest.fixture
async def stack():
    stub = StubUpstream()
    runner = web.AppRunner(stub.app(), handler_cancellation=True)  # a client hang-up cancels the handler
    await runner.setup()
    stub_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", stub_port).start()
    config = load_config(
        overrides={"models": [{"path": "/stub", "name": "stub", "engine": {"url": f"http://127.0.0.1:{stub_port}"}}],
                   "adapters.store_dir": "/tmp/vlmgate-unit-store"},
        environ={},
    )  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield stub, f"http://127.0.0.1:{port}", runner
    server.should_exit = True
    await task
    await runner.cleanup()


def _body(stream: bool, **extra: object) -> dict:
    return {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


async def _events(client: httpx.AsyncClient, url: str, body: dict) -> list[str]:
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]


async def test_usage_event_only_when_the_client_asked(stack) -> None:
    _, url, _ = stack
    async with httpx.AsyncClient(timeout=30) as client:
        plain = await _events(client, url, _body(True))
        with_usage = await _events(client, url, _body(True, stream_options={"include_usage": True}))
    assert plain[-1] == "[DONE]"
    assert len(plain) == TOKENS + 1
    assert all("usage" not in e for e in plain)
    assert json.loads(with_usage[-2])["usage"]["completion_tokens"] == TOKENS


async def test_client_disconnect_closes_the_upstream(stack) -> None:
    stub, url, _ = stack
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=_body(True)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break
        await asyncio.sleep(0.5)  # the stub would have written ~25 more tokens by now had nobody stopped it
    await asyncio.sleep(TOKENS * 0.02)
    assert stub.sent_tokens[-1] < TOKENS // 2


async def test_client_hanging_up_before_the_first_token_aborts_the_upstream(stack) -> None:
    # While the engine is still on the prompt nothing is being written to the client, so only a watch on the
    # client connection can notice the hang-up: the upstream request must end long before its first token.
    stub, url, _ = stack
    stub.first_token_delay_s = 60
    async with httpx.AsyncClient(timeout=30) as client:
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", f"{url}/v1/chat/completions", json=_body(True), timeout=1) as r:
                await r.aread()
    for _ in range(200):  # up to 20 s, a third of the stub's prefill
        if stub.ended:
            break
        await asyncio.sleep(0.1)
    assert stub.ended == ["aborted"]
    assert stub.sent_tokens == [0]


async def test_events_split_across_reads_arrive_whole_and_in_order(stack) -> None:
    stub, url, _ = stack
    events = [{"choices": [{"index": 0, "delta": {"content": f"w{i}"}}]} for i in range(12)]
    usage = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 12}}
    stub.raw_stream = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in [*events, usage]) + b"data: [DONE]\n\n"
    async with httpx.AsyncClient(timeout=30) as client:
        plain = await _events(client, url, _body(True))
        with_usage = await _events(client, url, _body(True, stream_options={"include_usage": True}))
    assert plain == [json.dumps(e) for e in events] + ["[DONE]"]
    assert with_usage == [json.dumps(e) for e in [*events, usage]] + ["[DONE]"]


async def test_a_slow_client_gets_every_event_in_order(stack, monkeypatch) -> None:
    # ~12 MB of events arrive from the engine at once while the client does not read: the server's buffer fills,
    # the gateway's writes have to wait (and its engine reads pause); then the client reads everything.
    stub, url, _ = stack
    events = [{"choices": [{"index": 0, "delta": {"content": f"{i:05d}" + "x" * 600}}]} for i in range(20000)]
    stub.raw_stream = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
    stub.raw_piece = 65536
    waited = []  # writes that had to wait for the client (the backpressure path of serve/upstream.py)
    finish = ClientWriter._finish

    async def counted(self, *args):
        waited.append(1)
        await finish(self, *args)

    monkeypatch.setattr(ClientWriter, "_finish", counted)
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=_body(True)) as r,
    ):
        await asyncio.sleep(1.5)
        got = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
    assert waited
    assert got == [json.dumps(e) for e in events] + ["[DONE]"]


async def test_engine_errors_keep_their_4xx_in_openai_shape(stack) -> None:
    stub, url, _ = stack
    stub.fail_status = 400
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{url}/v1/chat/completions", json=_body(False))
    assert reply.status_code == 400
    assert reply.json()["error"] == {"message": "stub says no", "type": "invalid_request_error", "param": None,
                                     "code": None}  # fmt: skip


async def test_engine_5xx_becomes_502(stack) -> None:
    stub, url, _ = stack
    stub.fail_status = 500
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{url}/v1/chat/completions", json=_body(True))
    assert reply.status_code == 502
    assert reply.json()["error"]["type"] == "upstream_error"


async def test_unreachable_engine_is_a_retryable_503(stack) -> None:
    _, url, stub_runner = stack
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(f"{url}/v1/chat/completions", json=_body(False))).status_code == 200
        await stub_runner.cleanup()  # the upstream goes away
        reply = await client.post(f"{url}/v1/chat/completions", json=_body(False))
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "engine_unavailable"
    assert "retry-after" in reply.headers
