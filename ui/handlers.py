"""What the demo's buttons do: async event handlers that call the gateway and shape the answers for Gradio.

Kept apart from the layout (ui/app.py) so that they can be tested with a stub gateway and no browser
(tests/unit/test_ui_handlers.py). Every handler catches `GatewayError` and turns it into a readable message
(inline and as a toast): the UI never dies on a gateway error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from vlmgate.ui import messages as msgs
from vlmgate.ui import slo_view
from vlmgate.ui.client import AnswerStats, GatewayClient, GatewayError

# At most this many screen updates per second and answer: every update re-sends and re-draws the answer, so
# per-token updates at engine speed (100+ tokens/s) swamp the demo's server and the browser on a small CPU, and
# a Stop click then waits behind them until the answer has ended.
UPDATES_PER_S = 10
ADAPTER_COLUMNS = ["name", "version", "state", "base_model", "rank", "pinned", "replicas", "detail"]
_DONE = object()


def adapter_rows(adapters: list[dict[str, Any]]) -> list[list[Any]]:
    """Table rows for the admin tab; unknown fields tolerated, lists joined, failure reasons shown."""
    rows = []
    for a in adapters:
        replicas = a.get("replicas")
        if isinstance(replicas, list | tuple):
            replicas = ", ".join(str(r) for r in replicas)
        detail = a.get("error") or a.get("reason") or a.get("path") or ""
        rows.append(
            [
                a.get("name", "?"),
                a.get("version"),
                a.get("state"),
                a.get("base_model"),
                a.get("rank"),
                bool(a.get("pinned")),
                replicas,
                str(detail),
            ]
        )
    return rows


class Handlers:
    """Event handlers bound to one gateway. Keys typed in the UI override the ones given on the command line."""

    def __init__(self, client: GatewayClient, max_images: int | None = 2, updates_per_s: float = UPDATES_PER_S) -> None:
        self.client = client
        self.max_images = max_images
        self.updates_per_s = updates_per_s

    # --- models ----------------------------------------------------------------------------------------------

    async def refresh_models(self, current: str | None, api_key: str | None = None) -> tuple[Any, Any, Any, str]:
        """Fill the three model pickers (chat, compare A, compare B) from `GET /v1/models`."""
        try:
            models = await self.client.models(api_key or None)
        except GatewayError as err:
            gr.Warning(err.readable())
            return gr.update(), gr.update(), gr.update(), f"⚠ {err.readable()}"
        choices = [(m.label, m.id) for m in models]
        ids = [m.id for m in models]
        chosen = current if current in ids else (ids[0] if ids else None)
        adapters = [m.id for m in models if m.is_adapter]
        # Compare the base with an adapter when there is one: the quickest way to see what a fine-tune changed.
        second = adapters[0] if adapters else chosen
        bases = sum(not m.is_adapter for m in models)
        status = f"{len(models)} model(s) at `{self.client.base_url}`: {bases} base, {len(adapters)} adapter(s)."
        return (
            gr.update(choices=choices, value=chosen),
            gr.update(choices=choices, value=ids[0] if ids else None),
            gr.update(choices=choices, value=second),
            status,
        )

    def _ask(
        self, model: str, request: list, temperature: float, max_tokens: float, exact: bool, api_key: str | None
    ) -> AsyncIterator[str | AnswerStats]:
        """One streamed answer with the settings as Gradio hands them over (sliders give floats), its text deltas
        merged so that the screen is updated at most `updates_per_s` times a second."""
        stream = self.client.stream_chat(
            model,
            request,
            temperature=float(temperature),
            max_tokens=int(max_tokens),
            ignore_eos=bool(exact),
            api_key=api_key or None,
        )
        return coalesce_text(stream, 1 / self.updates_per_s if self.updates_per_s else 0.0)

    # --- chat ------------------------------------------------------------------------------------------------

    @staticmethod
    def add_user_turn(message: dict[str, Any] | None, history: list[dict[str, Any]]) -> tuple[Any, list]:
        """Show the user's turn at once and clear the input box; the answer streams in the next step."""
        message = message or {}
        text = (message.get("text") or "").strip()
        files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
        files = [f for f in files if f]
        if not text and not files:
            return gr.update(), history
        return {"text": "", "files": []}, [*history, msgs.user_display_message(text, files)]

    async def respond(
        self,
        history: list[dict[str, Any]],
        model: str | None,
        temperature: float,
        max_tokens: float,
        exact_tokens: bool = False,
        api_key: str | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Stream the answer to the latest user turn into the history, then add its timing note."""
        if not history or history[-1].get("role") != "user":
            return
        if not model:
            err = GatewayError("Pick a model first (the list is empty: press ↻ to refresh it).")
            yield [*history, msgs.error_note(err)]
            return
        request = msgs.to_openai_messages(history, self.max_images)
        answer = {"role": "assistant", "content": ""}
        shown = list(history)
        try:
            # aclosing: when Gradio closes this generator (the stop button) while it waits at a `yield`, the HTTP
            # stream is closed right here, not whenever the garbage collector finalizes the inner generator.
            async with contextlib.aclosing(
                self._ask(model, request, temperature, max_tokens, exact_tokens, api_key)
            ) as stream:
                async for item in stream:
                    if isinstance(item, AnswerStats):
                        shown = [*history, answer] if answer["content"] else list(history)
                        yield [*shown, msgs.stats_note(item)]
                        return
                    answer["content"] += item
                    shown = [*history, dict(answer)]
                    yield shown
        except GatewayError as err:
            gr.Warning(err.readable())
            yield [*shown, msgs.error_note(err)]

    # --- side by side ----------------------------------------------------------------------------------------

    async def compare(
        self,
        image_path: str | None,
        question: str,
        model_a: str | None,
        model_b: str | None,
        temperature: float,
        max_tokens: float,
        exact_tokens: bool = False,
        api_key: str | None = None,
    ) -> AsyncIterator[tuple[str, str, str, str]]:
        """Ask two models the same question about the same image at the same time; stream both answers."""
        if not model_a or not model_b:
            yield "", "", "⚠ Pick two models (↻ refreshes the list).", ""
            return
        request = msgs.single_question(
            (question or "").strip() or "Describe the image.", [image_path] if image_path else []
        )
        texts, notes = {"a": "", "b": ""}, {"a": "…", "b": "…"}
        streams = {
            side: self._ask(model, request, temperature, max_tokens, exact_tokens, api_key)
            for side, model in (("a", model_a), ("b", model_b))
        }
        async for side, item in merge_streams(streams):
            if isinstance(item, GatewayError):
                gr.Warning(item.readable())
                notes[side] = f"⚠ {item.readable()}"
            elif isinstance(item, AnswerStats):
                notes[side] = f"**{msgs.stats_summary(item)}**  \n{msgs.stats_details(item)}"
            else:
                texts[side] += item
            yield texts["a"], texts["b"], notes["a"], notes["b"]

    # --- admin -----------------------------------------------------------------------------------------------

    async def list_adapters(self, admin_key: str | None = None) -> tuple[list[list[Any]], Any, str]:
        try:
            adapters = await self.client.adapters(admin_key or None)
        except GatewayError as err:
            if err.status in (404, 405):
                return [], gr.update(choices=[]), "This gateway has no adapter API (`GET /v1/adapters` not found)."
            gr.Warning(err.readable())
            return [], gr.update(), f"⚠ {err.readable()}"
        names = [str(a.get("name")) for a in adapters if a.get("name")]
        live = sum(a.get("state") == "live" for a in adapters)
        status = f"{len(adapters)} adapter(s) registered, {live} live."
        return adapter_rows(adapters), gr.update(choices=names, value=names[0] if names else None), status

    async def register_adapter(
        self, name: str, path: str, version: str, pinned: bool, admin_key: str | None = None
    ) -> str:
        if not (name or "").strip() or not (path or "").strip():
            return "⚠ Give the adapter a name and the path of its directory (as the gateway sees it)."
        try:
            created = await self.client.register_adapter(
                name.strip(), path.strip(), (version or "").strip() or None, bool(pinned), admin_key or None
            )
        except GatewayError as err:
            gr.Warning(err.readable())
            return f"⚠ {err.readable()}"
        state = created.get("state", "registered") if isinstance(created, dict) else "registered"
        return f"✓ Adapter `{name.strip()}` registered ({state}). It is now selectable in the model pickers."

    async def remove_adapter(self, name: str | None, admin_key: str | None = None) -> str:
        if not name:
            return "⚠ Pick an adapter to remove."
        try:
            await self.client.remove_adapter(name, admin_key or None)
        except GatewayError as err:
            gr.Warning(err.readable())
            return f"⚠ {err.readable()}"
        return f"✓ Adapter `{name}` removed (in-flight requests were drained first)."

    async def slo_status(self, api_key: str | None = None) -> tuple[Any, Any, list[list[Any]], str]:
        """Current `GET /v1/slo` as two figures, a table and a one-line status (never raises)."""
        try:
            report = await self.client.slo(api_key or None)
        except GatewayError as err:
            empty: list[slo_view.SloSeries] = []
            why = (
                "This gateway does not report SLOs yet (`GET /v1/slo` not found)."
                if err.status in (404, 405)
                else f"⚠ {err.readable()}"
            )
            return slo_view.latency_figure(empty), slo_view.attainment_figure(empty), [], why
        entries = slo_view.parse_slo(report)
        status = f"{len(entries)} model/adapter target(s) reported." if entries else "No SLO data yet (no requests?)."
        return (
            slo_view.latency_figure(entries),
            slo_view.attainment_figure(entries),
            slo_view.table_rows(entries),
            status,
        )


async def coalesce_text(
    stream: AsyncIterator[Any], min_interval_s: float, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[Any]:
    """Consecutive text deltas of `stream` merged, so that at most one leaves per `min_interval_s`; the first delta
    leaves at once (time to first token is what people notice), other items right after the text held before them.

    Closing this generator closes `stream`. Text held when `stream` raises leaves before the error.
    """
    held, last = "", float("-inf")
    async with contextlib.aclosing(stream):
        try:
            async for item in stream:
                if not isinstance(item, str):
                    if held:
                        yield held
                        held = ""
                    yield item
                    continue
                held += item
                now = clock()
                if now - last >= min_interval_s:
                    yield held
                    held, last = "", now
        except Exception:
            if held:  # the answer's last words belong on screen above the error note
                yield held
            raise
    if held:
        yield held


async def merge_streams(streams: dict[str, AsyncIterator[Any]]) -> AsyncIterator[tuple[str, Any]]:
    """Interleave several streams as their items arrive; a stream's GatewayError is yielded, not raised.

    Closing this generator (the stop button) cancels the pumps, which closes every HTTP stream.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump(key: str, stream: AsyncIterator[Any]) -> None:
        try:
            async with contextlib.aclosing(stream):  # closes the HTTP stream however the pump ends
                async for item in stream:
                    await queue.put((key, item))
        except GatewayError as err:
            await queue.put((key, err))
        finally:
            await queue.put((key, _DONE))

    tasks = [asyncio.create_task(pump(key, stream)) for key, stream in streams.items()]
    try:
        remaining = len(tasks)
        while remaining:
            key, item = await queue.get()
            if item is _DONE:
                remaining -= 1
                continue
            yield key, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
