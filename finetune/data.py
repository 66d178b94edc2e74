"""The fine-tuning data format: read, import and validate JSONL of images and conversations.

One line = one example, in the same shape as the chat API vlmgate serves, so logged traffic becomes training data:

    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/0.png"}},
                                              {"type": "text", "text": "What colour is the shape?"}]},
                  {"role": "assistant", "content": "rouge"}]}

Image urls are data URLs or paths relative to the JSONL file; the last message is the assistant's answer (the one
trained on). LLaMA-Factory / ms-swift records (`"images": [...]` plus `<image>` placeholders in `messages` or
ShareGPT `conversations`) are imported transparently. Every bad line is reported at once as `file:line: field:
reason`, never one at a time.

Run as: vlmgate finetune check DATA.jsonl [--eval HELDOUT.jsonl] [--model DIR]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_PLACEHOLDER = "<image>"
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class DataIssue:
    """One problem with one line of a data file."""

    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"


class DataError(ValueError):
    """Invalid data: carries every issue found, so the user fixes them all in one go."""

    def __init__(self, issues: list[DataIssue]):
        self.issues = issues
        shown = "\n  ".join(map(str, issues[:200]))
        more = f"\n  ... and {len(issues) - 200} more" if len(issues) > 200 else ""
        super().__init__(f"{len(issues)} problem(s) in the data:\n  {shown}{more}")


@dataclass
class Example:
    """A validated example. `messages` use the chat-template form ({"type": "image"} parts, in order)."""

    messages: list[dict]
    images: list[bytes] = field(repr=False)
    file: str = ""
    line: int = 0

    @property
    def prompt_messages(self) -> list[dict]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return _text_of(self.messages[-1]["content"])

    @property
    def prompt_text(self) -> str:
        return " ".join(_text_of(m["content"]) for m in self.prompt_messages if m["role"] == "user")

    def pil_images(self) -> list[Image.Image]:
        return [Image.open(io.BytesIO(b)).convert("RGB") for b in self.images]

    def to_openai(self) -> list[dict]:
        """The prompt as OpenAI chat messages with data-URL images (what a client sends to the gateway)."""
        images = iter(self.images)
        out = []
        for message in self.prompt_messages:
            content = message["content"]
            if isinstance(content, list):
                content = [
                    {"type": "image_url", "image_url": {"url": to_data_url(next(images))}}
                    if part["type"] == "image"
                    else part
                    for part in content
                ]
            out.append({"role": message["role"], "content": content})
        return out


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def to_data_url(image_bytes: bytes) -> str:
    fmt = (Image.open(io.BytesIO(image_bytes)).format or "png").lower()
    return f"data:image/{fmt};base64,{base64.b64encode(image_bytes).decode()}"


class _LineReader:
    """Turns one JSON record into an Example, collecting every issue of the line instead of stopping at one."""

    def __init__(self, path: Path, line: int):
        self.path, self.line = path, line
        self.issues: list[DataIssue] = []

    def issue(self, field_name: str, reason: str) -> None:
        self.issues.append(DataIssue(str(self.path), self.line, field_name, reason))

    def load_image(self, url: str, where: str) -> bytes | None:
        if not isinstance(url, str) or not url:
            self.issue(where, "image url is missing or not a string")
            return None
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if ";base64" not in header:
                self.issue(where, "data URL must be base64 encoded (data:image/png;base64,...)")
                return None
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                self.issue(where, "data URL is not valid base64")
                return None
        elif url.startswith(("http://", "https://")):
            self.issue(where, f"remote image {url[:60]!r}: download it and use a path relative to the JSONL file")
            return None
        else:
            file = (self.path.parent / url.removeprefix("file://")).resolve()
            if not file.is_file():
                self.issue(where, f"missing image: {file} does not exist")
                return None
            data = file.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            self.issue(where, f"unreadable image ({type(exc).__name__}: {str(exc)[:80]})")
            return None
        return data

    def convert_part(self, part, where: str, images: list[bytes]) -> dict | None:
        if not isinstance(part, dict) or "type" not in part:
            self.issue(where, 'content part must be an object with a "type" ("text" or "image_url")')
            return None
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                self.issue(f"{where}.text", "text part has no string 'text'")
                return None
            return {"type": "text", "text": part["text"]}
        if part["type"] in ("image_url", "image"):
            url = part.get("image_url", {}).get("url") if part["type"] == "image_url" else part.get("image")
            data = self.load_image(url, f"{where}.image_url.url")
            if data is not None:
                images.append(data)
            return {"type": "image"}
        self.issue(f"{where}.type", f"unknown part type {part['type']!r}; use 'text' or 'image_url'")
        return None

    def split_placeholders(self, text: str, where: str, image_urls: list, images: list[bytes], used: list[int]):
        """LLaMA-Factory/ms-swift text with <image> markers -> chat parts, consuming the record's images."""
        parts: list[dict] = []
        for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                index = used[0]
                used[0] += 1
                if index < len(image_urls):
                    data = self.load_image(image_urls[index], f"images[{index}]")
                    if data is not None:
                        images.append(data)
                parts.append({"type": "image"})
            if chunk:
                parts.append({"type": "text", "text": chunk})
        return parts

    def read(self, record) -> Example | None:
        if not isinstance(record, dict):
            self.issue("<line>", "each line must be a JSON object with a 'messages' list")
            return None
        key = "messages" if "messages" in record else "conversations" if "conversations" in record else None
        if key is None:
            self.issue("messages", "missing: each line needs a 'messages' list (OpenAI chat form)")
            return None
        raw_messages = record[key]
        if not isinstance(raw_messages, list) or not raw_messages:
            self.issue(key, "must be a non-empty list of messages")
            return None
        image_urls = record.get("images", [])
        if not isinstance(image_urls, list):
            self.issue("images", "must be a list of image paths or data URLs")
            image_urls = []
        images: list[bytes] = []
        used = [0]
        messages = []
        for i, message in enumerate(raw_messages):
            where = f"{key}[{i}]"
            if not isinstance(message, dict):
                self.issue(where, "each message must be an object with 'role' and 'content'")
                continue
            role = message.get("role", _SHAREGPT_ROLES.get(message.get("from", ""), message.get("from")))
            content = message.get("content", message.get("value"))
            if role not in _ROLES:
                self.issue(f"{where}.role", f"role {role!r} is not one of system, user, assistant")
            if isinstance(content, str):
                parts = self.split_placeholders(content, f"{where}.content", image_urls, images, used)
            elif isinstance(content, list):
                parts = [
                    p
                    for j, part in enumerate(content)
                    if (p := self.convert_part(part, f"{where}.content[{j}]", images)) is not None
                ]
            else:
                self.issue(f"{where}.content", "missing: content must be a string or a list of parts")
                continue
            messages.append({"role": role, "content": parts})
        if used[0] != len(image_urls):
            self.issue(
                "images", f"{len(image_urls)} image(s) listed but {used[0]} {IMAGE_PLACEHOLDER} placeholder(s) in text"
            )
        last = f"{key}[{len(raw_messages) - 1}]"
        if messages and messages[-1]["role"] != "assistant":
            self.issue(f"{last}.role", "no assistant turn: the last message must be the answer")
        elif messages and any(p["type"] == "image" for p in messages[-1]["content"]):
            self.issue(f"{last}.content", "the assistant's answer cannot contain images")
        elif messages and not _text_of(messages[-1]["content"]).strip():
            self.issue(f"{last}.content", "the assistant's answer is empty")
        if messages and not any(m["role"] == "user" for m in messages):
            self.issue(key, "no user turn: add the question the answer responds to")
        if self.issues:
            return None
        # The assistant answer is trained on as plain text.
        messages[-1] = {"role": "assistant", "content": _text_of(messages[-1]["content"])}
        return Example(messages, images, str(self.path), self.line)


