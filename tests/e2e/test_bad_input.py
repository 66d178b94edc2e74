"""Every kind of bad request gets an OpenAI-style 4xx before (or instead of) a crash, and the gateway keeps
serving: each case is followed by a good request that must succeed."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.conftest import RunningGateway, png_data_url

pytestmark = pytest.mark.engine


def _image_body(url: str, n: int = 1, **extra: object) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(n)]
    content = [*parts, {"type": "text", "text": "Hi"}]
    return {"model": "vlmgate-demo", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def _data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def _png_bytes(size: tuple[int, int], noise: bool = False) -> bytes:
    image = Image.effect_noise(size, 100).convert("RGB") if noise else Image.new("RGB", size, "green")
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=0 if noise else 6)
    return buf.getvalue()


def _ico_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "ICO")
    return buf.getvalue()


TEXT = [{"role": "user", "content": "Hello"}]
CASES = {
    # name: (raw body or JSON body, expected status, expected error code)
    "malformed_json": (b'{"model": "vlmgate-demo", "messages": [', 400, "invalid_json"),
    "body_not_an_object": (b"[1, 2]", 400, None),
    "missing_messages": ({"model": "vlmgate-demo"}, 400, "missing"),
    "missing_model": ({"messages": TEXT}, 400, "missing"),
    "wrong_type_max_tokens": ({"model": "vlmgate-demo", "messages": TEXT, "max_tokens": "ten"}, 400, "invalid_type"),
    "wrong_type_messages": ({"model": "vlmgate-demo", "messages": "Hello"}, 400, "invalid_type"),
    "unknown_field": ({"model": "vlmgate-demo", "messages": TEXT, "temprature": 0.5}, 400, "unknown_parameter"),
    "unknown_model": ({"model": "no-such-model", "messages": TEXT}, 404, "model_not_found"),
    "bad_role": ({"model": "vlmgate-demo", "messages": [{"role": "robot", "content": "x"}]}, 400, None),
    "invalid_base64": (_image_body("data:image/png;base64,@@not-base64@@"), 400, "invalid_base64"),
    "data_url_not_an_image": (_image_body(_data_url(b"hello", "text/plain")), 400, "invalid_image_format"),
    "image_bytes_not_an_image": (_image_body(_data_url(b"GIF89a this is not really an image")), 400, "invalid_image"),
    "unsupported_image_format": (_image_body(_data_url(_ico_bytes(), "image/x-icon")), 400, "invalid_image_format"),
    "truncated_image": (_image_body(_data_url(_png_bytes((112, 112), noise=True)[:3000])), 400, "invalid_image"),
    "image_over_byte_limit": (_image_body(_data_url(_png_bytes((1000, 1000), noise=True))), 413, "payload_too_large"),
    "image_over_pixel_limit": (_image_body(_data_url(_png_bytes((1100, 1000)))), 413, "image_too_large"),
    "too_many_images": (_image_body(png_data_url(), n=3), 400, "too_many_images"),
    "max_tokens_zero": ({"model": "vlmgate-demo", "messages": TEXT, "max_tokens": 0}, 400, "invalid_value"),
    "max_tokens_too_large": ({"model": "vlmgate-demo", "messages": TEXT, "max_tokens": 10**6}, 400, "invalid_value"),
    "remote_image_url": (_image_body("http://169.254.169.254/latest/meta-data.png"), 400, "remote_image_not_allowed"),
    "file_image_url": (_image_body("file:///etc/passwd"), 400, "invalid_image_url"),
    "unsupported_part_type": (
        {"model": "vlmgate-demo", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        400,
        "unsupported_content_type",
    ),
    # Passes the gateway's checks; the engine refuses it (prompt longer than the context): still a 400, not a 500.
    "prompt_longer_than_context": (
        {"model": "vlmgate-demo", "messages": [{"role": "user", "content": "colour " * 3000}], "max_tokens": 4},
        400,
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_openai_error_and_gateway_keeps_serving(gateway: RunningGateway, case: str) -> None:
    body, status, code = CASES[case]
    url = f"{gateway.url}/v1/chat/completions"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60)
    else:
        r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    good = httpx.post(url, json={"model": "vlmgate-demo", "messages": TEXT, "max_tokens": 2}, timeout=60)
    assert good.status_code == 200, good.text
    assert good.json()["usage"]["completion_tokens"] >= 1
