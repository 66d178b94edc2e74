"""Relay a validated chat request to an engine and its answer back, timing it on the way.

Non-streaming answers are passed through as bytes (parsed once, only for usage). Streaming answers are relayed
event by event as they arrive, by serve/upstream.py (`EventFilter` here decides what goes out); the gateway always
asks the engine for usage (so that its metrics have token counts) and drops that final usage event when the
client did not ask for it. If the client disconnects, serve/chat.py closes the upstream connection, which makes
vLLM abort the request: no tokens are generated for nobody.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import aiohttp
import orjson

from vlmgate.serve.engines.base import Engine
from vlmgate.serve.errors import APIError, EngineUnavailableError, UpstreamError, from_engine_response
from vlmgate.serve.lifecycle import RequestTrace
from vlmgate.streaming import carries_token

log = logging.getLogger(__name__)

_DONE = b"data: [DONE]"


class EngineClient:
    """HTTP client for one engine's OpenAI-compatible API, with a pooled keep-alive connection set.

    The engine's URL is read on every request: a restarted engine may listen on a new port."""

    def __init__(self, engine: Engine, request_timeout_s: float) -> None:
        self.engine = engine
        self._session = aiohttp.ClientSession(
            # Idle connections are dropped before the engine's own keep-alive timeout (vLLM: 5 s) can close them
            # under us.
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=3),
            timeout=aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=10),
            json_serialize=lambda o: orjson.dumps(o).decode(),
            skip_auto_headers=("User-Agent",),
            headers=engine.auth_headers(),
        )

    async def close(self) -> None:
        await self._session.close()

    async def open(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST body and return the response once its headers arrived; 4xx/5xx are raised as APIError."""
        data = orjson.dumps(body)
        for attempt in (1, 2):
            try:
                resp = await self._session.post(
                    f"{self.engine.base_url}{path}", data=data, headers={"Content-Type": "application/json"}
                )
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled keep-alive connection the engine closed just as we reused it fails before the request
                # is read: one retry on a fresh connection. A second failure means the engine is really gone.
                if attempt == 1:
                    continue
                raise EngineUnavailableError.unreachable(exc) from None
            except TimeoutError:
                raise UpstreamError("The engine did not answer in time.", status=504, code="engine_timeout") from None
        if resp.status != 200:
            try:
                payload = await resp.read()
            finally:
                resp.release()
            raise from_engine_response(resp.status, payload)
        return resp


async def complete(client: EngineClient, body: dict[str, Any], trace: RequestTrace) -> bytes:
    """Non-streaming completion: returns the engine's JSON bytes unchanged."""
    resp = await client.open("/v1/chat/completions", body)
    try:
        payload = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(f"The engine connection failed mid-response ({exc.__class__.__name__}).") from None
    finally:
        resp.release()
    now = time.perf_counter()
    trace.first_token = trace.last_token = now
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        usage = orjson.loads(payload).get("usage") or {}
        trace.prompt_tokens = usage.get("prompt_tokens")
        trace.completion_tokens = usage.get("completion_tokens")
    return payload


class EventFilter:
    """Splits the engine's SSE byte stream into events and returns what to forward, batched per read.

    Token events are timed on the way (trace.token); the usage-only event is dropped unless the client asked for
    it; `done` turns true at `data: [DONE]`. An event split across reads is held until its end arrives."""

    def __init__(self, trace: RequestTrace, client_wants_usage: bool) -> None:
        self.trace = trace
        self.client_wants_usage = client_wants_usage
        self.done = False
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        buffer = self._buffer + chunk if self._buffer else chunk
        out = []
        start = 0
        while (cut := buffer.find(b"\n\n", start)) >= 0:
            event = buffer[start:cut]
            start = cut + 2
            if not event.strip():
                continue
            if event.startswith(_DONE):
                self.done = True
                out.append(event + b"\n\n")
                break
            if _inspect_event(event, self.trace) or self.client_wants_usage:
                out.append(event + b"\n\n")
        self._buffer = buffer[start:] if not self.done else b""
        return b"".join(out)


# vLLM's token chunk: a delta whose content is a string and that announces no role. Unescaped quotes only occur in
# JSON structure (never inside a string value), so these bytes cannot come from generated text.
_TOKEN_DELTA = b'"delta":{"content":"'


def _inspect_event(event: bytes, trace: RequestTrace) -> bool:
    """Record timing/usage from one `data: {...}` event. Returns False for a usage-only event."""
    now = time.perf_counter()
    if _TOKEN_DELTA in event and b'"role"' not in event and b'"usage"' not in event and b'"error"' not in event:
        trace.token(now)  # the common case, decided without parsing: what carries_token says of such a delta
        return True
    try:
        data = orjson.loads(event[5:] if event.startswith(b"data:") else event)
    except orjson.JSONDecodeError:
        return True
    if not isinstance(data, dict):
        return True
    usage = data.get("usage")
    if usage:
        trace.prompt_tokens = usage.get("prompt_tokens")
        trace.completion_tokens = usage.get("completion_tokens")
    choices = data.get("choices")
    if not choices:
        return not usage  # the final usage-only event
    if "error" in data:
        trace.status, trace.error_type = 500, "engine_error"
    for choice in choices:
        if carries_token(choice.get("delta") or {}):
            trace.token(now)
            break
    return True


def error_event(error: APIError) -> bytes:
    return b"data: " + error.json_bytes() + b"\n\n"
