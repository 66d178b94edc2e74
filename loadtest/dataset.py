"""Read prompts from a JSONL dataset in the project's chat format, for `vlmgate loadtest --dataset FILE`.

Each line is `{"messages": [...]}` in OpenAI chat form. Images are `image_url` parts whose URL is a data URL,
an http(s) URL, or a file path relative to the JSONL file (inlined here as a base64 data URL, once, before the
test starts). When the last message is the assistant's answer (a training record) it is dropped: the server
must generate it. Every bad line is reported at once with its file, line number and field.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from vlmgate.loadtest.config import ConfigError


@dataclass(frozen=True)
class Conversation:
    messages: list[dict]
    images: int


def _inline_image(url: str, root: Path) -> str:
    if url.startswith(("data:", "http://", "https://")):
        return url
    path = (root / url).resolve()
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _convert_part(part: object, root: Path, where: str, errors: list[str]) -> tuple[object, int]:
    if not isinstance(part, dict) or part.get("type") != "image_url":
        return part, 0
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        errors.append(f"{where}: image_url part needs image_url.url (a data URL, http URL or relative path)")
        return part, 0
    try:
        return {"type": "image_url", "image_url": {"url": _inline_image(url, root)}}, 1
    except OSError as exc:
        errors.append(f"{where}: cannot read image {url!r} relative to {root}: {exc.strerror}")
        return part, 0


def _convert_line(record: object, root: Path, where: str, errors: list[str]) -> Conversation | None:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        errors.append(f"{where}: field 'messages' must be a non-empty list")
        return None
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    if not messages:
        errors.append(f"{where}: field 'messages' has only the assistant answer, nothing to send")
        return None
    converted, images = [], 0
    for m_index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            errors.append(f"{where}: messages[{m_index}] needs 'role' and 'content'")
            continue
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for p_index, part in enumerate(content):
                new_part, n = _convert_part(part, root, f"{where}: messages[{m_index}].content[{p_index}]", errors)
                parts.append(new_part)
                images += n
            content = parts
        converted.append({**message, "content": content})
    return Conversation(converted, images)


def load_chat_dataset(path: Path) -> list[Conversation]:
    """Every conversation of `path`; raises ConfigError listing all bad lines."""
    errors: list[str] = []
    conversations = []
    root = path.parent
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        conversation = _convert_line(record, root, where, errors)
        if conversation is not None:
            conversations.append(conversation)
    if not conversations and not errors:
        errors.append(f"{path}: no conversations (expected one JSON object per line)")
    if errors:
        raise ConfigError(errors)
    return conversations
