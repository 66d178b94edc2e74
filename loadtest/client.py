"""Send one streaming chat completion and time it from the client side.

Definitions (all times from `time.perf_counter()`, taken as each SSE line arrives):
- TTFT: request sent -> first SSE chunk carrying generated tokens (content, even "", reasoning or tool call;
  not the opening role announcement).
- ITL: gaps between consecutive token chunks (a chunk holding several tokens counts once, as in vLLM).
- E2E: request sent -> last token chunk (the trailing usage chunk and [DONE] carry no token; vLLM's
  benchmark ends the request at the same place, which keeps TPOT comparable).
- TPOT: (E2E - TTFT) / (output_tokens - 1), the first token excluded, exactly vLLM's convention; undefined
  for a single-token reply. output_tokens is usage.completion_tokens (stream_options.include_usage), or the
  number of token chunks when the server sends no usage.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from vlmgate.streaming import carries_token


@dataclass
class RequestRecord:
    """Client-side timings and outcome of one request (times in seconds)."""

    index: int
    model: str
    images: int
    scheduled_s: float = 0.0  # intended send time, from the start of the run
    sent_s: float = 0.0  # actual send time, from the start of the run
    ok: bool = False
    error_kind: str | None = None  # http_429, http_4xx, http_5xx, timeout, connection, stream, empty
    error: str | None = None
    status: int | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    tokens_from_usage: bool = False

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.output_tokens < 2 or self.ttft_s is None or self.e2e_s is None:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def max_itl_s(self) -> float | None:
        return max(self.itl_s) if self.itl_s else None


def build_payload(model: str, messages: list[dict], max_tokens: int, temperature: float, ignore_eos: bool) -> bytes:
    body: dict = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: fixed output lengths make latencies comparable
    return orjson.dumps(body)


def _status_kind(status: int) -> str:
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


async def send_chat(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    record: RequestRecord,
    timeout_s: float,
) -> RequestRecord:
    """POST `payload` to `url`, stream the reply, fill `record` in place and return it. Never raises."""
    start = time.perf_counter()
    last = start
    chunks = 0
    done = False
    try:
        async with asyncio.timeout(timeout_s), session.post(url, data=payload, headers=headers) as response:
            record.status = response.status
            if response.status != 200:
                record.error_kind = _status_kind(response.status)
                record.error = (await response.text())[:300]
                return record
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, SSE comments (": ping"), event/id fields
                data = line[5:].strip()
                if data == b"[DONE]" or done:
                    # Read on to the end of the body rather than break: closing a response early drops the
                    # connection, and a gateway would log the request as a client disconnect (499).
                    done = True
                    continue
                now = time.perf_counter()
                chunk = orjson.loads(data)
                if chunk.get("error"):
                    record.error_kind, record.error = "stream", str(chunk["error"])[:300]
                    return record
                choices = chunk.get("choices") or []
                if choices and carries_token(choices[0].get("delta") or {}):
                    if record.ttft_s is None:
                        record.ttft_s = now - start
                    else:
                        record.itl_s.append(now - last)
                    last = now
                    chunks += 1
                if usage := chunk.get("usage"):
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    record.prompt_tokens = usage.get("prompt_tokens")
                    record.tokens_from_usage = True
    except TimeoutError:
        record.error_kind, record.error = "timeout", f"no complete reply within {timeout_s} s"
        return record
    except aiohttp.ClientError as exc:
        record.error_kind, record.error = "connection", f"{type(exc).__name__}: {exc}"[:300]
        return record
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
        record.error_kind, record.error = "stream", f"unparseable SSE chunk: {exc}"[:300]
        return record
    if not done:
        record.error_kind, record.error = "stream", "stream ended without data: [DONE]"
    elif record.ttft_s is None:
        record.error_kind, record.error = "empty", "no chunk carried a generated token"
    else:
        record.ok = True
        record.e2e_s = last - start
        if not record.tokens_from_usage:
            record.output_tokens = chunks
    return record
