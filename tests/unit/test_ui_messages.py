"""Chat history -> OpenAI messages: notes and failed turns never reach the model; images capped oldest-first."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from vlmgate.ui import messages as msgs
from vlmgate.ui.client import AnswerStats, GatewayError


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"\x89PNG fake " + bytes([i]))
        paths.append(str(path))
    return paths


def image_urls(message: dict) -> list[str]:
    return [p["image_url"]["url"] for p in message["content"] if p["type"] == "image_url"]


def test_image_turn_becomes_data_urls_then_text(images: list[str]) -> None:
    history = [msgs.user_display_message("What is this?", images[:2])]
    [message] = msgs.to_openai_messages(history)
    assert message["role"] == "user"
    urls = image_urls(message)
    assert len(urls) == 2
    assert urls[0].startswith("data:image/png;base64,")
    assert base64.b64decode(urls[0].split(",", 1)[1]) == Path(images[0]).read_bytes()
    assert message["content"][-1] == {"type": "text", "text": "What is this?"}


def test_gradio_normalized_shape_is_understood(images: list[str]) -> None:
    # What gr.Chatbot hands a handler after a round trip through the browser.
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": images[0]}, "alt_text": None}],
         "metadata": None},
        {"role": "user", "content": [{"type": "text", "text": "colour?"}], "metadata": None},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}], "metadata": None},
        {"role": "user", "content": [{"type": "text", "text": "and the shape?"}], "metadata": None},
    ]  # fmt: skip
    out = msgs.to_openai_messages(history)
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert len(image_urls(out[0])) == 1
    assert out[0]["content"][-1]["text"] == "colour?"
    assert out[1] == {"role": "assistant", "content": "red"}
    assert out[2] == {"role": "user", "content": "and the shape?"}


def test_stats_notes_are_never_sent_back() -> None:
    stats = AnswerStats(model="m", ttft_s=0.1, e2e_s=0.5, prompt_tokens=9, completion_tokens=5)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, msgs.stats_note(stats),
               {"role": "user", "content": "again"}]  # fmt: skip
    assert msgs.to_openai_messages(history) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]


def test_a_rejected_turn_is_dropped_so_a_bad_image_does_not_poison_the_chat(images: list[str]) -> None:
    bad = GatewayError("The image could not be decoded.", status=400, code="invalid_image")
    history = [
        msgs.user_display_message("what is it?", [images[0]]),
        msgs.error_note(bad),
        msgs.user_display_message("describe it", [images[1]]),
    ]
    [message] = msgs.to_openai_messages(history)
    assert image_urls(message) == [msgs.image_data_url(images[1])]
    assert message["content"][-1]["text"] == "describe it"


def test_oldest_images_are_replaced_by_a_marker_beyond_the_cap(images: list[str]) -> None:
    history = [
        msgs.user_display_message("first", images[:2]),
        {"role": "assistant", "content": "ok"},
        msgs.user_display_message("second", [images[2]]),
    ]
    out = msgs.to_openai_messages(history, max_images=2)
    assert out[0]["content"][0] == {"type": "text", "text": msgs.OMITTED_IMAGE_TEXT}
    assert image_urls(out[0]) == [msgs.image_data_url(images[1])]
    assert image_urls(out[2]) == [msgs.image_data_url(images[2])]
    assert sum(len(image_urls(m)) for m in out if m["role"] == "user") == 2


def test_mime_type_follows_the_file_name(tmp_path: Path) -> None:
    jpg = tmp_path / "photo.JPG"
    jpg.write_bytes(b"not really")
    assert msgs.image_data_url(jpg).startswith("data:image/jpeg;base64,")
    odd = tmp_path / "scan.bin"
    odd.write_bytes(b"x")
    assert msgs.image_data_url(odd).startswith("data:image/png;base64,")


def test_stats_summary_and_details_show_what_the_user_asked_for() -> None:
    stats = AnswerStats(model="shapes", ttft_s=0.25, e2e_s=1.25, prompt_tokens=80, completion_tokens=11,
                        finish_reason="length")  # fmt: skip
    assert msgs.stats_summary(stats) == "TTFT 0.25 s · 10.0 tok/s · 11 tokens"
    details = msgs.stats_details(stats)
    for part in ("model `shapes`", "250 ms", "80 prompt", "11 completion", "finish reason: length"):
        assert part in details
    assert msgs.stats_summary(AnswerStats(model="m")) == "TTFT – · – tok/s · ? tokens"
