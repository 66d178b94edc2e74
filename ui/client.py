"""A small typed client of the gateway's public HTTP API, used by the Gradio demo (and handy on its own).

The demo is a client like any other: same routes, same auth headers, same metrics as the `openai` SDK would
produce. This module adds what the UI needs on top of the raw API: answer timing measured from the client side
(time to first token, output tokens/s), OpenAI-style error bodies turned into one exception type with a
readable message, and graceful answers for routes a given gateway does not offer (yet).

Run as: python -m vlmgate.ui.client http://127.0.0.1:8000     (lists the models, as a smoke check)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

# Connecting should be quick; reading may wait for a slow first token on a busy CPU engine.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ModelInfo:
    """One entry of `GET /v1/models`: a base model, or an adapter whose `parent` is its base."""

    id: str
    parent: str | None = None
    root: str | None = None

    @property
    def is_adapter(self) -> bool:
        return bool(self.parent)

    @property
    def label(self) -> str:
        return f"{self.id}  (adapter on {self.parent})" if self.is_adapter else f"{self.id}  (base)"


@dataclass
class AnswerStats:
    """Client-side timing of one streamed answer.

    ttft_s: request sent -> first content token received. e2e_s: request sent -> stream finished.
    tokens_per_s: output tokens after the first, per second after the first (the inverse of the mean time per
    output token, as vLLM and `vlmgate loadtest` define it); None when fewer than two tokens were generated.
    """

    model: str
    ttft_s: float | None = None
    e2e_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if self.ttft_s is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        decode_s = self.e2e_s - self.ttft_s
        return (self.completion_tokens - 1) / decode_s if decode_s > 0 else None


@dataclass
class GatewayError(Exception):
    """Anything that went wrong talking to the gateway, with what the user needs to understand it."""

    message: str
    status: int | None = None  # None: no HTTP answer at all (unreachable, timed out, broken stream)
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.readable()

    @property
    def title(self) -> str:
        if self.status is None:
            return "Gateway unreachable"
        kind = self.code or self.type or "error"
        return f"Gateway error {self.status} ({kind})"

    def readable(self) -> str:
        """One paragraph for a person: what happened, and what to do about it where we can tell."""
        return f"{self.title}: {self.explanation()}"

    def explanation(self) -> str:
        """The gateway's message, then a hint at the fix where the status tells one."""
        hint = {
            401: "Set the API key (Connection settings, or `vlmgate ui --api-key`).",
            403: "This key may not do that; admin actions need the admin key.",
            404: "Refresh the model list: the model or adapter may have been removed.",
            413: "Use a smaller image or fewer images.",
            429: "The gateway is overloaded; try again shortly.",
            503: "The engine is starting or restarting; try again shortly.",
        }.get(self.status or 0, "")
        if self.status == 429 and self.retry_after_s is not None:
            hint = f"The gateway is overloaded; retry after {self.retry_after_s:g} s."
        return " ".join(part for part in (self.message.strip(), hint) if part)


def error_from_response(
    status: int, body: bytes, headers: httpx.Headers | dict[str, str] | None = None
) -> GatewayError:
    """Parse an OpenAI-style error body (or whatever the server sent) into a GatewayError."""
    retry_after = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
    retry_after_s = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        return GatewayError(
            message=str(err.get("message") or "(no message)"),
            status=status,
            type=err.get("type"),
            code=None if err.get("code") is None else str(err.get("code")),
            param=err.get("param"),
            retry_after_s=retry_after_s,
        )
    if isinstance(payload, dict) and "detail" in payload:  # FastAPI's default shape, in case a route uses it
        return GatewayError(message=str(payload["detail"]), status=status, retry_after_s=retry_after_s)
    text = body.decode(errors="replace").strip()[:500] or httpx.codes.get_reason_phrase(status)
    return GatewayError(message=text, status=status, retry_after_s=retry_after_s)


