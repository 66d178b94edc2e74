"""The demo's event handlers against a stub gateway: streaming into the history, errors as messages, comparison,
admin views on gateways with and without the adapter and SLO routes. No browser, no engine."""

from __future__ import annotations

import json
import warnings

import httpx
import pytest

from vlmgate.ui import messages as msgs
from vlmgate.ui.client import AnswerStats, GatewayClient, GatewayError
from vlmgate.ui.handlers import Handlers, coalesce_text, merge_streams


def sse_answer(words: list[str]) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words]
    chunks.append({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": len(words)}})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def gateway(routes: dict[tuple[str, str], httpx.Response | callable], updates_per_s: float = 0) -> Handlers:
    """Handlers on a stub gateway; by default every delta is its own screen update (no merging)."""

    def handler(request: httpx.Request) -> httpx.Response:
        route = routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"error": {"message": "Not Found", "type": "not_found"}})
        return route(request) if callable(route) else route

    client = GatewayClient("http://gw.test", transport=httpx.MockTransport(handler))
    return Handlers(client, max_images=2, updates_per_s=updates_per_s)


def chat_route(request: httpx.Request) -> httpx.Response:
    model = json.loads(request.content)["model"]
    if model == "nope":
        body = {"error": {"message": "The model 'nope' does not exist.", "type": "invalid_request_error",
                          "param": "model", "code": "model_not_found"}}  # fmt: skip
        return httpx.Response(404, json=body)
    return httpx.Response(200, content=sse_answer([f"{model} ", "says ", "hi"]))


@pytest.fixture(autouse=True)
def _quiet_toasts():
    # Outside a Gradio request, gr.Warning falls back to warnings.warn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


async def test_answer_streams_into_history_then_gets_its_timing_note() -> None:
    h = gateway({("POST", "/v1/chat/completions"): chat_route})
    history = [msgs.user_display_message("hello", [])]
    frames = [frame async for frame in h.respond(history, "base", 0.0, 16)]
    partial = [f[-1]["content"] for f in frames[:-1]]
    assert partial == ["base ", "base says ", "base says hi"]  # grows token by token
    final = frames[-1]
    assert final[-2] == {"role": "assistant", "content": "base says hi"}
    assert final[-1]["metadata"]["id"] == msgs.STATS_ID
    assert final[-1]["metadata"]["title"].startswith("base · TTFT")
    assert "3 tokens" in final[-1]["metadata"]["title"]
    assert "40 prompt" in final[-1]["content"]


async def test_a_fast_answer_reaches_the_screen_in_few_updates_and_whole() -> None:
    # One update per 100 s at most: the first delta is shown at once, the rest merged into the next update.
    h = gateway({("POST", "/v1/chat/completions"): chat_route}, updates_per_s=0.01)
    frames = [frame async for frame in h.respond([msgs.user_display_message("hello", [])], "base", 0.0, 16)]
    assert [f[-1]["content"] for f in frames[:-1]] == ["base ", "base says hi"]
    assert frames[-1][-2]["content"] == "base says hi"
    assert frames[-1][-1]["metadata"]["id"] == msgs.STATS_ID


async def test_text_deltas_are_merged_to_at_most_one_per_interval() -> None:
    now, closed = 0.0, []
    stats = AnswerStats(model="m")

    async def deltas():
        nonlocal now
        try:
            for at, item in [(0.0, "a"), (0.02, "b"), (0.05, "c"), (0.11, "d"), (0.12, "e"), (0.13, stats)]:
                now = at
                yield item
        finally:
            closed.append(True)

    got = [item async for item in coalesce_text(deltas(), 0.1, clock=lambda: now)]
    assert got == ["a", "bcd", "e", stats]  # first at once; 'e' is not held back behind the final stats
    assert closed == [True]

    closed.clear()
    merged = coalesce_text(deltas(), 0.1, clock=lambda: now)
    assert await anext(merged) == "a"
    await merged.aclose()
    assert closed == [True]  # closing the merger closes the HTTP stream under it (the stop button)


async def test_text_held_when_the_stream_fails_is_shown_before_the_error() -> None:
    async def failing():
        yield "a"
        yield "b"
        raise GatewayError("connection lost", status=502)

    got = []

    async def collect() -> None:
        async for item in coalesce_text(failing(), 100.0):
            got.append(item)

    with pytest.raises(GatewayError):
        await collect()
    assert got == ["a", "b"]  # 'b' was held for the next update; it is not lost with the failure


async def test_gateway_error_becomes_an_inline_message_and_the_history_survives() -> None:
    h = gateway({("POST", "/v1/chat/completions"): chat_route})
    history = [msgs.user_display_message("hello", [])]
    frames = [frame async for frame in h.respond(history, "nope", 0.0, 16)]
    note = frames[-1][-1]
    assert note["metadata"]["id"] == msgs.ERROR_ID
    assert note["content"].startswith("**⚠ Gateway error 404 (model_not_found)**")
    assert "The model 'nope' does not exist." in note["content"]
    assert frames[-1][0] == history[0]


