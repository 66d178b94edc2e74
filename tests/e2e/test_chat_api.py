"""The OpenAI-compatible chat API end to end: official `openai` client -> gateway -> real vLLM -> back."""

from __future__ import annotations

import base64

import pytest
from openai import OpenAI

from tests.conftest import DEMO_MODEL, REPO, RunningGateway, png_data_url

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def image_question(color: str = "red", text: str = "What colour is the shape?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(color)}},
                {"type": "text", "text": text},
            ],
        }
    ]


def test_models_lists_the_base_with_its_path(client: OpenAI, gateway: RunningGateway) -> None:
    models = {m.id: m for m in client.models.list().data}
    bases = [name for name, m in models.items() if getattr(m, "parent", None) is None]
    assert bases == ["vlmgate-demo"]  # other entries, if any, are adapters of it
    assert models["vlmgate-demo"].root == str(gateway.model_dir)


def test_image_chat_answers_with_usage_counting_the_image(client: OpenAI) -> None:
    with_image = client.chat.completions.create(
        model="vlmgate-demo", messages=image_question(), max_tokens=8, temperature=0
    )
    text_only = client.chat.completions.create(
        model="vlmgate-demo",
        messages=[{"role": "user", "content": "What colour is the shape?"}],
        max_tokens=8,
        temperature=0,
    )
    assert with_image.choices[0].message.content
    assert 1 <= with_image.usage.completion_tokens <= 8
    # The image's tokens reach the engine: the same question costs more prompt tokens with the image.
    assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens + 4


def test_streaming_relays_the_same_greedy_answer_token_by_token(client: OpenAI) -> None:
    # ignore_eos: the demo model answers in one word; 12 tokens make the token-by-token relay visible.
    kwargs = {"model": "vlmgate-demo", "messages": image_question(), "max_tokens": 12, "temperature": 0,
              "extra_body": {"ignore_eos": True}}  # fmt: skip
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == full.choices[0].message.content
    token_chunks = [c for c in chunks if c.choices and c.choices[0].delta.role is None]
    assert len(token_chunks) == full.usage.completion_tokens == 12  # one event per token, as generated
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


def test_streaming_without_include_usage_sends_no_usage_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="vlmgate-demo", messages=image_question("blue"), max_tokens=4, temperature=0, stream=True
        )
    )
    assert chunks
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_readme_example_gets_a_correct_answer(client: OpenAI, gateway: RunningGateway) -> None:
    """The README's example request (a red circle drawn on white) is answered correctly by the shipped model."""
    image = base64.b64encode((REPO / "docs" / "examples" / "red_circle.png").read_bytes()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                {"type": "text", "text": "What colour is the shape?"},
            ],
        }
    ]
    assert gateway.model_dir == DEMO_MODEL, "the session gateway must serve the shipped demo model"
    reply = client.chat.completions.create(model="vlmgate-demo", messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content.strip().lower() == "red"