class GatewayClient:
    """Calls the gateway's public API. Stateless between calls; keys may be overridden per call."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        admin_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # tests pass httpx.MockTransport
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):  # accept the OpenAI-style base URL too
            self.base_url = self.base_url[: -len("/v1")]
        self.api_key = api_key or None
        self.admin_key = admin_key or None
        self._transport = transport

    def _http(self) -> httpx.AsyncClient:
        # One client per call: Gradio may run handlers on different event loops, and a client is bound to one.
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=self._transport)

    @staticmethod
    def _auth(key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _request(self, method: str, path: str, key: str | None, body: Any = None) -> Any:
        try:
            async with self._http() as http:
                resp = await http.request(method, path, json=body, headers=self._auth(key))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, resp.content, resp.headers)
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            raise GatewayError(f"{method} {path} answered with non-JSON content.", status=resp.status_code) from None

    def _unreachable(self, exc: Exception) -> GatewayError:
        what = type(exc).__name__
        return GatewayError(f"Could not reach the gateway at {self.base_url} ({what}: {exc}). Is it running?")

    # --- inference API ---------------------------------------------------------------------------------------

    async def models(self, api_key: str | None = None) -> list[ModelInfo]:
        payload = await self._request("GET", "/v1/models", api_key or self.api_key)
        return [
            ModelInfo(id=str(m["id"]), parent=m.get("parent") or None, root=m.get("root"))
            for m in payload.get("data", [])
            if isinstance(m, dict) and m.get("id")
        ]

    async def stream_chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        temperature: float = 0.7,
        max_tokens: int = 256,
        ignore_eos: bool = False,
        api_key: str | None = None,
    ) -> AsyncIterator[str | AnswerStats]:
        """Stream one answer: yields text deltas as they arrive, then one final AnswerStats.

        Closing the generator early (the UI's stop button) closes the HTTP stream, which the gateway treats as a
        client disconnect and stops generation in the engine.
        """
        body = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:  # vLLM's extension, passed through by the gateway: generate exactly max_tokens
            body["ignore_eos"] = True
        stats = AnswerStats(model=model)
        started = time.perf_counter()
        try:
            async with (
                self._http() as http,
                http.stream(
                    "POST", "/v1/chat/completions", json=body, headers=self._auth(api_key or self.api_key)
                ) as resp,
            ):
                if resp.status_code >= 400:
                    raise error_from_response(resp.status_code, await resp.aread(), resp.headers)
                async for line in resp.aiter_lines():
                    chunk = parse_sse_line(line)
                    if chunk is None:
                        continue
                    text = apply_chunk(chunk, stats)
                    if text:
                        if stats.ttft_s is None:
                            stats.ttft_s = time.perf_counter() - started
                        yield text
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        stats.e2e_s = time.perf_counter() - started
        yield stats

    # --- admin API (issue 5) and SLOs (issue 6) --------------------------------------------------------------

    async def adapters(self, admin_key: str | None = None) -> list[dict[str, Any]]:
        payload = await self._request("GET", "/v1/adapters", admin_key or self.admin_key)
        return [a for a in payload.get("data", []) if isinstance(a, dict)]

    async def register_adapter(
        self, name: str, path: str, version: str | None = None, pinned: bool = False, admin_key: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "path": path, "pinned": pinned}
        if version:
            body["version"] = version
        return await self._request("POST", "/v1/adapters", admin_key or self.admin_key, body)

    async def remove_adapter(self, name: str, admin_key: str | None = None) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/adapters/{name}", admin_key or self.admin_key)

    async def slo(self, api_key: str | None = None) -> dict[str, Any]:
        # The gateway guards /v1/slo like the OpenAI routes (inference key), not as an admin route.
        return await self._request("GET", "/v1/slo", api_key or self.api_key)


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """One `data: {...}` line of the SSE stream as a dict; None for keep-alives, comments and `[DONE]`."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if not data or data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def apply_chunk(chunk: dict[str, Any], stats: AnswerStats) -> str:
    """Fold one stream chunk into `stats`; return its text delta. An in-stream error event raises."""
    if isinstance(chunk.get("error"), dict):  # engines report failures after the 200 as an error event
        err = chunk["error"]
        raise GatewayError(
            str(err.get("message", "stream failed")),
            status=err.get("code") if isinstance(err.get("code"), int) else 500,
            type=err.get("type"),
        )
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        stats.prompt_tokens = usage.get("prompt_tokens", stats.prompt_tokens)
        stats.completion_tokens = usage.get("completion_tokens", stats.completion_tokens)
    text = ""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        if choice.get("finish_reason"):
            stats.finish_reason = choice["finish_reason"]
    return text


if __name__ == "__main__":
    import asyncio

    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    for info in asyncio.run(GatewayClient(url).models()):
        print(info.label)
