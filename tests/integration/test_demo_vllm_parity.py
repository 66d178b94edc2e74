"""vLLM serves the shipped demo model and its greedy answers equal transformers' on the same held-out inputs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image

from vlmgate.finetune.demo.data import data_url, record
from vlmgate.finetune.demo.evaluate import DEFAULT_MODEL, generate_answers, heldout_set, load

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def examples():
    # Two held-out examples of each kind, images the model never trained on.
    examples, images = heldout_set(2, style="train", phrasing="train", seed=11)
    return examples, images


def test_vllm_matches_transformers(demo_engine_url: str, served_model_dir: Path, examples) -> None:
    if Path(served_model_dir) != DEFAULT_MODEL:
        pytest.fail(f"the session engine serves {served_model_dir}, not the shipped demo model {DEFAULT_MODEL}")
    items, images = examples
    model, processor = load(DEFAULT_MODEL)
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
    # learned (held-out 1.00 and 0.94; see finetune/demo/MODEL_CARD.md for every kind), are answered right.
    for kind in ("colour", "shape"):
        pairs = [(s, ex.answer) for s, ex in zip(served, items, strict=True) if ex.kind == kind]
        assert pairs, f"no {kind} question in the sample"
        assert all(s == answer for s, answer in pairs), pairs
