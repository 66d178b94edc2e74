"""What counts as a generated token in an OpenAI-compatible chat stream: one rule for the gateway's own timing
(serve/proxy.py) and the load tester's (loadtest/client.py), so their TTFT/TPOT agree."""

from __future__ import annotations

from typing import Any


def carries_token(delta: dict[str, Any]) -> bool:
    """True for a chunk that stands for a generated token.

    vLLM sends one chunk per token even when it decodes to "" (a special token, half a UTF-8 character), so empty
    content counts; only the opening role announcement ({"role": ..., "content": ""}) and content-less chunks (a
    bare finish_reason) do not.
    """
    if delta.get("tool_calls") or delta.get("reasoning_content") or delta.get("reasoning"):
        return True
    content = delta.get("content")
    return content is not None and (bool(content) or "role" not in delta)
