"""Validate a chat completion request before any engine sees it.

Checks shape and types of every known field, refuses unknown ones, and decodes, sizes and counts every image
(base64 data URLs; remote URLs only when allowed). Each problem becomes an OpenAI-style 4xx naming the offending
parameter, e.g. `messages[0].content[1].image_url.url`. The request body is otherwise passed on unchanged: images
are not re-encoded, so validation costs one decode per image and nothing per token.
"""

from __future__ import annotations

import binascii
import io
import re
import time
from dataclasses import dataclass
from typing import Any

import pybase64
from PIL import Image, UnidentifiedImageError

from vlmgate.serve.config import LimitsConfig
from vlmgate.serve.errors import InvalidRequestError, PayloadTooLargeError

# Image formats the engines' processors decode.
ALLOWED_IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,")

_NUMBER = (int, float)
# Known request fields and their accepted types (OpenAI chat API, plus the vLLM sampling extensions users send).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "messages": (list,),
    "stream": (bool,),
    "stream_options": (dict,),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "n": (int,),
    "stop": (str, list),
    "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER,
    "logit_bias": (dict,),
    "logprobs": (bool,),
    "top_logprobs": (int,),
    "seed": (int,),
    "user": (str,),
    "response_format": (dict,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,),
    "metadata": (dict,),
    "store": (bool,),
    "service_tier": (str,),
    "reasoning_effort": (str,),
    # vLLM extensions
    "top_k": (int,),
    "min_p": _NUMBER,
    "repetition_penalty": _NUMBER,
    "min_tokens": (int,),
    "ignore_eos": (bool,),
    "skip_special_tokens": (bool,),
    "spaces_between_special_tokens": (bool,),
    "stop_token_ids": (list,),
    "include_stop_str_in_output": (bool,),
    "chat_template_kwargs": (dict,),
    "structured_outputs": (dict,),
    "priority": (int,),
    "request_id": (str,),
}
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "n": (1, 8),
    "top_logprobs": (0, 20),
    "min_p": (0.0, 1.0),
}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


@dataclass
class ValidatedChat:
    """A request that passed validation, with what the gateway learned while checking it."""

    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    image_count: int
    image_bytes: int
    image_preprocess_s: float


def validate_chat_request(body: Any, limits: LimitsConfig) -> ValidatedChat:
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    for key, value in body.items():
        _check_field(key, value, limits)
    for required in ("model", "messages"):
        if required not in body:
            raise InvalidRequestError(f"Missing required parameter: '{required}'.", param=required, code="missing")
    if not body["messages"]:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    stream = bool(body.get("stream", False))
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequestError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
        unknown = set(options) - {"include_usage", "continuous_usage_stats"}
        if unknown or not isinstance(options.get("include_usage", False), bool):
            raise InvalidRequestError(
                "'stream_options' accepts only a boolean 'include_usage'.", param="stream_options.include_usage"
            )
    started = time.perf_counter()
    images = _ImageCounter(limits)
    for i, message in enumerate(body["messages"]):
        _check_message(message, f"messages[{i}]", images)
    return ValidatedChat(
        body=body,
        model=body["model"],
        stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        image_count=images.count,
        image_bytes=images.total_bytes,
        image_preprocess_s=time.perf_counter() - started if images.count else 0.0,
    )


def _check_field(key: str, value: Any, limits: LimitsConfig) -> None:
    types = _FIELD_TYPES.get(key)
    if types is None:
        raise InvalidRequestError(f"Unrecognized request argument supplied: {key}", param=key, code="unknown_parameter")
    if value is None and key not in ("model", "messages"):
        return  # explicit null means "default", as in the OpenAI API
    if isinstance(value, bool) and bool not in types:  # bool is an int in Python; not in JSON
        raise _type_error(key, value, types)
    if not isinstance(value, types):
        raise _type_error(key, value, types)
    if key in ("max_tokens", "max_completion_tokens") and not 1 <= value <= limits.max_tokens:
        raise InvalidRequestError(
            f"'{key}' must be between 1 and {limits.max_tokens}, got {value}.", param=key, code="invalid_value"
        )
    if key in _RANGES:
        low, high = _RANGES[key]
        if not low <= value <= high:
            raise InvalidRequestError(f"'{key}' must be between {low:g} and {high:g}, got {value}.", param=key)
    if key == "stop" and isinstance(value, list) and (len(value) > 4 or not all(isinstance(s, str) for s in value)):
        raise InvalidRequestError("'stop' must be a string or a list of at most 4 strings.", param="stop")


def _type_error(key: str, value: Any, types: tuple[type, ...]) -> InvalidRequestError:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "an array",
             dict: "an object"}  # fmt: skip
    wanted = " or ".join(dict.fromkeys(names[t] for t in types))
    return InvalidRequestError(
        f"Invalid type for '{key}': expected {wanted}, but got {type(value).__name__} ({value!r:.40}).",
        param=key,
        code="invalid_type",
    )


