"""A STUB OpenAI-compatible upstream with known, fixed latencies, for unit tests and the generator self-benchmark.

It is not a model: it streams `max_tokens` placeholder tokens, the first after --ttft-ms and the rest every
--itl-ms, in vLLM's chunk layout (role chunk, one chunk per token, usage chunk, [DONE]). It keeps a log of
its own timings (GET /stub/log) and a vLLM-style /metrics, so a client's figures can be checked against the
truth. Model names trigger failures: `fail-<status>` answers that HTTP status, `truncate` ends the stream
without [DONE].

Run as: python -m vlmgate.loadtest.stub --port 9100 --ttft-ms 20 --itl-ms 5
In-process (own thread and event loop): with StubUpstream(ttft_ms=20, itl_ms=5) as url: ...
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class StubState:
    ttft_ms: float
    itl_ms: float
    log: list[dict] = field(default_factory=list)  # per request: received, first_write, last_write (perf_counter)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    successes: int = 0


STATE = web.AppKey("state", StubState)


def _chunk(content: dict | None, usage: dict | None = None) -> bytes:
    body = {"object": "chat.completion.chunk", "model": "stub",
            "choices": [{"index": 0, "delta": content}] if content is not None else []}  # fmt: skip
    if usage:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def chat(request: web.Request) -> web.StreamResponse:
    received = time.perf_counter()
    state: StubState = request.app[STATE]
    body = await request.json()
    model = str(body.get("model", ""))
    if model.startswith("fail-"):
        status = int(model.removeprefix("fail-"))
        return web.json_response({"error": {"message": "stub failure", "code": status}}, status=status)
    tokens = int(body.get("max_tokens") or 16)
    prompt_tokens = len(orjson.dumps(body.get("messages"))) // 4  # a stand-in, stable per prompt
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk({"role": "assistant", "content": ""}))
    first = received + state.ttft_ms / 1000
    entry = {"received": received}
    for i in range(tokens):
        await _sleep_until(first + i * state.itl_ms / 1000)
        await response.write(_chunk({"content": f" t{i}"}))
        entry.setdefault("first_write", time.perf_counter())
        entry["last_write"] = time.perf_counter()
    if model != "truncate":
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
        await response.write(_chunk(None, usage) + b"data: [DONE]\n\n")
        state.prompt_tokens += prompt_tokens
        state.generation_tokens += tokens
        state.successes += 1
    state.log.append(entry)
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model", "root": "stub"}]})


async def metrics(request: web.Request) -> web.Response:
    """Counters in vLLM's names, and a TTFT histogram of the stub's own first-write times."""
    state: StubState = request.app[STATE]
    ttfts = [e["first_write"] - e["received"] for e in state.log if "first_write" in e]
    lines = [f"vllm:prompt_tokens_total {state.prompt_tokens}",
             f"vllm:generation_tokens_total {state.generation_tokens}",
             f'vllm:request_success_total{{finished_reason="length"}} {state.successes}']  # fmt: skip
    for bound in (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5):
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{le="{bound}"}} {sum(t <= bound for t in ttfts)}')
    name = "vllm:time_to_first_token_seconds"
    lines += [f'{name}_bucket{{le="+Inf"}} {len(ttfts)}', f"{name}_count {len(ttfts)}", f"{name}_sum {sum(ttfts)}"]
    return web.Response(text="\n".join(lines) + "\n")


async def stub_log(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].log)


def make_app(ttft_ms: float, itl_ms: float) -> web.Application:
    app = web.Application()
    app[STATE] = StubState(ttft_ms, itl_ms)
    app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models),
                    web.get("/metrics", metrics), web.get("/stub/log", stub_log)])  # fmt: skip
    return app


class StubUpstream:
    """The stub served from a background thread with its own event loop; the context value is its base URL."""

    def __init__(self, ttft_ms: float = 20.0, itl_ms: float = 5.0):
        self.app = make_app(ttft_ms, itl_ms)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    @property
    def state(self) -> StubState:
        return self.app[STATE]

    async def _start(self) -> str:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # port 0 = let the OS pick a free one
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmgate.loadtest.stub", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=9100, help="port to listen on (default 9100)")
    p.add_argument("--ttft-ms", type=float, default=20.0, help="time to the first token (default 20)")
    p.add_argument("--itl-ms", type=float, default=5.0, help="time between tokens (default 5)")
    args = p.parse_args(argv)
    web.run_app(make_app(args.ttft_ms, args.itl_ms), host="127.0.0.1", port=args.port, access_log=None,
                print=lambda *_: print(f"stub upstream on http://127.0.0.1:{args.port}", flush=True))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