async def test_add_user_turn_clears_the_box_and_ignores_empty_input() -> None:
    box, history = Handlers.add_user_turn({"text": " hi ", "files": ["/tmp/a.png"]}, [])
    assert box == {"text": "", "files": []}
    assert history == [{"role": "user", "content": [{"path": "/tmp/a.png"}, "hi"]}]
    _, unchanged = Handlers.add_user_turn({"text": "  ", "files": []}, history)
    assert unchanged is history


async def test_compare_streams_both_answers_and_reports_each_side_separately() -> None:
    h = gateway({("POST", "/v1/chat/completions"): chat_route})
    frames = [frame async for frame in h.compare(None, "what?", "base", "nope", 0.0, 8)]
    answer_a, answer_b, note_a, note_b = frames[-1]
    assert answer_a == "base says hi"
    assert answer_b == ""
    assert note_a.startswith("**TTFT")
    assert "model_not_found" in note_b


async def test_refresh_models_fills_all_pickers_and_prefers_an_adapter_for_side_b() -> None:
    models = {"object": "list", "data": [{"id": "base", "parent": None}, {"id": "shapes", "parent": "base"}]}
    h = gateway({("GET", "/v1/models"): httpx.Response(200, json=models)})
    chat, side_a, side_b, status = await h.refresh_models(None)
    assert chat["choices"] == [("base  (base)", "base"), ("shapes  (adapter on base)", "shapes")]
    assert (chat["value"], side_a["value"], side_b["value"]) == ("base", "base", "shapes")
    assert "1 base, 1 adapter(s)" in status


async def test_unreachable_gateway_leaves_pickers_alone_with_a_message() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    h = gateway({("GET", "/v1/models"): down})
    *updates, status = await h.refresh_models("base")
    assert all(u == {"__type__": "update"} for u in updates)
    assert "Could not reach the gateway" in status


async def test_admin_views_explain_routes_this_gateway_lacks() -> None:
    h = gateway({})
    rows, _, status = await h.list_adapters("admin")
    assert rows == []
    assert "no adapter API" in status
    *_, slo_rows, slo_status = await h.slo_status()
    assert slo_rows == []
    assert "does not report SLOs" in slo_status


async def test_admin_lists_registers_and_removes_adapters() -> None:
    listing = {"object": "list", "data": [
        {"name": "shapes", "version": "1", "state": "live", "base_model": "base", "rank": 8, "pinned": False,
         "replicas": ["r0"]},
        {"name": "bad", "state": "failed", "error": "rank 128 exceeds the engine's max_lora_rank 64"},
    ]}  # fmt: skip
    forbidden = {"error": {"message": "This key may not manage adapters.", "type": "permission_error",
                           "code": "insufficient_scope"}}  # fmt: skip
    h = gateway({
        ("GET", "/v1/adapters"): httpx.Response(200, json=listing),
        ("POST", "/v1/adapters"): httpx.Response(201, json={"name": "new", "state": "live"}),
        ("DELETE", "/v1/adapters/shapes"): httpx.Response(403, json=forbidden),
    })  # fmt: skip
    rows, picker, status = await h.list_adapters("admin")
    assert rows[0] == ["shapes", "1", "live", "base", 8, False, "r0", ""]
    assert rows[1][2] == "failed"
    assert "max_lora_rank" in rows[1][-1]
    assert picker["choices"] == ["shapes", "bad"]
    assert status == "2 adapter(s) registered, 1 live."
    assert (await h.register_adapter("new", "/store/new", "", False)).startswith("✓ Adapter `new` registered (live)")
    assert "name and the path" in await h.register_adapter("", "", "", False)
    removed = await h.remove_adapter("shapes")
    assert "403" in removed
    assert "This key may not manage adapters." in removed


async def test_merge_streams_interleaves_and_yields_errors_per_stream() -> None:
    async def numbers(prefix: str, n: int):
        for i in range(n):
            yield f"{prefix}{i}"

    got = [item async for item in merge_streams({"a": numbers("a", 3), "b": numbers("b", 2)})]
    assert sorted(got) == [("a", "a0"), ("a", "a1"), ("a", "a2"), ("b", "b0"), ("b", "b1")]
    assert [v for k, v in got if k == "a"] == ["a0", "a1", "a2"]  # order within a stream kept


async def test_stop_while_an_answer_is_shown_closes_the_http_stream_at_once() -> None:
    # Gradio's stop button closes the handler's generator; it usually waits at a `yield` (the UI is drawing the
    # last token). The HTTP stream must be closed right then: that is how the gateway learns to stop the engine.
    closed: list[str] = []

    async def answer(*_args: object):
        try:
            for word in ("one ", "two ", "three"):
                yield word
        finally:
            closed.append("stream")

    h = gateway({})
    h._ask = answer
    frames = h.respond([msgs.user_display_message("count", [])], "base", 0.0, 16)
    assert (await anext(frames))[-1]["content"] == "one "
    await frames.aclose()
    assert closed == ["stream"]  # not left to the garbage collector's finalizer hook

    closed.clear()
    pairs = h.compare(None, "count", "base", "other", 0.0, 16)
    await anext(pairs)
    await pairs.aclose()
    assert closed == ["stream", "stream"]