def read_jsonl(path: str | Path) -> tuple[list[Example], list[DataIssue]]:
    """Read every line; return the valid examples and the issues of all invalid lines (never stops early)."""
    path = Path(path)
    examples: list[Example] = []
    issues: list[DataIssue] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [DataIssue(str(path), 0, "<file>", f"cannot read: {exc}")]
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        reader = _LineReader(path, number)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            reader.issue("<line>", f"not valid JSON ({exc.msg} at column {exc.colno})")
        else:
            example = reader.read(record)
            if example is not None:
                examples.append(example)
        issues += reader.issues
    if not examples and not issues:
        issues.append(DataIssue(str(path), 0, "<file>", "no examples: the file is empty"))
    return examples, issues


def token_lengths(examples: Iterable[Example], processor) -> list[int]:
    """Exact model-input length of each example (chat template applied, image tokens expanded)."""
    from vlmgate.finetune.collate import prompt_text

    eos = processor.tokenizer.eos_token or ""
    return [
        processor(text=[prompt_text(ex, processor) + ex.answer + eos], images=ex.pil_images() or None)["input_ids"][
            0
        ].__len__()
        for ex in examples
    ]


def length_issues(examples: list[Example], lengths: list[int], max_length: int) -> list[DataIssue]:
    return [
        DataIssue(ex.file, ex.line, "messages", f"too long for the model: {n} tokens > max_length {max_length}")
        for ex, n in zip(examples, lengths, strict=True)
        if n > max_length
    ]


def data_digest(path: str | Path) -> str:
    """sha256 of the JSONL and every image file it references, so a manifest pins exactly what was trained on."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes())
    referenced: set[Path] = set()
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            continue
        urls = list(record.get("images", [])) if isinstance(record, dict) else []
        for message in record.get("messages", []) if isinstance(record, dict) else []:
            for part in message.get("content", []) if isinstance(message.get("content"), list) else []:
                urls.append((part.get("image_url") or {}).get("url", ""))
        referenced |= {(path.parent / u).resolve() for u in urls if isinstance(u, str) and u and ":" not in u[:6]}
    for image in sorted(referenced):
        if image.is_file():
            digest.update(image.read_bytes())
    return "sha256:" + digest.hexdigest()


def write_jsonl(examples: Iterable[Example], path: str | Path) -> int:
    """Write examples in vlmgate's own format (images inline as data URLs); used by `vlmgate finetune convert`."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for ex in examples:
            record = {"messages": [*ex.to_openai(), {"role": "assistant", "content": ex.answer}]}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
