"""Request validation without an engine: shapes, types, ranges and image checks map to precise errors."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from vlmgate.serve.config import LimitsConfig
from vlmgate.serve.errors import APIError
from vlmgate.serve.validation import validate_chat_request

LIMITS = LimitsConfig(max_image_bytes=50_000, max_image_pixels=200 * 200, max_images_per_request=2, max_tokens=100)


def png(size=(64, 64), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def body(*parts, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in parts] + [{"type": "text", "text": "hi"}]
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def error_of(request) -> APIError:
    with pytest.raises(APIError) as caught:
        validate_chat_request(request, LIMITS)
    return caught.value


def test_valid_request_reports_images_and_stream_options() -> None:
    chat = validate_chat_request(body(png(), png(fmt="JPEG"), stream=True, stream_options={"include_usage": True}),
                                 LIMITS)  # fmt: skip
    assert (chat.image_count, chat.stream, chat.include_usage) == (2, True, True)
    assert chat.image_bytes > 0


@pytest.mark.parametrize(
    ("request_body", "status", "param"),
    [
        ([], 400, None),
        ({"messages": []}, 400, "model"),
        ({"model": "m", "messages": []}, 400, "messages"),
        ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": True}, 400, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 101}, 400, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}, 400, "stream_options"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user"}]}, 400, "messages[0].content"),
        (body(png(), png(), png()), 400, "messages[0].content[2].image_url.url"),
        (body(png(size=(300, 300))), 413, "messages[0].content[0].image_url.url"),
        (body("data:image/png;base64," + "A" * 80_000), 413, "messages[0].content[0].image_url.url"),
        (body("data:image/png," + "abc"), 400, "messages[0].content[0].image_url.url"),
        (body("https://example.com/cat.png"), 400, "messages[0].content[0].image_url.url"),
    ],
)
def test_invalid_requests(request_body, status: int, param: str | None) -> None:
    err = error_of(request_body)
    assert err.status == status
    assert err.param == param
    assert err.message


def test_images_only_in_user_messages() -> None:
    request = {"model": "m", "messages": [{"role": "assistant", "content": [{"type": "image_url",
                                                                           "image_url": {"url": png()}}]}]}  # fmt: skip
    assert "user messages" in error_of(request).message


def test_remote_images_allowed_when_configured() -> None:
    limits = LIMITS.model_copy(update={"allow_remote_images": True})
    assert validate_chat_request(body("https://example.com/cat.png"), limits).image_count == 1


def test_null_optional_fields_mean_default() -> None:
    chat = validate_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": None},
                                 LIMITS)  # fmt: skip
    assert chat.image_count == 0


def _photo_bytes(fmt: str) -> bytes:
    """A 120x120 image with detail (so that its compressed data spans many bytes) in `fmt`."""
    x = [(i * 7 + j * 13) % 256 for j in range(120) for i in range(120)]
    image = Image.frombytes("L", (120, 120), bytes(x)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _data_url(raw: bytes, fmt: str) -> str:
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_whole_images_pass_and_truncated_ones_are_refused(fmt: str) -> None:
    # PNG is checked by chunk CRCs and JPEG by a scaled decode instead of a full decode: both must still read
    # the whole file, so a file cut anywhere after its header is refused.
    raw = _photo_bytes(fmt)
    assert validate_chat_request(body(_data_url(raw, fmt)), LIMITS).image_count == 1
    for cut in (len(raw) // 3, len(raw) * 2 // 3):
        err = error_of(body(_data_url(raw[:cut], fmt)))
        assert (err.status, err.code) == (400, "invalid_image"), (fmt, cut)


def test_damaged_png_data_is_refused() -> None:
    raw = bytearray(_photo_bytes("PNG"))
    idat = raw.index(b"IDAT")
    raw[idat + 40] ^= 0xFF  # one flipped byte inside the compressed pixels: the chunk's CRC no longer matches
    err = error_of(body(_data_url(bytes(raw), "PNG")))
    assert (err.status, err.code) == (400, "invalid_image")


@pytest.mark.parametrize(
    "damage",
    [
        lambda b64: b64[:-1],  # length not a multiple of 4
        lambda b64: b64[:40] + "\n" + b64[40:],  # a line break (MIME-style wrapping)
        lambda b64: b64[:40] + " " + b64[40:],
        lambda b64: b64[:40] + "é" + b64[41:],  # not ASCII
        lambda b64: b64[:40] + "====" + b64[40:],  # padding in the middle
        lambda b64: b64 + "=",  # excess padding
    ],
    ids=["length", "newline", "space", "non-ascii", "inner-padding", "excess-padding"],
)
def test_malformed_base64_is_refused_as_such(damage) -> None:
    prefix, b64 = png().split(",", 1)
    err = error_of(body(f"{prefix},{damage(b64)}"))
    assert (err.status, err.code) == (400, "invalid_base64")
