"""Conversation plumbing between Gradio's chat history and the OpenAI chat format the gateway speaks.

Pure functions, unit-tested without a browser (tests/unit/test_ui_messages.py). The chat history shown in the
UI also carries notes that are not part of the conversation (per-answer timings, error messages); they are
tagged through Gradio's message metadata and never sent back to the model. A user turn that failed (the
gateway rejected it, e.g. a corrupt image) is dropped from what is resent, so one bad upload cannot poison
every later request.
"""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from typing import Any

from vlmgate.ui.client import AnswerStats, GatewayError

STATS_ID = "vlmgate-stats"  # metadata id of a per-answer timing note
ERROR_ID = "vlmgate-error"  # metadata id of an inline error note
OMITTED_IMAGE_TEXT = "[an earlier image, not resent]"


def image_data_url(path: str | Path) -> str:
    """The file as a base64 data URL. Not decoded here: the gateway validates images and says what is wrong."""
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    if not mime.startswith("image/"):
        mime = "image/png"  # let the gateway judge the bytes; a wrong name should not hide a real image
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def user_display_message(text: str, files: list[str]) -> dict[str, Any]:
    """How a user's turn appears in the chat: the images, then the text."""
    content: list[Any] = [{"path": f} for f in files]
    if text:
        content.append(text)
    return {"role": "user", "content": content or ""}


def stats_note(stats: AnswerStats) -> dict[str, Any]:
    """A collapsed note under an answer: its timings in the title, the details inside."""
    return {
        "role": "assistant",
        "content": stats_details(stats),
        "metadata": {"title": f"{stats.model} · {stats_summary(stats)}", "id": STATS_ID, "status": "done"},
    }


def error_note(err: GatewayError) -> dict[str, Any]:
    """An inline error bubble, shown open: stays in the history (a toast vanishes), never resent to the model."""
    return {"role": "assistant", "content": f"**⚠ {err.title}**\n\n{err.explanation()}", "metadata": {"id": ERROR_ID}}


def stats_summary(stats: AnswerStats) -> str:
    ttft = "–" if stats.ttft_s is None else f"{stats.ttft_s:.2f} s"
    rate = "–" if stats.tokens_per_s is None else f"{stats.tokens_per_s:.1f}"
    out = "?" if stats.completion_tokens is None else str(stats.completion_tokens)
    return f"TTFT {ttft} · {rate} tok/s · {out} tokens"


def stats_details(stats: AnswerStats) -> str:
    def count(n: int | None) -> str:
        return "?" if n is None else str(n)

    lines = [
        f"model `{stats.model}`",
        f"time to first token {'–' if stats.ttft_s is None else f'{stats.ttft_s * 1000:.0f} ms'}",
        f"total {stats.e2e_s:.2f} s",
        f"output {'–' if stats.tokens_per_s is None else f'{stats.tokens_per_s:.1f} tokens/s'} after the first",
        f"tokens: {count(stats.prompt_tokens)} prompt (text + image), {count(stats.completion_tokens)} completion",
    ]
    if stats.finish_reason:
        lines.append(f"finish reason: {stats.finish_reason}")
    return " · ".join(lines)


def _note_id(message: dict[str, Any]) -> str | None:
    """The id of a UI-only note (timing, error), None for a real conversation message."""
    metadata = message.get("metadata") or {}
    if metadata.get("id") in (STATS_ID, ERROR_ID):
        return str(metadata["id"])
    return "note" if metadata.get("title") else None


def _parts(content: Any) -> tuple[list[str], list[str]]:
    """(texts, image paths) of one history message, whatever shape Gradio hands us."""
    texts: list[str] = []
    files: list[str] = []
    items = content if isinstance(content, list | tuple) else [content]
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            if item.get("type") == "text":
                texts.append(str(item.get("text", "")))
            elif isinstance(item.get("file"), dict) and item["file"].get("path"):
                files.append(str(item["file"]["path"]))
            elif item.get("path"):
                files.append(str(item["path"]))
            elif isinstance(item.get("value"), dict) and item["value"].get("path"):  # a component message
                files.append(str(item["value"]["path"]))
    return texts, files


def to_openai_messages(history: list[dict[str, Any]], max_images: int | None = None) -> list[dict[str, Any]]:
    """The history as OpenAI chat messages: notes dropped, failed turns dropped, images as data URLs.

    Consecutive user messages (Gradio may split images and text) merge into one turn. When more images than
    `max_images` would be sent, the oldest are replaced by a short text marker: gateways cap images per request
    and the newest images are the ones the question is about.
    """
    turns: list[dict[str, Any]] = []  # {"role", "texts", "files", "failed"}
    for message in history:
        role = message.get("role")
        note = _note_id(message)
        if note == ERROR_ID:
            # The answer to the latest user turn was an error: that turn never happened for the model.
            if turns and turns[-1]["role"] == "user":
                turns[-1]["failed"] = True
            continue
        if note is not None or role not in ("user", "assistant", "system"):
            continue
        texts, files = _parts(message.get("content"))
        if turns and turns[-1]["role"] == role and not turns[-1]["failed"]:
            turns[-1]["texts"] += texts
            turns[-1]["files"] += files
        else:
            turns.append({"role": role, "texts": texts, "files": files, "failed": False})
    turns = [t for t in turns if not t["failed"]]
    keep = _images_to_keep(turns, max_images)
    messages: list[dict[str, Any]] = []
    index = 0
    for turn in turns:
        text = "\n".join(t for t in turn["texts"] if t)
        if turn["role"] != "user" or not turn["files"]:
            messages.append({"role": turn["role"], "content": text})
            continue
        content: list[dict[str, Any]] = []
        for path in turn["files"]:
            if index in keep:
                content.append({"type": "image_url", "image_url": {"url": image_data_url(path)}})
            else:
                content.append({"type": "text", "text": OMITTED_IMAGE_TEXT})
            index += 1
        if text:
            content.append({"type": "text", "text": text})
        messages.append({"role": "user", "content": content})
    return messages


def _images_to_keep(turns: list[dict[str, Any]], max_images: int | None) -> set[int]:
    total = sum(len(t["files"]) for t in turns if t["role"] == "user")
    first_kept = 0 if max_images is None else max(0, total - max_images)
    return set(range(first_kept, total))


def single_question(text: str, image_paths: list[str]) -> list[dict[str, Any]]:
    """A one-turn conversation: the comparison tab asks every model exactly this."""
    return to_openai_messages([user_display_message(text, image_paths)])
