"""vLLM serves the shipped demo model and its greedy answers equal transformers' on the same held-out inputs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from tests.conftest import RunningGateway
from vlmgate.finetune.demo.data import chat_messages, data_url, record
from vlmgate.finetune.demo.evaluate import DEFAULT_MODEL, followup_set, generate_answers, heldout_set, load
from vlmgate.finetune.demo.questions import Example

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def examples():
    # Two held-out examples of each kind, images the model never trained on.
    examples, images = heldout_set(2, style="train", phrasing="train", seed=11)
    return examples, images


def assert_colour_and_shape_right(served: list[str], asked: list[Example], share: float = 1.0) -> None:
    """The served answers to the colour and shape questions of the sample (there are some of each) are right, all of
    them or at least this share of each kind."""
    for kind in ("colour", "shape"):
        pairs = [(s, ex.answer) for s, ex in zip(served, asked, strict=True) if ex.kind == kind]
        assert pairs, f"no {kind} question in the sample"
        assert sum(s == answer for s, answer in pairs) >= share * len(pairs), pairs


@pytest.fixture(scope="module")
def demo_model(served_model_dir: Path):
    if Path(served_model_dir) != DEFAULT_MODEL:
        pytest.fail(f"the session engine serves {served_model_dir}, not the shipped demo model {DEFAULT_MODEL}")
    return load(DEFAULT_MODEL)


def test_vllm_matches_transformers(demo_engine_url: str, demo_model, examples) -> None:
    items, images = examples
    model, processor = demo_model
    expected = generate_answers(model, processor, items, images)

    served = []
    with httpx.Client(base_url=f"{demo_engine_url}/v1", timeout=120) as client:
        for ex, image in zip(items, images, strict=True):
            messages = record(ex, data_url(Image.fromarray(image)))["messages"][:1]  # the user turn only
            body = {"model": "vlmgate-demo", "messages": messages, "temperature": 0, "max_tokens": 8}
            reply = client.post("/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            served.append(reply.json()["choices"][0]["message"]["content"].strip())

    assert served == expected
    # And the served model really looks at the image: colour and shape, the kinds the shipped checkpoint has
    # learned (held-out 0.99 and 0.95; see finetune/demo/MODEL_CARD.md for every kind), are answered right.
    assert_colour_and_shape_right(served, items)


def test_follow_ups_through_the_gateway_match_transformers(gateway: RunningGateway, demo_model) -> None:
    """A chat as people have it, through the gateway with the official client: a question about an image, its
    answer, then a follow-up question about the same image (text only). vLLM's greedy follow-up answers equal
    transformers' on the same conversations, and the model answers them right, so the image in an earlier turn
    reaches the engine and is read."""
    conversations, images = followup_set(4, seed=11)  # four follow-ups of each kind but descriptions
    model, processor = demo_model
    expected = generate_answers(model, processor, conversations, images)

    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)
    served = []
    for turns, image in zip(conversations, images, strict=True):
        image_part = {"type": "image_url", "image_url": {"url": data_url(Image.fromarray(image))}}
        messages = chat_messages(turns, image_part)[:-1]  # up to the follow-up question
        assert isinstance(messages[-1]["content"], str)  # the follow-up carries no image of its own
        reply = client.chat.completions.create(model="vlmgate-demo", messages=messages, temperature=0, max_tokens=8)
        served.append(reply.choices[0].message.content.strip())

    assert served == expected
    # Follow-ups were trained (a quarter of the rows; held-out follow-up colour 0.97-0.99, shape 0.88-0.91 from run
    # to run): at least 3 of the 4 colour and of the 4 shape follow-ups are right. Chance is 1/6 and 1/3; a model
    # trained on one question per image got 3/4 and 0/4 on this sample.
    assert_colour_and_shape_right(served, [turns[-1] for turns in conversations], share=0.75)