def _check_message(message: Any, where: str, images: _ImageCounter) -> None:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"'{where}' must be an object with 'role' and 'content'.", param=where)
    role = message.get("role")
    if role not in _ROLES:
        raise InvalidRequestError(
            f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}; got {role!r}.", param=f"{where}.role"
        )
    content = message.get("content")
    if content is None:
        if role == "assistant":  # assistant turns may carry only tool calls
            return
        raise InvalidRequestError(f"Missing '{where}.content'.", param=f"{where}.content", code="missing")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"'{where}.content' must be a string or an array of content parts.", param=f"{where}.content"
        )
    for j, part in enumerate(content):
        _check_part(part, f"{where}.content[{j}]", role, images)


def _check_part(part: Any, where: str, role: str, images: _ImageCounter) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise InvalidRequestError(f"'{where}' must be an object with a 'type'.", param=where)
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"'{where}.text' must be a string.", param=f"{where}.text")
        return
    if kind == "image_url":
        if role != "user":
            raise InvalidRequestError(f"Images are only allowed in user messages ({where}).", param=where)
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url if isinstance(image_url, str) else None
        if not isinstance(url, str):
            raise InvalidRequestError(f"'{where}.image_url.url' must be a string.", param=f"{where}.image_url.url")
        images.add(url, f"{where}.image_url.url")
        return
    raise InvalidRequestError(
        f"Unsupported content part type '{kind}' in '{where}': this gateway accepts 'text' and 'image_url'.",
        param=f"{where}.type",
        code="unsupported_content_type",
    )


class _ImageCounter:
    """Decodes and checks each image against the limits, and counts them."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.count = 0
        self.total_bytes = 0

    def add(self, url: str, param: str) -> None:
        self.count += 1
        if self.count > self.limits.max_images_per_request:
            raise InvalidRequestError(
                f"Too many images: at most {self.limits.max_images_per_request} per request.",
                param=param,
                code="too_many_images",
            )
        if url.startswith(("http://", "https://")):
            if not self.limits.allow_remote_images:
                raise InvalidRequestError(
                    "Remote image URLs are not accepted by this gateway; send the image inline as a base64 data URL "
                    "(data:image/png;base64,...). An operator can allow them with limits.allow_remote_images.",
                    param=param,
                    code="remote_image_not_allowed",
                )
            return
        if not url.startswith("data:"):
            raise InvalidRequestError(
                f"Unsupported image URL scheme in '{param}': use a base64 data URL (data:image/png;base64,...).",
                param=param,
                code="invalid_image_url",
            )
        self.total_bytes += self._check_data_url(url, param)

    def _check_data_url(self, url: str, param: str) -> int:
        match = _DATA_URL.match(url)
        if match is None or not match.group("b64"):
            raise InvalidRequestError(
                f"'{param}' is not a base64 data URL (expected data:image/<format>;base64,<data>).",
                param=param,
                code="invalid_image_url",
            )
        mime = (match.group("mime") or "").lower()
        if not mime.startswith("image/"):
            raise InvalidRequestError(
                f"'{param}' has media type {mime or '(none)'!r}; only images (image/*) are accepted.",
                param=param,
                code="invalid_image_format",
            )
        payload = url[match.end() :]
        limit = self.limits.max_image_bytes
        if len(payload) * 3 // 4 > limit + 2:  # reject by size before decoding anything
            raise PayloadTooLargeError(f"Image in '{param}' exceeds the {limit}-byte limit.", param=param)
        try:
            # SIMD decoder: ~20 us for a 150 KB image where binascii takes ~0.9 ms, on every request. validate=True
            # refuses any character outside the alphabet (whitespace included) and bad padding.
            raw = pybase64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(
                f"The image in '{param}' is not valid base64.", param=param, code="invalid_base64"
            ) from None
        if len(raw) > limit:
            raise PayloadTooLargeError(f"Image in '{param}' exceeds the {limit}-byte limit.", param=param)
        self._check_image(raw, param)
        return len(raw)

    def _check_image(self, raw: bytes, param: str) -> None:
        try:
            image = Image.open(io.BytesIO(raw))
        except (UnidentifiedImageError, OSError, ValueError):
            raise InvalidRequestError(
                f"The data in '{param}' is not a readable image.", param=param, code="invalid_image"
            ) from None
        if image.format not in ALLOWED_IMAGE_FORMATS:
            raise InvalidRequestError(
                f"Image format {image.format} in '{param}' is not supported; use PNG, JPEG, WEBP, GIF or BMP.",
                param=param,
                code="invalid_image_format",
            )
        width, height = image.size
        if width * height > self.limits.max_image_pixels:
            raise PayloadTooLargeError(
                f"Image in '{param}' is {width}x{height} = {width * height} pixels; the limit is "
                f"{self.limits.max_image_pixels}.",
                param=param,
                code="image_too_large",
            )
        try:
            _check_complete(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise InvalidRequestError(
                f"The image in '{param}' is truncated or corrupt.", param=param, code="invalid_image"
            ) from None


def _check_complete(image: Image.Image) -> None:
    """Read the whole file, so that truncated and damaged images fail here, at the least decoding cost.

    The engine decodes the image anyway; the gateway only has to know the file is whole. PNG: every chunk's CRC and
    the end marker are checked without inflating the pixels (20-30x cheaper than decoding). JPEG: decoded with DCT
    scaling at 1/8 size, which reads every byte but builds 1/64 of the pixels. Other formats: fully decoded."""
    if image.format == "PNG":
        image.verify()
        return
    if image.format == "JPEG":
        width, height = image.size
        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
    image.load()
